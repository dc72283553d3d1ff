"""Image-to-image and frame interpolation priced by their input: ``QuoteRequest.input_shape``.

Their spec does not say how big the job is (the output is the input's size; the frames are the
input's); the requester reads the input's header and declares it, the worker prices, times and
bounds the job by it at quote time and refuses an input that turns out otherwise.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import numpy as np
import pytest
from lpnode.models.base import PipelineKind
from lpnode.models.errors import ParameterError
from lpnode.models.outputs import encode_mp4
from lpnode.node.input_probe import InputUnreadable, input_shape
from lpnode.node.job_convert import check_params, model_request
from lpnode.node.job_quote import Decline, Offer, WorkerConfig, decide_quote
from lpnode.node.peer_choice import job_mpx_steps, job_price, limits_refusal, work_is_known
from lpnode.protocol.advert import ModelLimits
from lpnode.protocol.jobs import InputShape, QuoteRequest, RefusalReason
from lpnode.protocol.jobspec import (
    BlobDescriptor,
    FrameInterpolationParams,
    ImageToImageParams,
    JobSpec,
    OutputExpectation,
    Pipeline,
)
from PIL import Image

from .test_job_quote import ROW

SPEED = 2.0  # measured megapixel-steps per second
PAINTER = replace(ROW, speed_mpx_steps_per_s=SPEED)
INTERPOLATOR = replace(
    ROW, name="tiny-rife", model_id="lpnode/tiny-rife", pipelines=(PipelineKind.FRAME_INTERPOLATION,)
)
PRICE = 1000  # micro-credits per megapixel-step


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def clip(width: int, height: int, frames: int) -> bytes:
    rng = np.random.default_rng(2)
    return encode_mp4([rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)], 5.0)


def blob(name: str, data: bytes, media_type: str) -> BlobDescriptor:
    return BlobDescriptor(name, media_type, len(data), hashlib.sha256(data).hexdigest())


def img2img_spec(data: bytes, steps: int = 10, strength: float = 0.75) -> JobSpec:
    params = ImageToImageParams("a harbour", strength, steps, 1.0, "")
    return JobSpec(
        Pipeline.IMAGE_TO_IMAGE,
        "",
        0,
        (blob("image", data, "image/png"),),
        OutputExpectation("image/png", 1 << 24),
        image_to_image=params,
    )


def interpolation_spec(data: bytes, multiplier: int = 2) -> JobSpec:
    return JobSpec(
        Pipeline.FRAME_INTERPOLATION,
        "",
        0,
        (blob("video", data, "video/mp4"),),
        OutputExpectation("video/mp4", 1 << 24),
        frame_interpolation=FrameInterpolationParams(multiplier),
    )


def quote(spec: JobSpec, shape: InputShape | None) -> Offer | Decline:
    request = QuoteRequest(spec, b"n" * 16, 10**9, 600_000, input_shape=shape)
    return decide_quote(request, [PAINTER, INTERPOLATOR], WorkerConfig(price_per_mpx_step=PRICE), held=0)


def test_the_requester_declares_the_size_it_reads_from_the_header() -> None:
    image, video = png(48, 32), clip(16, 12, 5)
    assert input_shape(img2img_spec(image), {"image": image}) == InputShape(48, 32, 1)
    assert input_shape(interpolation_spec(video), {"video": video}) == InputShape(16, 12, 5)
    # unreadable or missing: no worker takes the job undeclared, so the requester is told at once
    with pytest.raises(InputUnreadable, match="not a readable image"):
        input_shape(img2img_spec(image), {"image": b"\x89PNG broken"})
    with pytest.raises(InputUnreadable, match="takes an input named 'video'"):
        input_shape(interpolation_spec(video), {})


def test_image_to_image_is_priced_on_the_input_pixels_and_the_steps_it_runs() -> None:
    image = png(128, 64)
    spec = img2img_spec(image, steps=10, strength=0.75)  # diffusers runs int(10 × 0.75) = 7 steps
    shape = InputShape(128, 64, 1)
    assert not work_is_known(spec) and job_mpx_steps(spec) == 1.0  # undeclared: the old stand-in
    assert work_is_known(spec, shape) and job_mpx_steps(spec, shape) == 128 * 64 * 7 / 1e6
    offer = quote(spec, shape)
    assert isinstance(offer, Offer)
    assert offer.price == job_price(spec, PRICE, shape) == 58  # ceil(0.057344 × 1000)
    assert offer.eta_ms == int(128 * 64 * 7 / 1e6 / SPEED * 1000)
    # Undeclared, any input would cost one megapixel-step (a 1024² image 50× less than its work): refused
    undeclared = quote(spec, None)
    assert isinstance(undeclared, Decline) and undeclared.reason is RefusalReason.UNSUPPORTED_PARAMS
    assert "input_shape" in undeclared.message


def test_frame_interpolation_is_priced_on_the_frames_it_makes() -> None:
    video = clip(16, 12, 5)
    spec = interpolation_spec(video, multiplier=3)
    shape = InputShape(16, 12, 5)
    assert job_mpx_steps(spec, shape) == 16 * 12 * 13 / 1e6  # (5 - 1) × 3 + 1 frames out
    offer = quote(spec, shape)
    assert isinstance(offer, Offer) and offer.price == job_price(spec, PRICE, shape) == 3


@pytest.mark.parametrize(
    ("spec", "shape", "match"),
    [
        (img2img_spec(b"i"), InputShape(512, 512, 1), "width"),  # tiny-sdxl: 256-pixel sides
        (interpolation_spec(b"v", 4), InputShape(16, 16, 17), "frames"),  # 65 frames out > 64
        (interpolation_spec(b"v"), InputShape(16, 16, 1), "at least 2 frames"),
    ],
)
def test_a_declared_input_beyond_the_limits_is_refused_at_quote_time(
    spec: JobSpec, shape: InputShape, match: str
) -> None:
    with pytest.raises(ParameterError, match=match):
        check_params("tiny-sdxl" if spec.pipeline is Pipeline.IMAGE_TO_IMAGE else "tiny-rife", spec, shape)
    decision = quote(spec, shape)
    assert isinstance(decision, Decline) and decision.reason is RefusalReason.UNSUPPORTED_PARAMS


def test_the_requester_drops_offers_whose_limits_the_declared_input_exceeds() -> None:
    limits = ModelLimits(max_pixels=256 * 256, max_side=256, max_steps=50, max_frames=64, max_batch=4)
    assert limits_refusal(limits, img2img_spec(b"i"), InputShape(256, 256, 1)) == ""
    assert "input image 512×128 exceeds its 256-pixel side" in limits_refusal(
        limits, img2img_spec(b"i"), InputShape(512, 128, 1)
    )
    assert "make 65 frames, more than its 64" in limits_refusal(
        limits, interpolation_spec(b"v", 4), InputShape(16, 16, 17)
    )


def test_the_input_must_be_the_size_that_was_declared_and_priced() -> None:
    image, video = png(48, 32), clip(16, 12, 3)
    model_request(img2img_spec(image), {"image": image}, InputShape(48, 32, 1))
    model_request(interpolation_spec(video), {"video": video}, InputShape(16, 12, 3))
    with pytest.raises(ParameterError, match="the declared 24x16"):
        model_request(img2img_spec(image), {"image": image}, InputShape(24, 16, 1))
    with pytest.raises(ParameterError, match="the declared 16x12 × 2 frames"):
        model_request(interpolation_spec(video), {"video": video}, InputShape(16, 12, 2))
    model_request(img2img_spec(image), {"image": image})  # undeclared (an older requester): as before


def test_a_video_beyond_the_advertised_output_pixels_per_job_is_refused_before_asking() -> None:
    """tiny-realesrgan takes 512² frames and 32 frames, but at most 2**20 output pixels per job; that total was in no
    advert, so a 16-frame 512² upscale fitting every advertised limit was refused by every peer (QA3 Q7)."""
    from lpnode.models._status import advertised_limits
    from lpnode.protocol.jobspec import UpscaleParams

    limits = advertised_limits("tiny-realesrgan")
    assert limits is not None and limits.total_pixels == limits.max_total_pixels == 1 << 20
    video = blob("video", b"v", "video/mp4")
    spec = JobSpec(
        Pipeline.UPSCALE,
        "",
        0,
        (video,),
        OutputExpectation("video/mp4", 1 << 24),
        upscale=UpscaleParams(4, 128, 128, 16),
    )
    assert "(4194304 pixels) exceed its 1048576 output pixels per job" in limits_refusal(limits, spec)
    fits = JobSpec(
        Pipeline.UPSCALE,
        "",
        0,
        (video,),
        OutputExpectation("video/mp4", 1 << 24),
        upscale=UpscaleParams(4, 128, 128, 4),
    )
    assert limits_refusal(limits, fits) == ""
    older = ModelLimits(max_pixels=256 * 256, max_side=256, max_steps=1, max_frames=8, max_batch=1)  # no total sent
    assert older.total_pixels == 8 * 256 * 256
