"""SDXL adapter on the tiny preset: shapes, determinism, batching, bounds, cancellation, weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from lpnode.models.base import (
    CancelToken,
    ImageToImageRequest,
    Output,
    PipelineKind,
    ProgressCallback,
    RawOutput,
    Request,
    StepProgress,
    TextToImageRequest,
)
from lpnode.models.errors import Cancelled, NotLoaded, ParameterError, WeightsMissing
from lpnode.models.outputs import ImageOutput, RawImage, encode_png
from lpnode.models.sd import SDXL_TURBO, TINY_SDXL, StableDiffusionXLAdapter
from PIL import Image


@pytest.fixture(scope="module")
def adapter() -> Iterator[StableDiffusionXLAdapter]:
    a = StableDiffusionXLAdapter(TINY_SDXL, None)
    a.load("cpu")
    yield a
    a.unload()


def t2i(seed: int, **params: object) -> TextToImageRequest:
    request = TINY_SDXL.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a red fox", seed=seed, **params)
    assert isinstance(request, TextToImageRequest)
    return request


def image(out: Output) -> ImageOutput:
    assert isinstance(out, ImageOutput)
    return out


def pixels(out: Output) -> np.ndarray:
    return np.asarray(image(out).to_pil(), dtype=np.int16)


def test_text_to_image_has_requested_size(adapter: StableDiffusionXLAdapter) -> None:
    out = image(adapter.run(t2i(1, width=64, height=32)))
    assert (out.width, out.height) == (64, 32)
    assert out.to_pil().size == (64, 32)
    assert {"pipeline", "device", "encode"} <= set(out.timings_ms)


def test_device_stage_returns_pixels_and_finish_encodes_them(adapter: StableDiffusionXLAdapter) -> None:
    raw = adapter.generate(t2i(5, width=48, height=32))
    assert isinstance(raw, RawImage)
    assert raw.pixels.shape == (32, 48, 3) and raw.pixels.dtype == np.uint8
    assert "encode" not in raw.timings_ms and raw.timings_ms["device"] >= raw.timings_ms["pipeline"]
    out = image(adapter.finish(raw))
    assert out == adapter.run(t2i(5, width=48, height=32))  # run() is finish(generate())
    assert np.array_equal(np.asarray(out.to_pil()), raw.pixels)


def test_same_seed_same_bytes_different_seed_different(adapter: StableDiffusionXLAdapter) -> None:
    a, b, c = (image(adapter.run(t2i(s))) for s in (7, 7, 8))
    assert a.sha256 == b.sha256 and a.pixel_sha256 == b.pixel_sha256
    assert a.sha256 != c.sha256


def test_batched_matches_single_within_tolerance(adapter: StableDiffusionXLAdapter) -> None:
    requests = [t2i(11), t2i(12)]
    keys = {adapter.batch_key(r) for r in requests}
    assert len(keys) == 1 and None not in keys
    batched = adapter.run_batch(requests)
    for request, out in zip(requests, batched, strict=True):
        assert np.abs(pixels(adapter.run(request)) - pixels(out)).max() <= 2
    assert image(batched[0]).sha256 != image(batched[1]).sha256  # each kept its own seed


def test_incompatible_requests_do_not_share_a_batch_key(adapter: StableDiffusionXLAdapter) -> None:
    assert adapter.batch_key(t2i(1, num_inference_steps=2)) != adapter.batch_key(t2i(1, num_inference_steps=3))
    with pytest.raises(ValueError, match="batch keys"):
        adapter.run_batch([t2i(1, width=64), t2i(1, width=32)])


def test_image_to_image_keeps_input_size(adapter: StableDiffusionXLAdapter) -> None:
    source = image(adapter.run(t2i(3, width=48, height=64)))
    request = TINY_SDXL.build_request(PipelineKind.IMAGE_TO_IMAGE, prompt="x", image=source.png, seed=4)
    assert isinstance(request, ImageToImageRequest)
    a, b = image(adapter.run(request)), image(adapter.run(request))
    assert (a.width, a.height) == (48, 64)
    assert a.sha256 == b.sha256 != source.sha256


class _Refuses(StableDiffusionXLAdapter):
    """Fails the test if any device work starts."""

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        raise AssertionError("generation started despite bad parameters")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"width": 60}, "width"),  # not a multiple of 8
        ({"width": 512}, "width"),  # over max_side
        ({"num_inference_steps": 51}, "num_inference_steps"),
    ],
)
def test_bad_parameters_fail_before_any_work(params: dict[str, object], field: str) -> None:
    refusing = _Refuses(TINY_SDXL, None)  # never loaded: the check must come first
    with pytest.raises(ParameterError) as info:
        refusing.run(t2i(0, **params))
    assert info.value.field == field


def test_bad_image_to_image_inputs_fail_before_any_work() -> None:
    refusing = _Refuses(TINY_SDXL, None)
    png = encode_png(Image.new("RGB", (64, 64)))
    with pytest.raises(ParameterError, match="strength"):
        refusing.run(ImageToImageRequest(prompt="x", image=png, seed=0, strength=0.2, num_inference_steps=2))
    with pytest.raises(ParameterError, match="image"):
        refusing.run(ImageToImageRequest(prompt="x", image=b"garbage", seed=0))
    odd = encode_png(Image.new("RGB", (60, 64)))
    with pytest.raises(ParameterError, match="width"):
        refusing.run(ImageToImageRequest(prompt="x", image=odd, seed=0))


def test_cancellation_stops_between_steps(adapter: StableDiffusionXLAdapter) -> None:
    token = CancelToken()
    seen: list[StepProgress] = []

    def on_progress(step: StepProgress) -> None:
        seen.append(step)
        token.cancel()  # as if the requester cancelled during the first step

    with pytest.raises(Cancelled):
        adapter.run(t2i(0, num_inference_steps=4), cancel=token, progress=on_progress)
    assert [(s.step, s.total) for s in seen] == [(1, 4)]
    image(adapter.run(t2i(0)))  # the adapter stays usable


def test_precancelled_token_does_no_work(adapter: StableDiffusionXLAdapter) -> None:
    token = CancelToken()
    token.cancel()
    seen: list[StepProgress] = []
    with pytest.raises(Cancelled):
        adapter.run(t2i(0), cancel=token, progress=seen.append)
    assert seen == []


def test_weights_hash_is_stable_across_builds_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first = StableDiffusionXLAdapter(TINY_SDXL, None).weights_sha256()
    second = StableDiffusionXLAdapter(TINY_SDXL, None)
    second.load()
    assert second.weights_sha256() == first and len(first) == 64
    assert torch.equal(state, torch.random.get_rng_state())


def test_footprint_param_count_and_unload() -> None:
    a = StableDiffusionXLAdapter(TINY_SDXL, None)
    assert a.footprint().weights_bytes == 0
    a.load()
    assert a.footprint().weights_bytes >= 4 * a.param_count() > 0
    a.unload()
    a.unload()  # twice is fine
    with pytest.raises(NotLoaded):
        a.run(t2i(0))


def test_missing_real_weights_say_what_to_put_where(tmp_path: Path) -> None:
    a = StableDiffusionXLAdapter(SDXL_TURBO, tmp_path)
    with pytest.raises(WeightsMissing) as info:
        a.load()
    message = str(info.value)
    assert str(tmp_path / "sdxl-turbo") in message
    assert "model_index.json" in message and "unet/" in message and "stabilityai/sdxl-turbo" in message
    assert not a.loaded
    with pytest.raises(WeightsMissing):
        a.weights_sha256()


def test_partly_present_real_weights_list_only_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "sdxl-turbo"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsMissing) as info:
        StableDiffusionXLAdapter(SDXL_TURBO, tmp_path).load()
    assert "vae/config.json" in str(info.value)
    assert "model_index.json" not in str(info.value) and "unet/" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_sdxl_on_gpu_is_deterministic_and_measured() -> None:
    a = StableDiffusionXLAdapter(TINY_SDXL, None)
    a.load("cuda", torch.float16)
    x, y = image(a.run(t2i(5))), image(a.run(t2i(5)))
    assert x.sha256 == y.sha256
    assert a.footprint().peak_run_bytes is not None
    assert a.runtime_info()["dtype"] == "float16"
    a.unload()
