"""SVD adapter on the tiny preset: an MP4 of the right length, reproducible, batchable, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lpnode.models.base import CancelToken, ImageToVideoRequest, Output, PipelineKind, StepProgress
from lpnode.models.errors import Cancelled, ParameterError, WeightsMissing
from lpnode.models.outputs import VideoOutput, decode_video_bytes, encode_png
from lpnode.models.svd import SVD_XT, TINY_SVD, StableVideoDiffusionAdapter, fit_image
from PIL import Image

# Small frames keep the temporal VAE decoder (the slow part on a CPU) cheap.
SIZE = 32


@pytest.fixture(scope="module")
def adapter() -> Iterator[StableVideoDiffusionAdapter]:
    a = StableVideoDiffusionAdapter(TINY_SVD, None)
    a.load("cpu")
    yield a
    a.unload()


@pytest.fixture(scope="module")
def still() -> bytes:
    gradient = np.linspace(0, 255, 48 * 40 * 3).reshape(40, 48, 3).astype(np.uint8)
    return encode_png(Image.fromarray(gradient))


def i2v(image: bytes, seed: int, **params: object) -> ImageToVideoRequest:
    params = {"width": SIZE, "height": SIZE} | params
    request = TINY_SVD.build_request(PipelineKind.IMAGE_TO_VIDEO, image=image, seed=seed, **params)
    assert isinstance(request, ImageToVideoRequest)
    return request


def video(out: Output) -> VideoOutput:
    assert isinstance(out, VideoOutput)
    return out


def frames(out: Output) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.float64) for f in video(out).to_frames()])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_video_has_requested_frames_size_and_fps(adapter: StableVideoDiffusionAdapter, still: bytes) -> None:
    out = video(adapter.run(i2v(still, 1, num_frames=3, fps=6)))
    assert (out.num_frames, out.width, out.height, out.fps) == (3, SIZE, SIZE, 6.0)
    decoded, fps = decode_video_bytes(out.mp4)
    assert len(decoded) == 3 and fps == pytest.approx(6.0)


def test_same_seed_same_bytes_different_seed_different(adapter: StableVideoDiffusionAdapter, still: bytes) -> None:
    a, b, c = (video(adapter.run(i2v(still, s))) for s in (5, 5, 6))
    assert a.sha256 == b.sha256 and a.frame_phash == b.frame_phash
    assert a.sha256 != c.sha256


def test_batched_matches_single_within_tolerance(adapter: StableVideoDiffusionAdapter, still: bytes) -> None:
    requests = [i2v(still, 21), i2v(still, 22)]
    assert adapter.batch_key(requests[0]) == adapter.batch_key(requests[1]) is not None
    batched = adapter.run_batch(requests)
    alone = frames(adapter.run(requests[0]))
    # Latents agree to ~1e-5; H.264 re-quantizes, so compare as a verifier would (PSNR).
    assert psnr(frames(batched[0]), alone) > 35.0
    assert psnr(frames(batched[1]), alone) < 30.0  # the other seed is a different video


def test_too_many_frames_fail_before_any_work(still: bytes) -> None:
    unloaded = StableVideoDiffusionAdapter(TINY_SVD, None)  # a run would raise NotLoaded after the check
    with pytest.raises(ParameterError) as info:
        unloaded.run(i2v(still, 0, num_frames=TINY_SVD.limits.max_frames + 1))
    assert info.value.field == "num_frames"
    with pytest.raises(ParameterError, match="image"):
        unloaded.run(ImageToVideoRequest(image=b"not a png", seed=0, width=SIZE, height=SIZE))


def test_cancellation_stops_between_steps(adapter: StableVideoDiffusionAdapter, still: bytes) -> None:
    token = CancelToken()
    seen: list[StepProgress] = []

    def on_progress(step: StepProgress) -> None:
        seen.append(step)
        token.cancel()

    with pytest.raises(Cancelled):
        adapter.run(i2v(still, 0, num_inference_steps=3), cancel=token, progress=on_progress)
    assert [s.step for s in seen] == [1]


def test_conditioning_image_is_center_cropped_not_stretched() -> None:
    wide = Image.new("RGB", (90, 30), "red")
    wide.paste((0, 0, 255), (0, 0, 30, 30))  # blue left third: cropped away for a square
    fitted = fit_image(wide, 32, 32)
    assert fitted.size == (32, 32)
    red, _, blue = fitted.getpixel((0, 16))  # type: ignore[misc]
    assert red > 200 and blue < 50  # Lanczos rings a little at the edge


def test_weights_hash_is_stable_across_builds() -> None:
    a = StableVideoDiffusionAdapter(TINY_SVD, None).weights_sha256()
    b = StableVideoDiffusionAdapter(TINY_SVD, None)
    b.load()
    assert a == b.weights_sha256()


def test_missing_real_weights_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as info:
        StableVideoDiffusionAdapter(SVD_XT, tmp_path).load()
    message = str(info.value)
    assert str(tmp_path / "svd-xt") in message and "image_encoder/" in message
    assert "stabilityai/stable-video-diffusion-img2vid-xt" in message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_svd_on_gpu(still: bytes) -> None:
    a = StableVideoDiffusionAdapter(TINY_SVD, None)
    a.load("cuda", torch.float16)
    x, y = video(a.run(i2v(still, 3))), video(a.run(i2v(still, 3)))
    assert x.num_frames == 4 and x.sha256 == y.sha256
    a.unload()
