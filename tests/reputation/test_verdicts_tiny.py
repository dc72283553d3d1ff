"""Comparison verdicts on real tiny-preset outputs (CPU): honest variants agree, each cheat disagrees.

Outputs go through the real output stage (PNG / H.264 MP4) and are compared as
bytes, as a requester compares two workers' files.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest
from lpnode.models import registry
from lpnode.models.base import (
    ImageToImageRequest,
    ImageToVideoRequest,
    ModelAdapter,
    PipelineKind,
    Request,
    TextToImageRequest,
)
from lpnode.models.outputs import ImageOutput, RawOutput, encode_png, finish_output
from lpnode.protocol.jobspec import OUTPUT_MEDIA_TYPE, Pipeline
from lpnode.reputation.calibrate import CASES, Case, synthetic_frame
from lpnode.reputation.cheats import (
    Cheater,
    CheatMode,
    HonestVariant,
    cheat_output,
    cheat_request,
    honest_variant_adapter,
    other_model_adapter,
)
from lpnode.reputation.compare import Comparison, PerceptualThresholds, Thresholds, Verdict, compare_outputs
from PIL import Image

CASE = {case.pipeline: case for case in CASES}


def encoded(raw: RawOutput) -> bytes:
    out = finish_output(raw)
    return out.png if isinstance(out, ImageOutput) else out.mp4


def compare(pipeline: Pipeline, a: RawOutput, b: RawOutput, thresholds: Thresholds | None = None) -> Comparison:
    return compare_outputs(pipeline, encoded(a), encoded(b), OUTPUT_MEDIA_TYPE[pipeline], thresholds)


@pytest.fixture(scope="module")
def sdxl() -> Iterator[ModelAdapter]:
    adapter = registry.resolve("tiny-sdxl")
    adapter.load("cpu")
    yield adapter
    adapter.unload()


def job(case: Case, adapter: ModelAdapter, index: int = 0) -> Request:
    request = case.request(adapter, index)
    # Smaller than calibration's 64x64 to keep the file fast; the separation holds (docs/verification.md).
    if isinstance(request, TextToImageRequest | ImageToVideoRequest):
        return dataclasses.replace(request, width=32, height=32)
    if isinstance(request, ImageToImageRequest):
        return dataclasses.replace(request, image=encode_png(Image.fromarray(synthetic_frame(32, 32, index))))
    return request


@pytest.fixture(scope="module")
def t2i(sdxl: ModelAdapter) -> tuple[Request, RawOutput]:
    """The text-to-image request every t2i case shares, and the reference run of it (generated once)."""
    request = job(CASE[Pipeline.TEXT_TO_IMAGE], sdxl)
    return request, sdxl.generate(request)


@pytest.fixture(scope="module")
def t2i_bfloat16(t2i: tuple[Request, RawOutput]) -> RawOutput:
    """The same request on a bfloat16 node: an honest variant two cases use."""
    other = honest_variant_adapter("tiny-sdxl", HonestVariant.BFLOAT16)
    output = other.generate(t2i[0])
    other.unload()
    return output


def test_text_to_image_honest_variants_agree(t2i: tuple[Request, RawOutput], t2i_bfloat16: RawOutput) -> None:
    request, reference = t2i
    pipeline = Pipeline.TEXT_TO_IMAGE
    assert compare(pipeline, reference, t2i_bfloat16).verdict is Verdict.AGREE
    for variant in (HonestVariant.ATTENTION, HonestVariant.LATENT_NOISE):
        other = honest_variant_adapter("tiny-sdxl", variant, seed=1)
        result = compare(pipeline, reference, other.generate(request))
        assert result.verdict is Verdict.AGREE, (variant, result)
        other.unload()


def test_text_to_image_cheats_disagree(sdxl: ModelAdapter, t2i: tuple[Request, RawOutput]) -> None:
    case = CASE[Pipeline.TEXT_TO_IMAGE]
    (request, reference), previous = t2i, job(case, sdxl, 1)
    rng = random.Random(3)
    outputs = {
        CheatMode.OTHER_SEED: sdxl.generate(cheat_request(request, CheatMode.OTHER_SEED, rng)),
        CheatMode.BLANK: cheat_output(reference, CheatMode.BLANK),
        CheatMode.COPIED: cheat_output(reference, CheatMode.COPIED, sdxl.generate(previous)),
    }
    other = other_model_adapter("tiny-sdxl")
    outputs[CheatMode.OTHER_MODEL] = other.generate(request)
    other.unload()
    for mode, raw in outputs.items():
        assert compare(case.pipeline, reference, raw).verdict is Verdict.DISAGREE, mode


def test_half_steps_are_caught_by_thresholds_calibrated_on_the_tiny_model(
    sdxl: ModelAdapter, t2i: tuple[Request, RawOutput], t2i_bfloat16: RawOutput
) -> None:
    # The random-weight UNet barely moves the latents, so 2 steps instead of 4 stay within the
    # default (real-hardware) tolerance; honest tiny variants differ far less (docs/verification.md),
    # and thresholds fitted to that gap separate them.
    request, reference = t2i
    half = sdxl.generate(cheat_request(request, CheatMode.HALF_STEPS, random.Random(0)))
    tight = Thresholds(text_to_image=PerceptualThresholds(0.995, 0.99, 2, 2))
    assert compare(Pipeline.TEXT_TO_IMAGE, reference, t2i_bfloat16, tight).verdict is Verdict.AGREE
    assert compare(Pipeline.TEXT_TO_IMAGE, reference, half, tight).verdict is Verdict.DISAGREE


def test_image_to_image_half_steps_is_not_agreement(sdxl: ModelAdapter) -> None:
    case = CASE[Pipeline.IMAGE_TO_IMAGE]
    request = job(case, sdxl)
    reference = sdxl.generate(request)
    half = sdxl.generate(cheat_request(request, CheatMode.HALF_STEPS, random.Random(0)))
    seeded = sdxl.generate(cheat_request(request, CheatMode.OTHER_SEED, random.Random(0)))
    assert compare(case.pipeline, reference, half).verdict is not Verdict.AGREE
    assert compare(case.pipeline, reference, seeded).verdict is Verdict.DISAGREE


def test_image_to_video_honest_agrees_cheats_disagree() -> None:
    case = CASE[Pipeline.IMAGE_TO_VIDEO]
    svd = registry.resolve("tiny-svd")
    svd.load("cpu")
    request = job(case, svd)
    reference = svd.generate(request)
    honest = honest_variant_adapter("tiny-svd", HonestVariant.LATENT_NOISE, seed=2).generate(request)
    assert compare(case.pipeline, reference, honest).verdict is Verdict.AGREE
    rng = random.Random(5)
    for mode in (CheatMode.OTHER_SEED, CheatMode.HALF_STEPS):
        cheated = svd.generate(cheat_request(request, mode, rng))
        assert compare(case.pipeline, reference, cheated).verdict is Verdict.DISAGREE, mode
    blank = compare(case.pipeline, reference, cheat_output(reference, CheatMode.BLANK))
    assert blank.verdict is Verdict.DISAGREE and blank.frames == 4
    svd.unload()


def test_frame_interpolation_near_exact_path() -> None:
    case = CASE[Pipeline.FRAME_INTERPOLATION]
    rife = registry.resolve("tiny-rife")
    rife.load("cpu")
    request, other_clip = job(case, rife, 0), job(case, rife, 1)
    reference = rife.generate(request)
    honest = honest_variant_adapter("tiny-rife", HonestVariant.BFLOAT16).generate(request)
    agreed = compare(case.pipeline, reference, honest)
    assert agreed.verdict is Verdict.AGREE and agreed.worst is not None and agreed.worst.psnr >= 40
    copier = Cheater(CheatMode.COPIED, rng=random.Random(0))
    copier.previous = rife.generate(other_clip)
    assert compare(case.pipeline, reference, copier.generate(rife, request)).verdict is Verdict.DISAGREE
    blank = compare(case.pipeline, reference, cheat_output(reference, CheatMode.BLANK))
    assert blank.verdict is Verdict.DISAGREE and blank.reason == "psnr"


def test_cheater_rate_is_seeded(sdxl: ModelAdapter) -> None:
    assert PipelineKind.TEXT_TO_IMAGE in sdxl.spec.pipelines
    cheater = Cheater(CheatMode.BLANK, 0.5, rng=random.Random(11))
    decisions = [cheater.rng.random() < cheater.rate for _ in range(20)]
    again = Cheater(CheatMode.BLANK, 0.5, rng=random.Random(11))
    assert decisions == [again.rng.random() < again.rate for _ in range(20)]
