"""Output dataclasses: deterministic encoding and hashes a verifier can recompute."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from lpnode.models.errors import ParameterError
from lpnode.models.outputs import (
    ImageOutput,
    RawImage,
    RawVideo,
    VideoOutput,
    decode_image_bytes,
    decode_video_bytes,
    encode_mp4,
    finish_output,
    pixel_sha256,
)
from PIL import Image


def _frames(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    # smooth motion rather than noise, so the codec behaves as on real video
    return [Image.fromarray(np.roll(base, i, axis=1)) for i in range(n)]


def test_image_output_hashes_match_its_bytes() -> None:
    out = ImageOutput.from_pil(_frames(1)[0])
    assert (out.width, out.height) == (32, 32)
    assert out.sha256 == hashlib.sha256(out.png).hexdigest()
    assert out.pixel_sha256 == pixel_sha256(decode_image_bytes(out.png))
    assert len(out.phash) == 16 and len(out.dhash) == 16
    assert ImageOutput.from_pil(_frames(1)[0]) == out  # deterministic; timings excluded from eq


def test_video_output_is_deterministic_and_reports_frames_and_fps() -> None:
    a = VideoOutput.from_frames(_frames(5), fps=7)
    b = VideoOutput.from_frames(_frames(5), fps=7)
    assert a.sha256 == b.sha256 and a.mp4 == b.mp4
    assert (a.num_frames, a.fps, a.width, a.height) == (5, 7.0, 32, 32)
    assert len(a.frame_phash) == len(a.frame_dhash) == 5
    frames, fps = decode_video_bytes(a.mp4)
    assert len(frames) == 5 and fps == pytest.approx(7.0)


def test_ntsc_rate_survives_encoding() -> None:
    out = VideoOutput.from_frames(_frames(3), fps=30000 / 1001)
    assert decode_video_bytes(out.mp4)[1] == pytest.approx(30000 / 1001)


def test_odd_sizes_are_refused_by_the_encoder() -> None:
    with pytest.raises(ValueError, match="even"):
        encode_mp4([Image.new("RGB", (33, 32))], fps=7)


def test_undecodable_inputs_are_parameter_errors() -> None:
    with pytest.raises(ParameterError, match="image"):
        decode_image_bytes(b"not an image")
    with pytest.raises(ParameterError, match="video"):
        decode_video_bytes(b"not a video")


def test_finish_output_encodes_raw_pixels_and_adds_the_encode_time() -> None:
    frames = _frames(3)
    image = finish_output(RawImage.from_pil(frames[0], {"pipeline": 1.0}))
    assert image == ImageOutput.from_pil(frames[0])
    assert set(image.timings_ms) == {"pipeline", "encode"}
    arrays = tuple(np.asarray(f) for f in frames)
    video = finish_output(RawVideo(arrays, fps=7))
    assert isinstance(video, VideoOutput)
    assert video.mp4 == encode_mp4(frames, fps=7)  # arrays and PIL frames encode alike
    assert "encode" in video.timings_ms


def test_image_hashes_from_held_pixels_equal_those_of_the_decoded_file() -> None:
    # ImageOutput hashes the pixels it holds, relying on PNG being lossless: check it on noise,
    # on a non-contiguous view, and on extreme values.
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for array in (noise, noise[:, ::2], np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)):
        out = ImageOutput.from_array(array)
        decoded = decode_image_bytes(out.png)
        assert np.array_equal(np.asarray(decoded), array)
        assert out.pixel_sha256 == pixel_sha256(decoded)


def test_raw_outputs_refuse_what_is_not_uint8_rgb() -> None:
    with pytest.raises(ValueError, match="uint8"):
        RawImage(np.zeros((4, 4, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        RawImage(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="frame 0"):
        RawVideo((np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)), fps=7)
    with pytest.raises(ValueError, match="at least one"):
        RawVideo((), fps=7)
