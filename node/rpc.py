"""The node's local RPC API: FastAPI on our HTTP/1.1 server (``http_server``), beside libp2p in one nursery.

``create_app(node, token)`` builds the app; ``serve_rpc`` serves it and
publishes its bound address in ``<data-dir>/rpc.json`` for clients. OpenAPI
lives at ``/docs`` (Swagger UI served from the node, no CDN). Every endpoint but ``/health`` needs
``Authorization: Bearer <data-dir/rpc.token>``.

Errors have one body shape (:class:`ErrorBody`) and one mapping from the
``LpnodeError`` tree to status codes (:data:`ERROR_STATUS`). Handlers run in
the node's trio loop (``http_server``, or httpx's ASGITransport under
trio in tests), so they may await trio primitives such as the directory's
``wait_changed()``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol, runtime_checkable

import trio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from lpnode.node.daemon import Node
from lpnode.node.http_server import DEFAULT_LIMITS, HttpLimits, serve_http
from lpnode.node.job_manager import (
    JobAlreadyFinished,
    JobCancelled,
    JobManager,
    JobNotFound,
    ManagerBusy,
)
from lpnode.node.job_requester import (
    FiltersExcludeOffers,
    JobFailed,
    NoCandidates,
    ParametersRefused,
    PriceBelowOffers,
)
from lpnode.node.rpc_checks import CheckStatusSource, checks_router
from lpnode.node.rpc_info import RpcInfo, remove_info, write_info
from lpnode.node.rpc_job_bodies import InputTooLarge
from lpnode.node.rpc_jobs import jobs_router
from lpnode.node.rpc_models import (
    MAX_WAIT_S,
    ErrorBody,
    ErrorDetail,
    Health,
    LocalModel,
    ModelList,
    NodeInfo,
    Peer,
    PeerList,
    ValidationIssue,
    directory_version,
    peer_list,
)
from lpnode.node.rpc_reputation import reputation_router
from lpnode.node.rpc_served import served_router
from lpnode.node.rpc_workflows import workflows_router
from lpnode.protocol.errors import (
    AdvertRejected,
    ConfigError,
    IdentityError,
    LpnodeError,
    NetworkError,
    PeerUnreachable,
    ProtocolError,
)
from lpnode.protocol.names import SOFTWARE_VERSION
from starlette.exceptions import HTTPException
from starlette.status import HTTP_401_UNAUTHORIZED, HTTP_404_NOT_FOUND

log = logging.getLogger(__name__)

_PEER_ID_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{1,64}$"  # base58, as libp2p prints peer ids
LISTEN_BACKLOG = 1024  # connections the kernel holds for the API before it accepts them
DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024  # config.max_input_bytes

# The one place LpnodeError kinds become HTTP statuses; the most derived class listed wins.
if TYPE_CHECKING:
    from lpnode.models.pool import ModelPool
    from lpnode.node.served_jobs import ServedBook
    from lpnode.reputation.store import ReputationStore

ERROR_STATUS: dict[type[LpnodeError], int] = {
    LpnodeError: 500,
    ConfigError: 400,
    IdentityError: 500,
    AdvertRejected: 422,
    ProtocolError: 502,  # a peer answered with something we cannot accept
    NetworkError: 503,
    PeerUnreachable: 504,
    NoCandidates: 404,  # nobody offers that model/pipeline; the message lists what the network offers
    FiltersExcludeOffers: 422,  # peers offer it, but the request's avoid / min_vram / min_reputation leave none
    JobFailed: 503,  # every candidate refused or failed; the message lists the attempts
    ParametersRefused: 422,  # every candidate's model refused the parameters (its limits); the attempts say which
    PriceBelowOffers: 422,  # the model is on offer, but above max_price everywhere: refused before any peer is asked
    InputTooLarge: 413,
    ManagerBusy: 429,
    JobNotFound: 404,
    JobAlreadyFinished: 409,
    JobCancelled: 409,
}
_HTTP_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "input_too_large",
    431: "request_head_too_large",
    500: "internal",
}


@runtime_checkable
class _CountingNetwork(Protocol):
    def stats(self) -> dict[str, int]: ...


def create_app(
    node: Node,
    token: str,
    *,
    pool: ModelPool | None = None,
    jobs: JobManager | None = None,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    reputation: ReputationStore | None = None,
    served: ServedBook | None = None,
    checks: CheckStatusSource | None = None,
) -> FastAPI:
    """The RPC app for ``node``; requests must carry ``token`` (except ``/health``).

    ``pool`` is the node's model pool; None for a requester-only node. ``jobs``
    runs the pipeline endpoints, job records and workflows (none: those routes
    are absent). ``max_input_bytes`` bounds one uploaded input. ``reputation``
    and ``served`` (what this node's worker served) add their routes when given; so does
    ``checks`` (the spot checker: ``/v1/jobs/{id}/checks``, with ``jobs``).
    """
    # The API docs page with Swagger UI's files served by the node itself: FastAPI's own page loads them from a
    # CDN, and on a machine without internet (the node needs none) /docs, which the banner points at, was blank.
    app = FastAPIOffline(
        title="lpnode",
        version=SOFTWARE_VERSION,
        summary="Local control API of one lpnode node",
        description="Authenticate with `Authorization: Bearer <contents of <data-dir>/rpc.token>`.",
        responses={422: {"model": ErrorBody, "description": "invalid request"}},
    )
    _install_error_handlers(app)
    require_token = _TokenCheck(token)

    @app.get("/health", response_model=Health, tags=["node"])
    async def health() -> Health:
        """Liveness probe; needs no token."""
        return Health(software_version=SOFTWARE_VERSION)

    api = APIRouter(
        prefix="/v1",
        dependencies=[Depends(require_token)],
        responses={401: {"model": ErrorBody, "description": "missing or wrong bearer token"}},
    )

    @api.get("/node", response_model=NodeInfo, tags=["node"])
    async def node_info() -> NodeInfo:
        """This node: identity, addresses, offer, gossip counters and configuration."""
        counters = node.network.stats() if isinstance(node.network, _CountingNetwork) else {}
        return NodeInfo.of(node, {k: v for k, v in counters.items() if isinstance(v, int)})

    @api.get("/peers", response_model=PeerList, tags=["peers"])
    async def peers(
        changed_since: Annotated[
            str | None, Query(max_length=64, description="a `version` from an earlier answer: wait for a change")
        ] = None,
        wait_s: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="how long to wait for a change (with `changed_since`)")
        ] = 0.0,
    ) -> PeerList:
        """Every peer in the directory, sorted by peer id.

        Long-poll: with `changed_since=<version>&wait_s=N` the answer comes as
        soon as the list differs from that version, or after N seconds.
        """
        if changed_since is not None:
            with trio.move_on_after(wait_s):
                while directory_version(node.directory) == changed_since:
                    await node.directory.wait_changed()
        return peer_list(node.directory, node.now_ms())

    @api.get(
        "/peers/{peer_id}",
        response_model=Peer,
        tags=["peers"],
        responses={404: {"model": ErrorBody, "description": "peer not in the directory"}},
    )
    async def peer(peer_id: Annotated[str, PathParam(pattern=_PEER_ID_PATTERN)]) -> Peer:
        """One peer of the directory."""
        record = node.directory.get(peer_id)
        if record is None:
            raise HTTPException(
                HTTP_404_NOT_FOUND,
                f"peer {peer_id} is not in this node's directory (never seen, or its advert expired); "
                "GET /v1/peers lists the known peers",
            )
        return Peer.of(record, node.now_ms())

    @api.get("/models", response_model=ModelList, tags=["models"])
    async def models() -> ModelList:
        """The models this node serves: warm or cold, footprint, measured speed, queue."""
        if pool is None:
            return ModelList(models=[], requester_only=True)
        return ModelList(
            models=[
                LocalModel(
                    name=row.name,
                    model_id=row.model_id,
                    pipelines=[str(kind) for kind in row.pipelines],
                    weights_sha256=row.weights_sha256,
                    warm=row.warm,
                    pinned=row.pinned,
                    loading=row.loading,
                    compiled=list(row.compiled),
                    vram_estimate_bytes=row.vram_estimate_bytes,
                    vram_measured_bytes=row.vram_measured_bytes,
                    speed_mpx_steps_per_s=row.speed_mpx_steps_per_s,
                    overhead_s=row.overhead_s,
                    queued=row.queued,
                    running=row.running,
                    problem=row.problem,
                )
                for row in pool.status()
            ],
            requester_only=False,
        )

    app.include_router(api)
    if jobs is not None:
        app.include_router(jobs_router(jobs, require_token, max_input_bytes=max_input_bytes))
        app.include_router(workflows_router(jobs, require_token, max_input_bytes=max_input_bytes))
        if checks is not None:  # /v1/jobs/{id}/checks: what became of its outputs' spot checks
            app.include_router(checks_router(jobs, checks, require_token))
    if reputation is not None:  # /v1/reputation: scores, bans and evidence of the node's reputation store
        app.include_router(reputation_router(reputation, require_token))
    if served is not None:  # /v1/served: what this node's worker served and earned
        app.include_router(served_router(served, require_token))
    return app


# Module level: FastAPI resolves the (string) annotations below in module globals.
_BEARER = HTTPBearer(auto_error=False, description="the contents of `<data-dir>/rpc.token`")


class _TokenCheck:
    """The dependency guarding /v1: a bearer token equal to the node's."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    # async: FastAPI would run a sync dependency in a worker thread, a needless hop per request
    async def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        # compare_digest: the time taken must not reveal how much of a guess was right
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), self._expected):
            raise _Unauthorized(presented=credentials is not None)


