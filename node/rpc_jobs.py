"""Jobs through the RPC API: Livepeer AI's five pipeline endpoints, job records, events, cancel, outputs.

Pipeline endpoints take Livepeer's fields and defaults (``rpc_job_bodies``),
check them before any peer is contacted (422), read uploads bounded (413), and
hand the request to the :class:`JobManager`. Synchronous by default: the
answer is Livepeer's ``{images: [{url, seed, nsfw}]}`` plus ``jobs`` (who made
each output, the price, every attempt, the signed receipt) and ``request_id``
(the record in ``/v1/jobs``). A sync request is tied to its HTTP request: if
the handler is cancelled (the client went away, the node stops) the job is
cancelled too. With ``Prefer: respond-async`` the answer is 202 with
``Location: /v1/jobs/<id>`` and ``Preference-Applied: respond-async`` (RFC 7240
§3), and the job runs on whatever the client does. Outputs are served by the
sha256 their receipt signs: content-addressed, so cacheable for good.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from lpnode.node.job_book import STATES
from lpnode.node.job_manager import JobManager, JobNotFound
from lpnode.node.job_results import output_url
from lpnode.node.rpc_job_bodies import (
    BODIES,
    INPUT_FILE,
    INPUT_FILES,
    PreparedJob,
    TextToImageBody,
    prepare,
    read_form,
    read_json,
    validate,
)
from lpnode.node.sse import event_stream
from lpnode.node.transfer import DEFAULT_MAX_TOTAL_BYTES
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.jobspec import Pipeline
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.status import HTTP_202_ACCEPTED, HTTP_404_NOT_FOUND

DEFAULT_STORE_BYTES = 256 * 1024 * 1024  # outputs kept for download in memory; the oldest go first
MAX_JSON_BYTES = 1024 * 1024  # a JSON pipeline body (text-to-image): prompts are short
MAX_LIST = 500
_JOB_ID = r"^[0-9a-z_]{1,64}$"
# module level: FastAPI resolves the (string) annotations of the handlers in module globals
JobId = Annotated[str, PathParam(pattern=_JOB_ID)]
# An output's URL names its bytes (their sha256), so they never change: a year, the usual "forever" (RFC 9111
# §5.2.2.1), private because the API is per-user behind its token; immutable spares revalidation (RFC 8246).
OUTPUT_CACHE_CONTROL = "private, max-age=31536000, immutable"


# The pipeline operations' one header of their own, for clients generated from the OpenAPI description (QA s11)
PREFER_HEADER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "example": "respond-async"},
    "description": "`respond-async`: answer 202 at once with the job record (`Location: /v1/jobs/<id>`), "
    "rather than the result once the job ends (RFC 7240)",
}


class ReceiptNotFound(JobNotFound):
    """The job exists but has no receipt with that index (HTTP 404, kind ``receipt_not_found``)."""


class OutputStore:
    """Verified outputs by hex sha256 in memory, bounded in bytes (least recently stored goes first).

    The node keeps outputs on disk (``output_files``); this one serves tests and stores-less setups.
    """

    def __init__(self, max_bytes: int = DEFAULT_STORE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0

    async def put(self, sha256: str, media_type: str, data: bytes) -> None:
        if sha256 in self._items or len(data) > self.max_bytes:
            return
        self._items[sha256] = (media_type, data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= len(old)

    async def put_verified(self, outputs: Sequence[tuple[str, str, bytes]]) -> None:
        for sha256, media_type, data in outputs:
            await self.put(sha256, media_type, data)

    async def get(self, sha256: str) -> tuple[str, bytes] | None:
        return self._items.get(sha256)


class Media(BaseModel):
    url: str
    seed: int
    nsfw: bool  # no safety checker runs yet: always false


class AttemptInfo(BaseModel):
    peer_id: str
    outcome: str
    detail: str
    price: int | None


class JobInfo(BaseModel):
    job_id: str
    worker_peer_id: str
    model_id: str  # the model that made it (the router's choice when the request named none)
    price: int  # micro-credits
    receipt: str  # base64 of the signed receipt bytes (`lpnode receipt verify`)
    attempts: list[AttemptInfo]


class ImageResponse(BaseModel):
    images: list[Media]
    jobs: list[JobInfo]
    request_id: str  # the record in /v1/jobs


def wants_async(request: Request) -> bool:
    """RFC 7240 ``Prefer: respond-async`` (among other preferences, any case)."""
    prefer = ",".join(request.headers.getlist("prefer")).lower()
    return any(p.strip().split(";")[0].strip() == "respond-async" for p in prefer.split(","))


async def respond(manager: JobManager, job_id: str, request: Request) -> Any:
    """202 + the record for an async request; the result once the job ends otherwise."""
    if wants_async(request):
        record = await manager.get(job_id)
        headers = {"Location": f"/v1/jobs/{job_id}", "Preference-Applied": "respond-async"}
        return JSONResponse(record, status_code=HTTP_202_ACCEPTED, headers=headers)
    final = await _result_unless_client_leaves(manager, job_id, request)
    if final is None:
        return Response(status_code=499)  # nobody left to read it: the job was cancelled with its request
    # Already the documented shape (ImageResponse, still the endpoints' response_model for OpenAPI),
    # built by the manager from checked values: sent as it is, not validated and re-encoded again.
    return JSONResponse(final["result"])


async def _result_unless_client_leaves(manager: JobManager, job_id: str, request: Request) -> dict[str, Any] | None:
    """The job's final record, or None once the HTTP client has gone away (the job is then cancelled).

    The server does not cancel a handler whose client leaves, it only says so to the next ``receive``:
    a killed ``curl`` left its job running to the end, on the network and paid for (QA s11). The
    body is read by now, so the next message can only be the disconnect. The job's own error is
    raised as it is (the app maps it to its status), not inside this nursery's exception group.
    """
    final: dict[str, Any] | None = None
    failure: LpnodeError | None = None
    async with trio.open_nursery() as nursery:

        async def watch_client() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()  # wait_result's own cleanup cancels the job

        async def wait_for_the_job() -> None:
            nonlocal final, failure
            try:
                final = await manager.wait_result(job_id)
            except LpnodeError as exc:
                failure = exc
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_client)
        nursery.start_soon(wait_for_the_job)
    if failure is not None:
        raise failure
    return final


def jobs_router(
    manager: JobManager,
    require_token: Callable[..., Awaitable[None]],
    *,
    max_input_bytes: int,
    max_output_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["jobs"])
    statuses = {
        202: {"description": "accepted (`Prefer: respond-async`): the job record"},
        404: {"description": "no peer offers the model; the message lists what the network offers"},
        413: {"description": "input over the node's limit"},
        429: {"description": "too many requests queued on this node"},
        503: {"description": "every candidate peer refused or failed"},
    }

    async def submit(prepared: PreparedJob, request: Request) -> Any:
        # A 202 names a record that must outlive a crash, so it is saved first; a sync answer is the
        # result itself, and the job need not wait for its record's first write.
        in_background = wants_async(request)
        return await respond(manager, await manager.submit(prepared, saved_first=in_background), request)

    @router.post(
        "/text-to-image",
        response_model=ImageResponse,
        responses=statuses,  # type: ignore[arg-type]
        openapi_extra={"requestBody": _json_body(TextToImageBody), "parameters": [PREFER_HEADER]},
    )
    async def text_to_image(request: Request) -> Any:
        """Generate images on the network; each comes with its worker's verified, signed receipt."""
        body = validate(TextToImageBody, await read_json(request, MAX_JSON_BYTES))
        return await submit(prepare(body, {}, max_output_bytes), request)

    def file_endpoint(pipeline: Pipeline) -> Callable[[Request], Awaitable[Any]]:
        body_type = BODIES[pipeline]
        file_field = INPUT_FILE[pipeline]
        assert file_field is not None

        async def endpoint(request: Request) -> Any:
            fields, data = await read_form(request, file_field, max_input_bytes)
            body = validate(body_type, fields)
            return await submit(prepare(body, {file_field: data}, max_output_bytes), request)

        kinds = " or ".join(_KIND_TEXT.get(kind, kind) for kind in INPUT_FILES[pipeline])
        endpoint.__doc__ = (
            f"{pipeline} on the network: multipart/form-data, file `{file_field}` ({kinds}) + the fields."
        )
        return endpoint

    for pipeline in (Pipeline.IMAGE_TO_IMAGE, Pipeline.IMAGE_TO_VIDEO, Pipeline.UPSCALE, Pipeline.FRAME_INTERPOLATION):
        router.add_api_route(
            f"/{pipeline}",
            file_endpoint(pipeline),
            methods=["POST"],
            response_model=ImageResponse,
            responses=statuses,  # type: ignore[arg-type]
            openapi_extra={
                "requestBody": _form_body(BODIES[pipeline], INPUT_FILE[pipeline] or "", INPUT_FILES[pipeline]),
                "parameters": [PREFER_HEADER],
            },
            name=str(pipeline).replace("-", "_"),
        )

    @router.get("/v1/jobs")
    async def list_jobs(
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
        state: Annotated[str | None, Query(pattern="^(" + "|".join(STATES) + ")$")] = None,
        parent_id: Annotated[
            str | None, Query(pattern=_JOB_ID, description="a workflow's id: only its steps' records")
        ] = None,
        before: Annotated[
            str | None, Query(pattern=_JOB_ID, description="the last id of a page: the records older than it")
        ] = None,
    ) -> dict[str, Any]:
        """Job records, newest first; with `parent_id`, the steps of that workflow (whatever its outcome).

        A page of `limit`; the next one is `before=<its last id>`.
        """
        return {"jobs": await manager.list(limit, state, parent_id, before)}

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: JobId) -> dict[str, Any]:
        """One job record: state, progress, result or error, attempts."""
        return await manager.get(job_id)

    @router.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: JobId) -> dict[str, Any]:
        """Cancel a queued or running job (the worker is told); 409 if it had already ended."""
        return await manager.cancel(job_id)

    @router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse)
    async def job_events(job_id: JobId) -> StreamingResponse:
        """Server-sent events: `progress`, `state` on each change, `attempt` as each try on a worker starts
        (`stage` start: `image`, `attempt`, `peer_id`, `model_id`) and ends (`stage` end, also `ok`, `outcome`,
        `detail`, `price`: the record's attempt entry), then `done` with the final record."""
        await manager.get(job_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[bytes]:
            async with manager.listen(job_id) as listener:
                async for chunk in event_stream(listener):
                    yield chunk

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    async def receipt_response(job_id: str, n: int) -> Response:
        await manager.get(job_id)  # job_not_found for an unknown job ...
        try:
            data = await manager.receipt(job_id, n)
        except JobNotFound as exc:  # ... and for a known one, the receipt is what is missing
            raise ReceiptNotFound(str(exc)) from None
        return Response(data, media_type="application/octet-stream")

    @router.get("/v1/jobs/{job_id}/receipts/{n}", response_class=Response)
    async def job_receipt_n(job_id: JobId, n: Annotated[int, PathParam(ge=0, le=10_000)]) -> Response:
        """The n-th network job's signed receipt (what `lpnode receipt verify FILE` reads)."""
        return await receipt_response(job_id, n)

    @router.get("/v1/jobs/{job_id}/receipt", response_class=Response)
    async def job_receipt(job_id: JobId) -> Response:
        """The first network job's signed receipt."""
        return await receipt_response(job_id, 0)

    @router.get("/v1/outputs/{sha256}", response_class=Response)
    async def output(sha256: Annotated[str, PathParam(pattern=r"^[0-9a-fA-F]{64}$")]) -> Response:
        """A verified output by its hex sha256 (as signed in its receipt; either case)."""
        sha256 = sha256.lower()  # a hash copied from a tool that prints it in capitals names the same bytes
        found = await manager.outputs.get(sha256)
        if found is None:
            raise HTTPException(HTTP_404_NOT_FOUND, f"no output {sha256} here (never made, or evicted)")
        media_type, data = found
        return Response(data, media_type=media_type, headers={"Cache-Control": OUTPUT_CACHE_CONTROL})

    return router


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _inline(model)}}}


_KIND_TEXT = {"image": "an image (PNG or JPEG)", "video": "an MP4 (H.264) video"}


def _form_body(model: type[BaseModel], file_field: str, kinds: Sequence[str] = ()) -> dict[str, Any]:
    """The multipart schema: the fields plus the file, described by the kinds it may be (upscale: either)."""
    schema = _inline(model)
    takes = " or ".join(_KIND_TEXT.get(kind, kind) for kind in kinds or (file_field,))
    others = [kind for kind in kinds if kind != file_field]
    also = f"; field `{'`/`'.join(others)}` is accepted too" if others else ""
    described = f"the input: {takes} (its bytes decide which){also}; unreadable files are refused with 422"
    file_schema = {"type": "string", "format": "binary", "description": described}
    schema["properties"] = {file_field: file_schema, **schema.get("properties", {})}
    schema["required"] = [file_field, *schema.get("required", [])]
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("$defs", None)
    return schema


__all__ = [
    "OUTPUT_CACHE_CONTROL",
    "ImageResponse",
    "OutputStore",
    "ReceiptNotFound",
    "jobs_router",
    "output_url",
    "respond",
    "wants_async",
]
