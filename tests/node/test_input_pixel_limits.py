"""An image-to-video input is bounded in pixels (input_probe.MAX_CONDITIONING_PIXELS) at every layer.

It declares no size (image-to-image and upscale do, and are bounded at quote time), so without a
bound a 420 KB PNG saying 12000×12000 was quoted for a 64×64 clip and decoded in full by the
worker: over 1 GB of memory per job, in a thread that cannot be cancelled (review s11, finding 4).
Now the requester refuses it (422) before any peer is asked, and a worker from its header before
the pool, which decodes a pixel of it only once it is within the bound.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
import trio
from fastapi.exceptions import RequestValidationError
from lpnode.models import registry
from lpnode.models.base import ImageToVideoRequest
from lpnode.models.errors import ParameterError
from lpnode.node.input_probe import (
    IMAGE,
    MAX_CONDITIONING_PIXELS,
    InputSize,
    InputTooManyPixels,
    InputUnreadable,
    check_input_pixels,
    input_shape,
    probe_input,
)
from lpnode.node.job_convert import check_params, model_request
from lpnode.node.job_proof import error_code
from lpnode.node.job_requester import JobRequest, build_spec
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc_job_bodies import ImageToImageBody, ImageToVideoBody, prepare
from lpnode.protocol.jobs import ErrorCode
from lpnode.protocol.jobspec import ImageToVideoParams, JobSpec, Pipeline
from PIL import Image, ImageFile

from tests.media_bombs import png_bomb

from .job_fixtures import BOUND_S, Peer, peers, png
from .test_rpc_jobs import AUTH, OPTIONS, rpc

LIMIT = "at most 16777216 pixels"
CLIP = ImageToVideoParams(64, 64, 4, 7, 127, 0.02, 2, 1.0, 3.0, 4)


@pytest.fixture(scope="module")
def review_bomb() -> bytes:
    """The review's input: 12000 × 12000 (144 Mpx, under PIL's bomb error, so PIL only warns) in 420 KB."""
    data = png_bomb(12_000, 12_000)
    assert len(data) < 500_000
    return data


@pytest.fixture(scope="module")
def just_over() -> bytes:
    return png_bomb(4097, 4096)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(self: ImageFile.ImageFile) -> Any:
        raise AssertionError(f"decoded the pixels of a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def i2v_spec(image: bytes) -> JobSpec:
    return build_spec(JobRequest(Pipeline.IMAGE_TO_VIDEO, CLIP, "", 1), {IMAGE: image}, 10**7)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_reviewed_input_is_refused_by_the_worker_before_a_pixel_is_decoded(review_bomb: bytes) -> None:
    spec = i2v_spec(review_bomb)
    check_params("tiny-svd", spec, None)  # the quote sees no input: it still passes, and reserves
    started = time.perf_counter()
    with pytest.raises(ParameterError, match=rf"12000x12000 \(144000000 pixels\).*{LIMIT}") as refused:
        model_request(spec, {IMAGE: review_bomb})  # on arrival, before the pool
    assert time.perf_counter() - started < 1.0  # a header and the chunks' CRCs, nothing inflated
    assert error_code(refused.value) == ErrorCode.INVALID_INPUT  # what the requester is told
    # and the model layer on its own (pool.run's check_inputs, in its thread)
    request = registry.spec("tiny-svd").build_request("image-to-video", image=review_bomb, seed=1, width=64, height=64)
    with pytest.raises(ParameterError, match=LIMIT):
        registry.resolve("tiny-svd").check_inputs(request)


def test_the_bound_is_inclusive(just_over: bytes) -> None:
    at_bound = png_bomb(4096, 4096)
    assert isinstance(model_request(i2v_spec(at_bound), {IMAGE: at_bound}), ImageToVideoRequest)
    with pytest.raises(ParameterError, match=rf"4097x4096 \(16781312 pixels\).*{LIMIT}"):
        model_request(i2v_spec(just_over), {IMAGE: just_over})
    assert MAX_CONDITIONING_PIXELS == 4096 * 4096


def test_an_unreadable_image_to_video_input_is_refused_before_the_pool() -> None:
    broken = png(16, 16)[:-20]
    with pytest.raises(ParameterError, match="a readable image"):
        model_request(i2v_spec(broken), {IMAGE: broken})


@pytest.mark.usefixtures("no_pixel_decoding")
def test_the_requester_refuses_it_before_any_peer_is_asked(just_over: bytes) -> None:
    with pytest.raises(InputTooManyPixels, match=r"4097x4096 .*image-to-video takes at most 16777216 pixels"):
        input_shape(i2v_spec(just_over), {IMAGE: just_over})
    assert issubclass(InputTooManyPixels, InputUnreadable)  # run_job answers it ParametersRefused (422)
    small = png(64, 48)
    assert input_shape(i2v_spec(small), {IMAGE: small}) is None  # i2v declares no shape
    # the bound is image-to-video's: other pipelines bound their input by their models' limits
    check_input_pixels(Pipeline.IMAGE_TO_IMAGE, IMAGE, InputSize(5000, 5000, 1))
    check_input_pixels(Pipeline.UPSCALE, IMAGE, InputSize(5000, 5000, 1))


def test_the_probe_reads_only_what_workers_decode() -> None:
    for fmt in ("GIF", "BMP", "TIFF"):
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, format=fmt)
        with pytest.raises(InputUnreadable):
            probe_input(IMAGE, out.getvalue())
    for fmt in ("PNG", "JPEG", "WEBP"):
        out = io.BytesIO()
        Image.new("RGB", (8, 6)).save(out, format=fmt)
        assert probe_input(IMAGE, out.getvalue()) == InputSize(8, 6, 1)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_prepare_answers_422_naming_the_field_and_the_limit(just_over: bytes) -> None:
    body = ImageToVideoBody.model_validate({"width": 64, "height": 64})
    with pytest.raises(RequestValidationError) as refused:
        prepare(body, {IMAGE: just_over}, 10**7)
    (error,) = refused.value.errors()
    assert error["loc"] == ("body", IMAGE) and "at most 16777216 pixels" in error["msg"]
    # image-to-image's input is bounded by what the workers on offer take (QuoteRequest.input_shape), not by
    # this cap (its sides must be whole 8-pixel blocks, so a size just over the cap of that kind)
    over_in_blocks = png_bomb(4104, 4096)
    assert prepare(ImageToImageBody.model_validate({"prompt": "x"}), {IMAGE: over_in_blocks}, 10**7).jobs


async def test_the_rpc_answers_422_before_any_peer_is_contacted(just_over: bytes) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[assignment]
        async with rpc(lone.node) as (client, _):

            async def upload(data: bytes, **headers: str) -> httpx.Response:
                fields = OPTIONS | {"width": "64", "height": "64"}
                return await client.post(
                    "/image-to-video", files={IMAGE: (IMAGE, data)}, data=fields, headers=AUTH | headers
                )

            with trio.fail_after(BOUND_S):
                too_many = await upload(just_over)
                too_many_async = await upload(just_over, Prefer="respond-async")
                fine = await upload(png(64, 48))
    for answer in (too_many, too_many_async):
        assert answer.status_code == 422, answer.text
        assert "4097x4096" in answer.json()["message"] and "at most 16777216 pixels" in answer.json()["message"]
        assert answer.json()["detail"][0]["loc"] == ["body", IMAGE]
    # the same request with a small image went on to the network, which has no peers: so the 422 came first
    assert fine.status_code == 404 and "no peers known" in fine.json()["message"]
