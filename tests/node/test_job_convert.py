"""A video upscale's work at quote time: declared in the spec, bounded and priced there, verified on arrival."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from lpnode.models.base import PipelineKind, UpscaleRequest
from lpnode.models.errors import ParameterError
from lpnode.models.outputs import encode_mp4
from lpnode.node.input_probe import InputSize, InputUnreadable, probe_input
from lpnode.node.job_convert import check_params, model_request
from lpnode.node.job_quote import Decline, Offer, WorkerConfig, decide_quote
from lpnode.node.peer_choice import job_mpx_steps, job_price, work_is_known
from lpnode.protocol.jobs import QuoteRequest, RefusalReason
from lpnode.protocol.jobspec import BlobDescriptor, JobSpec, OutputExpectation, Pipeline, UpscaleParams

from .test_job_quote import ROW

UPSCALER = replace(ROW, name="tiny-realesrgan", model_id="lpnode/tiny-realesrgan", pipelines=(PipelineKind.UPSCALE,))


def clip(width: int, height: int, frames: int) -> bytes:
    rng = np.random.default_rng(1)
    return encode_mp4([rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)], 5.0)


def video_spec(data: bytes, params: UpscaleParams) -> JobSpec:
    blob = BlobDescriptor("video", "video/mp4", len(data), hashlib.sha256(data).hexdigest())
    return JobSpec(Pipeline.UPSCALE, "", 0, (blob,), OutputExpectation("video/mp4", 1 << 24), upscale=params)


def test_the_requester_probe_counts_as_the_worker_does() -> None:
    from lpnode.models.upscale import probe_upscale_input

    data = clip(16, 12, 5)
    found = probe_upscale_input(UpscaleRequest(video=data), 64)
    assert probe_input("video", data) == InputSize(16, 12, 5) == InputSize(found.width, found.height, found.num_frames)
    with pytest.raises(InputUnreadable):
        probe_input("video", b"\x00\x00\x00\x18ftypisom....")
    with pytest.raises(InputUnreadable):
        probe_input("image", b"\x89PNG broken")


def test_a_declared_video_upscale_is_priced_as_frames_times_output_pixels() -> None:
    spec = video_spec(b"v", UpscaleParams(4, 32, 32, 4))
    assert work_is_known(spec) and job_mpx_steps(spec) == 4 * 128 * 128 / 1e6
    assert job_price(spec, 1000) == 66  # ceil(0.065536 × 1000)
    request = QuoteRequest(spec, b"n" * 16, 10_000, 60_000)
    offer = decide_quote(request, [UPSCALER], WorkerConfig(price_per_mpx_step=1000), held=0)
    assert isinstance(offer, Offer) and offer.price == 66
    cheap = decide_quote(replace(request, max_price=65), [UPSCALER], WorkerConfig(price_per_mpx_step=1000), held=0)
    assert isinstance(cheap, Decline) and cheap.reason is RefusalReason.PRICE


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (UpscaleParams(4), "declares input_width"),  # a video's work must be declared
        (UpscaleParams(4, 8, 8, 33), "frames"),  # tiny-realesrgan: at most 32 frames
        (UpscaleParams(4, 128, 128, 5), r"frames\*width\*height"),  # 5 × 512² > 2**20 output pixels
        (UpscaleParams(4, 160, 16, 2), "width"),  # 640 > max_side 512
        (UpscaleParams(3, 8, 8, 2), "scale"),
    ],
)
def test_quote_time_bounds_of_a_video_upscale(params: UpscaleParams, match: str) -> None:
    spec = video_spec(b"v", params)
    with pytest.raises(ParameterError, match=match):
        check_params("tiny-realesrgan", spec)
    decision = decide_quote(QuoteRequest(spec, b"n" * 16, 10**9, 60_000), [UPSCALER], WorkerConfig(), held=0)
    assert isinstance(decision, Decline) and decision.reason is RefusalReason.UNSUPPORTED_PARAMS
    check_params("tiny-realesrgan", video_spec(b"v", UpscaleParams(4, 128, 128, 4)))  # exactly 2**20: fits


def test_the_input_must_be_what_was_declared_and_priced() -> None:
    data = clip(16, 12, 3)
    request = model_request(video_spec(data, UpscaleParams(2, 16, 12, 3)), {"video": data})
    assert isinstance(request, UpscaleRequest) and request.video == data and request.scale == 2
    for lie in (UpscaleParams(2, 16, 12, 1), UpscaleParams(2, 8, 6, 3)):
        with pytest.raises(ParameterError, match="the declared"):
            model_request(video_spec(data, lie), {"video": data})
    image_spec = JobSpec(
        Pipeline.UPSCALE,
        "",
        0,
        (BlobDescriptor("image", "image/png", 1, "0" * 64),),
        OutputExpectation("image/png", 1 << 20),
        upscale=UpscaleParams(2),
    )
    # undeclared, any image would cost one megapixel-step: refused (the requester declares what it sends)
    with pytest.raises(ParameterError, match="declares input_width"):
        check_params("tiny-realesrgan", image_spec)
    with pytest.raises(ParameterError, match="input_frames"):
        check_params("tiny-realesrgan", replace(image_spec, upscale=UpscaleParams(2, 8, 8, 2)))