class _Unauthorized(HTTPException):
    def __init__(self, *, presented: bool) -> None:
        # RFC 6750 §3: name the scheme, and say "invalid_token" when a token was sent
        challenge = 'Bearer realm="lpnode"' + (', error="invalid_token"' if presented else "")
        message = (
            "wrong bearer token: use the contents of <data-dir>/rpc.token"
            if presented
            else "missing bearer token: send 'Authorization: Bearer <contents of <data-dir>/rpc.token>'"
        )
        super().__init__(HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


def _install_error_handlers(app: FastAPI) -> None:
    async def lpnode_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LpnodeError)
        status = status_for(exc)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return _error(status, _snake(type(exc).__name__), str(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        name = _HTTP_ERROR_NAMES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
        if exc.status_code == 404 and message == _NO_ROUTE:  # the router's miss, not one of our own 404s
            message = f"no endpoint {request.method} {request.url.path} on this node; {_endpoints(request.app)}"
        return _error(exc.status_code, name, message, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        return _error(422, "invalid_request", "; ".join(_describe(e) for e in errors), issues=_issues(errors))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the root of one request: log what was lost, answer 500, keep serving
        log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", f"internal error ({type(exc).__name__}); see the node's log")

    app.add_exception_handler(LpnodeError, lpnode_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


_NO_ROUTE = "Not Found"  # starlette's detail when no route matches


def _endpoints(app: FastAPI) -> str:
    """The pipelines and the API's paths, for a request that matched none; /docs has the methods and fields."""
    # the OpenAPI schema, not app.routes: included routers are not flattened there (FastAPI builds it once)
    paths = sorted(app.openapi().get("paths", {}))
    pipelines = [path for path in paths if not path.startswith("/v1") and path != "/health"]
    api = [path for path in paths if path.startswith("/v1")]
    return f"pipelines: {', '.join(pipelines) or 'none'}; API: {', '.join(api)}; fields and methods: GET /docs"


def status_for(exc: LpnodeError) -> int:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def _error(
    status: int,
    name: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    issues: list[ValidationIssue] | None = None,
) -> JSONResponse:
    """The one error body; ``detail`` in the shape Livepeer's API gives that status (its SDK parses it)."""
    detail: ErrorDetail | list[ValidationIssue] = ErrorDetail(msg=message)
    if status == 422:  # Livepeer's HTTPValidationError: a list of problems, even for a refusal that is not pydantic's
        detail = issues or [ValidationIssue(loc=["body"], msg=message, type=name)]
    body = ErrorBody(error=name, message=message, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers) if headers else None)


def _issues(errors: Sequence[object]) -> list[ValidationIssue]:
    """pydantic's (and our own) RequestValidationError entries as the 422's ``detail`` list."""
    issues: list[ValidationIssue] = []
    for error in errors:
        if not isinstance(error, dict):
            issues.append(ValidationIssue(loc=["body"], msg=str(error), type="value_error"))
            continue
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        issues.append(
            ValidationIssue(
                loc=loc or ["body"], msg=str(error.get("msg", "invalid")), type=str(error.get("type", "value_error"))
            )
        )
    return issues


def _describe(error: object) -> str:
    """One pydantic error as 'query parameter wait_s: Input should be ...'."""
    if not isinstance(error, dict):
        return str(error)
    loc = [str(part) for part in error.get("loc", ())]
    where = {"query": "query parameter", "path": "path parameter", "body": "body field", "header": "header"}
    if len(loc) >= 2 and loc[0] in where:
        return f"{where[loc[0]]} {'.'.join(loc[1:])}: {error.get('msg', 'invalid')}"
    return f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# ---------------------------------------------------------------- serving


async def serve_rpc(
    app: FastAPI,
    host: str,
    port: int,
    data_dir: Path,
    *,
    limits: HttpLimits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled (port 0 picks a free one).

    ``task_status.started`` hands back the bound URLs; the first one is
    written to ``<data-dir>/rpc.json`` and the file is removed on exit.
    """
    listener = _listen(host, port)
    address = listener.socket.getsockname()
    url = (
        f"http://[{address[0]}]:{address[1]}"
        if listener.socket.family == socket.AF_INET6
        else f"http://{address[0]}:{address[1]}"
    )
    pid = os.getpid()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_http, app, [listener], limits=limits, render_error=_render_error))
        try:
            write_info(data_dir, RpcInfo(url=url, pid=pid))
            task_status.started([url])
            await trio.sleep_forever()
        finally:
            remove_info(data_dir, pid)


def _listen(host: str, port: int) -> trio.SocketListener:
    """The API's listening socket on ``host`` (a name, IPv4 or IPv6 address) and ``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted node takes its port back at once
        sock.bind((host.strip("[]"), port))
        # The kernel's default 128 overflowed under a burst of clients connecting at once: it dropped
        # the rest, which read as connections closed without an answer rather than the API's 429 (QA:
        # 58 of 400 concurrent POSTs). The kernel caps it at net.core.somaxconn.
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:  # a taken port, an address not on this machine: a plain NetworkError
        sock.close()
        raise NetworkError(f"cannot serve the RPC API on {host}:{port}: {exc.strerror or exc}") from exc
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _render_error(status: int, message: str) -> bytes:
    """The API's error body for what the HTTP server refuses before the app sees it (a malformed or huge head)."""
    name = _HTTP_ERROR_NAMES.get(status, f"http_{status}")
    return ErrorBody(error=name, message=message, detail=ErrorDetail(msg=message)).model_dump_json().encode()
