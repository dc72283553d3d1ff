"""A small client for a running node's RPC API, found through its data directory.

    async with LpnodeClient.from_data_dir(data_dir) as client:
        peers = await client.peers()
        record = await client.text_to_image("a lighthouse at dusk", width=64, height=64, wait=False)
        async for event in client.job_events(record["id"]): ...

Answers are the API's JSON as plain dicts (the shapes are in ``rpc_models``
and at ``/docs``). The job shapes, in short:

- a finished pipeline call: ``{"images": [{"url", "seed", "nsfw"}], "jobs":
  [{"job_id", "worker_peer_id", "model_id", "price", "receipt" (base64),
  "attempts": [{"peer_id", "outcome", "detail", "price"}]}], "request_id"}``;
  ``request_id`` is the job record's id (``job_…``), what :meth:`job`,
  :meth:`job_events`, :meth:`cancel_job` and :meth:`receipt` take;
  ``jobs[].job_id`` is the network job id its receipt signs;
- a job record: ``{"id", "kind", "state", "created_at", "updated_at",
  "request", "progress": {"fraction", "step", "total", "peer_id"}, "result"
  (the finished call above, or null), "error": {"status", "error",
  "message"} or null, "attempts", "parent_id"}``.

Every failure is an :class:`LpnodeError`: the node not running
(:class:`NodeNotRunning`), or the API refusing a request (:class:`RpcError`).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from lpnode.node.client_sse import Event, EventParser
from lpnode.node.rpc_info import NodeNotRunning, read_info
from lpnode.node.rpc_token import read_token
from lpnode.protocol.errors import LpnodeError

DEFAULT_TIMEOUT_S = 10.0  # every call that is not a job
DEFAULT_JOB_DEADLINE_S = 120.0  # the server's default `deadline`
IDLE_CONNECTION_S = 2.0  # kept for reuse this long: under the node's 5 s keep-alive timeout
JOB_MARGIN_S = 30.0  # a synchronous job call waits its deadline plus this (upload, download, bookkeeping)
OUTPUT_TIMEOUT_S = 120.0  # downloading one output (a video may be large)
EVENTS_IDLE_S = 60.0  # the node sends a keep-alive every ~15 s; this long without a byte means it is gone
PIPELINES = ("text-to-image", "image-to-image", "image-to-video", "upscale", "frame-interpolation")


class RpcError(LpnodeError):
    """The node answered, but refused or failed the request."""

    def __init__(self, status_code: int, error: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code} {error})")
        self.status_code = status_code
        self.error = error


class EventStreamBroken(LpnodeError):
    """A job's event stream ended mid-way (the node stopped, or the connection broke): ask the node again."""


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
            # The node's server closes a connection idle for 5 s (``HttpLimits.keep_alive_s``); a POST sent on one
            # it is closing that moment fails with "server disconnected" and is not retried (not idempotent).
            # Dropping idle connections sooner on this side closes that race.
            limits=httpx.Limits(keepalive_expiry=IDLE_CONNECTION_S),
        )

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> LpnodeClient:
        """The client for the node running with ``data_dir``; raise :class:`NodeNotRunning` if none is.

        ``data_dir`` may be a str or a path, with ``~`` as the CLI's ``--data-dir`` takes it.
        """
        path = Path(data_dir).expanduser()
        info = read_info(path)
        return cls(info.url, read_token(path), data_dir=path, timeout_s=timeout_s)

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

    # ------------------------------------------------------------ pipelines

    async def text_to_image(self, prompt: str, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """``POST /text-to-image`` (JSON). ``fields``: the endpoint's other fields and the job options.

        ``wait=True`` answers the finished response ``{"images", "jobs", "request_id"}``;
        ``wait=False`` (``Prefer: respond-async``) answers the job record at once.
        """
        return await self.submit("text-to-image", {"prompt": prompt, **fields}, wait=wait)

    async def image_to_image(self, image: bytes, prompt: str, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """``POST /image-to-image`` (multipart, file ``image``); answers as :meth:`text_to_image`."""
        return await self.submit("image-to-image", {"prompt": prompt, **fields}, files={"image": image}, wait=wait)

    async def image_to_video(self, image: bytes, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """``POST /image-to-video`` (multipart, file ``image``); the media url serves the MP4."""
        return await self.submit("image-to-video", fields, files={"image": image}, wait=wait)

    async def upscale(self, image: bytes, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """``POST /upscale`` (multipart, file ``image``)."""
        return await self.submit("upscale", fields, files={"image": image}, wait=wait)

    async def frame_interpolation(self, video: bytes, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
        """``POST /frame-interpolation`` (multipart, file ``video``: an MP4)."""
        return await self.submit("frame-interpolation", fields, files={"video": video}, wait=wait)

    async def submit(
        self, pipeline: str, fields: Mapping[str, Any], *, files: Mapping[str, bytes] | None = None, wait: bool = True
    ) -> dict[str, Any]:
        """``POST /<pipeline>``: JSON without ``files``, multipart with them. Fields set to None are left out.

        A synchronous call may run until the job's deadline: its timeout is
        ``deadline`` (the server's default when not given) plus a margin.
        """
        if pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
        given = {k: v for k, v in fields.items() if v is not None}
        headers = {} if wait else {"Prefer": "respond-async"}
        timeout = self._job_timeout(given) if wait else self._timeout_s
        if files is None:
            return await self._call("POST", f"/{pipeline}", json=given, headers=headers, timeout_s=timeout)
        form = {k: _form_value(v) for k, v in given.items()}
        return await self._call(
            "POST", f"/{pipeline}", data=form, files=dict(files), headers=headers, timeout_s=timeout
        )

    async def run_workflow(self, spec: Mapping[str, Any], *, wait: bool = True) -> dict[str, Any]:
        """``POST /v1/workflows`` with ``{"steps": [...], ...}``; answers as :meth:`text_to_image`."""
        headers = {} if wait else {"Prefer": "respond-async"}
        timeout = self._job_timeout(spec) if wait else self._timeout_s
        return await self._call("POST", "/v1/workflows", json=dict(spec), headers=headers, timeout_s=timeout)

    def _job_timeout(self, fields: Mapping[str, Any]) -> float:
        deadline = fields.get("deadline")
        return (float(deadline) if deadline is not None else DEFAULT_JOB_DEADLINE_S) + JOB_MARGIN_S

    # ------------------------------------------------------------ job records

    async def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: one job record (shape in the module docstring)."""
        return await self._get(f"/v1/jobs/{_segment(job_id)}")

    # The job-record calls take a record id (``job_…``: a record's ``id``, an answer's ``request_id``), not the
    # network job id an answer's ``jobs[].job_id`` gives (the receipt's hash): a 404 for one of those says so.

    async def jobs(
        self, *, state: str | None = None, limit: int = 50, parent_id: str | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        """``GET /v1/jobs``: records, newest first, optionally only those in ``state`` / the steps of workflow
        ``parent_id``; ``before``: the page after the one whose last record that is."""
        params: dict[str, str | float] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if state is not None:
            params["state"] = state
        if parent_id is not None:
            params["parent_id"] = parent_id
        answer = await self._get("/v1/jobs", params=params)
        jobs = answer.get("jobs")
        if not isinstance(jobs, list):
            raise LpnodeError(f"GET /v1/jobs at {self.url} answered no job list")
        return jobs

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/jobs/{id}``: the cancelled record; :class:`RpcError` 409 if it had finished."""
        return await self._call("DELETE", f"/v1/jobs/{_segment(job_id)}")

    async def job_checks(self, job_id: str, *, wait_s: float = 0.0) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/checks``: what became of the spot checks of the record's outputs, one entry per
        network job (``state``; once ``settled``, ``worker``: credited, blamed or undecided). See ``rpc_checks``.

        ``wait_s`` (at most 60): wait that long for checks still ``pending`` to end.
        """
        params: dict[str, str | float] | None = {"wait_s": wait_s} if wait_s else None
        return await self._get(f"/v1/jobs/{_segment(job_id)}/checks", params=params, extra_timeout_s=wait_s)

    async def receipt(self, job_id: str, n: int = 0) -> bytes:
        """The signed receipt bytes of the record's ``n``-th network job (what ``lpnode receipt verify`` reads).

        ``job_id`` is the record's id (a finished call's ``request_id``), as for every job-record call.
        """
        return await self._bytes(f"/v1/jobs/{_segment(job_id)}/receipts/{int(n)}", self._timeout_s)

    async def served(
        self,
        *,
        limit: int = 50,
        before: int | None = None,
        outcome: str | None = None,
        seq_above: int | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """``GET /v1/served``: the jobs this node's worker served (newest first, a page) and the totals;
        with ``seq_above``, once a row newer than it exists (waiting up to ``wait_s``)."""
        params: dict[str, str | float] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if outcome is not None:
            params["outcome"] = outcome
        if seq_above is not None:
            params |= {"seq_above": seq_above, "wait_s": wait_s}
        return await self._get("/v1/served", params=params, extra_timeout_s=wait_s)

    async def served_receipt(self, seq: int) -> bytes:
        """The signed receipt this node's worker gave for served job ``seq``."""
        return await self._bytes(f"/v1/served/{int(seq)}/receipt", self._timeout_s)

    async def output(self, url_or_sha256: str) -> bytes:
        """An output's bytes, by the url a response gave (``/v1/outputs/<sha256>``) or by its hex sha256."""
        path = url_or_sha256 if url_or_sha256.startswith("/") else f"/v1/outputs/{_segment(url_or_sha256)}"
        return await self._bytes(path, OUTPUT_TIMEOUT_S)

    async def job_events(self, job_id: str) -> AsyncGenerator[Event, None]:
        """``GET /v1/jobs/{id}/events``: ``progress`` and ``state`` events, then one ``done`` (the final record).

        The iterator ends after ``done``, or when the node ends the stream. A node
        silent past its keep-alive interval for :data:`EVENTS_IDLE_S` is an error.
        Close it early with ``contextlib.aclosing``.
        """
        path = f"/v1/jobs/{_segment(job_id)}/events"
        timeout = httpx.Timeout(self._timeout_s, read=EVENTS_IDLE_S)
        try:
            async with self._http.stream("GET", path, timeout=timeout) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._refusal(response)
                parser = EventParser()
                async for chunk in response.aiter_bytes():
                    for event in parser.feed(chunk):
                        yield event
                        if event.name == "done":
                            return
        except httpx.ConnectError as exc:
            raise NodeNotRunning(self.data_dir, f"nothing answers at {self.url}") from exc
        except httpx.HTTPError as exc:  # named, not repr'd: httpx's reprs mean nothing to a user
            raise EventStreamBroken(f"the event stream {path} from {self.url} broke ({type(exc).__name__})") from exc

    # ------------------------------------------------------------ plumbing

    async def _get(
        self, path: str, *, params: dict[str, str | float] | None = None, extra_timeout_s: float = 0.0
    ) -> dict[str, Any]:
        # a long-poll may legitimately take wait_s longer than any other call
        return await self._call("GET", path, params=params, timeout_s=self._timeout_s + extra_timeout_s)

    async def _send(self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, timeout=self._timeout_s if timeout_s is None else timeout_s, **kwargs
            )
        except httpx.ConnectError as exc:
            raise NodeNotRunning(self.data_dir, f"nothing answers at {self.url}") from exc
        except httpx.TimeoutException as exc:
            raise LpnodeError(f"RPC call {method} {path} to {self.url} timed out") from exc
        except httpx.HTTPError as exc:
            raise LpnodeError(f"RPC call {method} {path} to {self.url} failed: {exc}") from exc
        if not response.is_success:
            raise self._refusal(response)
        return response

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise LpnodeError(f"RPC call {method} {path} to {self.url} did not answer a JSON object")
        return body

    async def _bytes(self, path: str, timeout_s: float) -> bytes:
        return (await self._send("GET", path, timeout_s=timeout_s)).content

    def _refusal(self, response: httpx.Response) -> RpcError:
        try:
            body = response.json()
            error, message = str(body["error"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            error, message = "http_error", response.text[:200] or response.reason_phrase
        if error == "job_not_found" and _NETWORK_JOB_PATH.match(response.request.url.path):
            message += (
                "; that is a network job id (an answer's jobs[].job_id, the receipt's hash): job records are named"
                " by the answer's request_id or a record's id (job_...)"
            )
        if response.status_code == 401:
            message = f"the node at {self.url} refused the token in {self.data_dir}/rpc.token ({message})"
        return RpcError(response.status_code, error, message)


_NETWORK_JOB_PATH = re.compile(r"^/v1/jobs/[0-9a-f]{64}(/|$)")


def _form_value(value: Any) -> str | list[str]:
    """A JSON-ish value as multipart form text: lists become repeated fields, booleans "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return str(value)


def _segment(value: str) -> str:
    """An id as one path segment: anything that could leave the intended route is refused."""
    if not value or "/" in value or value in (".", "..") or "?" in value or "#" in value:
        raise LpnodeError(f"{value!r} is not a job id or hash")
    return value


__all__ = ["PIPELINES", "Event", "EventStreamBroken", "LpnodeClient", "NodeNotRunning", "RpcError"]
