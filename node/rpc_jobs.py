"""Jobs through the RPC API, in Livepeer AI's request and response shapes.

``POST /text-to-image`` takes Livepeer's fields (prompt, model_id, height,
width, guidance_scale, negative_prompt, seed, num_inference_steps,
num_images_per_prompt) plus ours (max_price, deadline, prefer, avoid,
allow_local), runs one job per image on the network and answers
``{images: [{url, seed, nsfw}], jobs: [...]}``. Each image's ``url`` serves
the verified bytes by their sha256 from a bounded in-memory store; ``jobs``
carries who made each image, the price, every attempt and the signed receipt.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated

import trio
from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam
from lpnode.node.daemon import Node
from lpnode.node.job_requester import JobOutcome, JobRequest, run_job
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.jobspec import MAX_PROMPT_CHARS, MAX_SEED, Pipeline, TextToImageParams
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.status import HTTP_404_NOT_FOUND

DEFAULT_STORE_BYTES = 256 * 1024 * 1024  # outputs kept for download; the oldest go first
MAX_IMAGES_PER_PROMPT = 8


class OutputStore:
    """Verified outputs by hex sha256, bounded in bytes (least recently stored goes first)."""

    def __init__(self, max_bytes: int = DEFAULT_STORE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0

    def put(self, sha256: str, media_type: str, data: bytes) -> None:
        if sha256 in self._items or len(data) > self.max_bytes:
            return
        self._items[sha256] = (media_type, data)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= len(old)

    def get(self, sha256: str) -> tuple[str, bytes] | None:
        return self._items.get(sha256)


class TextToImageBody(BaseModel):
    """Livepeer AI's text-to-image fields and defaults, plus lpnode's job options."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    model_id: str = Field("", max_length=128, description="empty: the best text-to-image model on offer")
    height: int = Field(576, ge=8, le=8192)
    width: int = Field(1024, ge=8, le=8192)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="empty: a random seed; image i uses seed + i")
    num_inference_steps: int = Field(50, ge=1, le=1000)
    num_images_per_prompt: int = Field(1, ge=1, le=MAX_IMAGES_PER_PROMPT)
    max_price: int = Field(1_000_000, ge=0, description="micro-credits per image, at most")
    deadline: float = Field(120.0, gt=0, le=3600, description="seconds for the whole request")
    prefer: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    avoid: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    allow_local: bool = False


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
    model_id: str
    price: int  # micro-credits
    receipt: str  # base64 of the signed receipt bytes (`lpnode receipt verify`)
    attempts: list[AttemptInfo]


class ImageResponse(BaseModel):
    images: list[Media]
    jobs: list[JobInfo]


def jobs_router(node: Node, require_token: Callable[..., Awaitable[None]], store: OutputStore) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["jobs"])

    @router.post("/text-to-image", response_model=ImageResponse)
    async def text_to_image(body: TextToImageBody) -> ImageResponse:
        """Generate images on the network; each comes with its worker's verified, signed receipt."""
        first_seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED - MAX_IMAGES_PER_PROMPT)
        try:
            params = TextToImageParams(
                body.prompt,
                body.width,
                body.height,
                body.num_inference_steps,
                body.guidance_scale,
                body.negative_prompt,
            )
            jobs = [
                JobRequest(Pipeline.TEXT_TO_IMAGE, params, body.model_id, min(MAX_SEED, first_seed + i))
                for i in range(body.num_images_per_prompt)
            ]
        except ValueError as exc:  # bounds the spec adds to pydantic's
            raise HTTPException(422, str(exc)) from None
        outcomes: list[JobOutcome | None] = [None] * len(jobs)

        async def one(index: int) -> None:
            outcomes[index] = await run_job(
                node,
                jobs[index],
                max_price=body.max_price,
                deadline_s=body.deadline,
                prefer=body.prefer,
                avoid=body.avoid,
                allow_local=body.allow_local,
            )

        # images run side by side, on different peers where the ranking says so; the first failure
        # cancels the rest (the response is all images or an error)
        try:
            async with trio.open_nursery() as nursery:
                for index in range(len(jobs)):
                    nursery.start_soon(one, index)
        except BaseExceptionGroup as group:
            # answer with the job's own error (404 no candidates, 503 failed), not a 500 for the group
            raise _first_lpnode_error(group) or group from None
        return _response(jobs, [o for o in outcomes if o is not None], store)

    @router.get("/v1/outputs/{sha256}", response_class=Response)
    async def output(sha256: Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$")]) -> Response:
        """A verified output by its hex sha256 (as signed in its receipt)."""
        found = store.get(sha256)
        if found is None:
            raise HTTPException(HTTP_404_NOT_FOUND, f"no output {sha256} here (never made, or evicted)")
        media_type, data = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "immutable"})

    return router


def _first_lpnode_error(group: BaseExceptionGroup[BaseException]) -> LpnodeError | None:
    for exc in group.exceptions:
        if isinstance(exc, LpnodeError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (inner := _first_lpnode_error(exc)) is not None:
            return inner
    return None


def _response(jobs: list[JobRequest], outcomes: list[JobOutcome], store: OutputStore) -> ImageResponse:
    images: list[Media] = []
    infos: list[JobInfo] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        for hashes, data in zip(outcome.receipt.outputs, outcome.outputs, strict=True):
            store.put(hashes.sha256, hashes.media_type, data)
            images.append(Media(url=f"/v1/outputs/{hashes.sha256}", seed=job.seed, nsfw=False))
        attempts = [
            AttemptInfo(peer_id=a.peer_id, outcome=a.outcome, detail=a.detail, price=a.price) for a in outcome.attempts
        ]
        infos.append(
            JobInfo(
                job_id=outcome.job_id,
                worker_peer_id=outcome.worker_peer_id,
                model_id=outcome.model_id,
                price=outcome.price,
                receipt=base64.b64encode(outcome.receipt_bytes).decode(),
                attempts=attempts,
            )
        )
    return ImageResponse(images=images, jobs=infos)


__all__ = ["ImageResponse", "OutputStore", "TextToImageBody", "jobs_router"]
