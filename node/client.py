"""A small client for a running node's RPC API, found through its data directory.

    async with LpnodeClient.from_data_dir(data_dir) as client:
        peers = await client.peers()

Answers are the API's JSON as plain dicts (the shapes are in ``rpc_models``
and at ``/docs``). Every failure is an :class:`LpnodeError`: the node not
running (:class:`NodeNotRunning`), or the API refusing a request
(:class:`RpcError`).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from lpnode.node.rpc_info import NodeNotRunning, read_info
from lpnode.node.rpc_token import read_token
from lpnode.protocol.errors import LpnodeError

DEFAULT_TIMEOUT_S = 10.0


class RpcError(LpnodeError):
    """The node answered, but refused or failed the request."""

    def __init__(self, status_code: int, error: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code} {error})")
        self.status_code = status_code
        self.error = error


class LpnodeClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        data_dir: Path,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,  # tests hand in an ASGITransport
    ) -> None:
        self.url = url
        self.data_dir = data_dir
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            trust_env=False,  # a proxy from the environment must never see the token
            transport=transport,
        )

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> LpnodeClient:
        """The client for the node running with ``data_dir``; raise :class:`NodeNotRunning` if none is."""
        info = read_info(data_dir)
        return cls(info.url, read_token(data_dir), data_dir=data_dir, timeout_s=timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def node(self) -> dict[str, Any]:
        """``GET /v1/node``: this node's identity, offer, counters and configuration."""
        return await self._get("/v1/node")

    async def peers(self, *, changed_since: str | None = None, wait_s: float = 0.0) -> dict[str, Any]:
        """``GET /v1/peers``: ``{"version": ..., "peers": [...]}``.

        With ``changed_since`` (a ``version`` from an earlier answer) the node
        answers at the next change, or after ``wait_s`` seconds.
        """
        params: dict[str, str | float] = {}
        if changed_since is not None:
            params = {"changed_since": changed_since, "wait_s": wait_s}
        return await self._get("/v1/peers", params=params, extra_timeout_s=wait_s)

    async def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the models this node serves, warm or cold, with speed and queue."""
        return await self._get("/v1/models")

    async def peer(self, peer_id: str) -> dict[str, Any]:
        """``GET /v1/peers/{peer_id}``; :class:`RpcError` with status 404 if unknown."""
        return await self._get(f"/v1/peers/{peer_id}")

    async def _get(
        self, path: str, *, params: dict[str, str | float] | None = None, extra_timeout_s: float = 0.0
    ) -> dict[str, Any]:
        try:
            # a long-poll may legitimately take wait_s longer than any other call
            response = await self._http.get(path, params=params, timeout=self._timeout_s + extra_timeout_s)
        except httpx.ConnectError as exc:
            raise NodeNotRunning(self.data_dir, f"nothing answers at {self.url}") from exc
        except httpx.HTTPError as exc:
            raise LpnodeError(f"RPC call {path} to {self.url} failed: {exc}") from exc
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise LpnodeError(f"RPC call {path} to {self.url} did not answer a JSON object")
            return body
        try:
            body = response.json()
            error, message = str(body["error"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            error, message = "http_error", response.text[:200] or response.reason_phrase
        if response.status_code == 401:
            message = f"the node at {self.url} refused the token in {self.data_dir}/rpc.token ({message})"
        raise RpcError(response.status_code, error, message)
