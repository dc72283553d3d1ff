"""Inputs are bounded in pixels before they are decoded: images from their header, videos frame by frame.

A PNG of zeros compresses about 1000:1, so a 49 KB file can say 4097×4096 (and a 420 KB one
12000×12000, under PIL's own bomb error); an MP4 can state 64×64 in its header and first frame and
go on in far larger frames (H.264 changes size at a new SPS). Each is refused before its pixels are
held: the tests patch the decoders to fail if they are reached, or count the frames decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, ClassVar

import av
import numpy as np
import pytest
from lpnode.models import registry
from lpnode.models.base import FrameInterpolationRequest, ImageToVideoRequest, PipelineKind, UpscaleRequest
from lpnode.models.errors import ParameterError
from lpnode.models.interpolate import probe_video
from lpnode.models.outputs import (
    IMAGE_FORMATS,
    MAX_IMAGE_PIXELS,
    decode_image_bytes,
    decode_video_bytes,
    encode_mp4,
    image_size,
)
from lpnode.models.svd import MAX_CONDITIONING_PIXELS, TINY_SVD, StableVideoDiffusionAdapter
from lpnode.node import input_probe
from PIL import Image, ImageFile

from tests.media_bombs import png_bomb

OVER = (4097, 4096)  # one column over 4096 × 4096


def encoded(width: int, height: int, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png_bomb(*OVER)
    assert len(data) < 64 * 1024
    return data


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any image decode fails the test: what is refused must be refused from the header."""

    def load(self: ImageFile.ImageFile) -> Any:
        raise AssertionError(f"decoded the pixels of a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --- images -----------------------------------------------------------------------------------


def test_every_preset_takes_and_makes_images_within_the_decode_bound() -> None:
    for name in registry.presets():
        assert registry.spec(name).limits.max_pixels <= MAX_IMAGE_PIXELS, name


def test_the_node_checks_what_the_models_check() -> None:
    assert input_probe.MAX_CONDITIONING_PIXELS == MAX_CONDITIONING_PIXELS <= MAX_IMAGE_PIXELS
    assert input_probe.IMAGE_FORMATS == IMAGE_FORMATS


@pytest.mark.usefixtures("no_pixel_decoding")
def test_an_image_over_the_bound_is_refused_from_its_header(bomb: bytes) -> None:
    with pytest.raises(
        ParameterError, match=r"4097x4096 \(16781312 pixels\).*at most 16777216 pixels, e\.g\. 4096x4096"
    ):
        decode_image_bytes(bomb)
    with pytest.raises(ParameterError, match="at most 16777216 pixels"):
        image_size(bomb)
    assert image_size(bomb, max_pixels=None) == OVER  # the size alone, for callers that bound it themselves


def test_the_bound_is_inclusive() -> None:
    image = encoded(64, 48, "PNG")
    assert decode_image_bytes(image, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(ParameterError, match="64x48"):
        decode_image_bytes(image, max_pixels=64 * 48 - 1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_decode(fmt: str) -> None:
    assert decode_image_bytes(encoded(16, 8, fmt)).size == (16, 8)
    assert image_size(encoded(16, 8, fmt)) == (16, 8)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused(fmt: str) -> None:
    with pytest.raises(ParameterError, match="a PNG, JPEG or WebP image"):
        decode_image_bytes(encoded(16, 8, fmt))
    with pytest.raises(ParameterError, match="a PNG, JPEG or WebP image"):
        image_size(encoded(16, 8, fmt))


def i2v(image: bytes) -> ImageToVideoRequest:
    request = TINY_SVD.build_request(PipelineKind.IMAGE_TO_VIDEO, image=image, seed=1, width=64, height=64)
    assert isinstance(request, ImageToVideoRequest)
    return request


def test_svd_refuses_a_conditioning_image_over_the_bound_before_decoding_it(
    bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = StableVideoDiffusionAdapter(TINY_SVD, None)  # check_inputs needs no weights
    adapter.check_inputs(i2v(encoded(640, 480, "JPEG")))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a pixel"))
    with pytest.raises(ParameterError, match=r"4097x4096.*at most 16777216 pixels"):
        adapter.check_inputs(i2v(bomb))


# --- videos -----------------------------------------------------------------------------------


def h264_stream(width: int, height: int, frames: int) -> bytes:
    """Raw H.264 (Annex B) with its SPS and PPS before every keyframe, as a stream that changes size has them."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="h264") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x264-params": "repeat-headers=1:bframes=0"}
        for index in range(frames):
            pixels = np.full((height, width, 3), 40 * index % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def disguised_mp4(stated: int, real: int, real_frames: int) -> bytes:
    """An MP4 whose header and first frame are ``stated``² and whose other frames are ``real``²."""
    source = av.open(io.BytesIO(h264_stream(stated, stated, 1) + h264_stream(real, real, real_frames)), format="h264")
    out = io.BytesIO()
    with source, av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream_from_template(source.streams.video[0])
        packets = (p for p in source.demux(source.streams.video[0]) if p.size)
        for index, packet in enumerate(packets):
            assert packet.time_base is not None
            packet.stream = stream
            packet.pts = packet.dts = int(index / (8 * packet.time_base))  # 8 fps
            container.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def disguised() -> bytes:
    data = disguised_mp4(64, 512, 8)
    probe = probe_video(data, 64)
    # what every check before decoding sees: a small, short clip
    assert (probe.width, probe.height, probe.num_frames, probe.fps) == (64, 64, 9, pytest.approx(8.0))
    return data


class CountingContainer:
    """An input container whose ``decode`` counts the frames it yields."""

    opened: ClassVar[list[CountingContainer]] = []

    def __init__(self, container: Any) -> None:
        self.container = container
        self.decoded = 0
        CountingContainer.opened.append(self)

    def __enter__(self) -> CountingContainer:
        self.container.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self.container.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.container, name)

    def decode(self, *args: Any) -> Iterator[Any]:
        for frame in self.container.decode(*args):
            self.decoded += 1
            yield frame


@pytest.fixture
def decoded_frames(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[CountingContainer]]:
    real_open = av.open
    CountingContainer.opened = []

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        container = real_open(*args, **kwargs)
        return container if kwargs.get("mode") == "w" else CountingContainer(container)

    monkeypatch.setattr(av, "open", counting_open)
    yield CountingContainer.opened


def test_a_frame_of_another_size_than_the_container_states_stops_the_decoding(
    disguised: bytes, decoded_frames: list[CountingContainer]
) -> None:
    with pytest.raises(ParameterError, match=r"video frame 1='512x512'.*the size its container states, 64x64"):
        decode_video_bytes(disguised)
    assert [c.decoded for c in decoded_frames] == [2]  # not the 7 after it


def test_frames_over_the_pixel_bound_or_the_frame_bound_stop_the_decoding(
    decoded_frames: list[CountingContainer],
) -> None:
    clip = encode_mp4([np.full((48, 64, 3), 10 * i, dtype=np.uint8) for i in range(6)], 8.0)
    frames, fps = decode_video_bytes(clip, max_frames=6, max_pixels=64 * 48)
    assert (len(frames), frames[0].size, fps) == (6, (64, 48), pytest.approx(8.0))
    with pytest.raises(ParameterError, match=r"video frame 0='64x48 \(3072 pixels\)'.*at most 3071 pixels"):
        decode_video_bytes(clip, max_pixels=64 * 48 - 1)
    with pytest.raises(ParameterError, match="at most 3 frames"):
        decode_video_bytes(clip, max_frames=3)
    assert [c.decoded for c in decoded_frames] == [6, 1, 4]


@pytest.fixture(scope="module")
def tiny_rife() -> Iterator[Any]:
    adapter = registry.resolve("tiny-rife")
    adapter.load("cpu")
    yield adapter
    adapter.unload()


def test_frame_interpolation_refuses_frames_bigger_than_the_probe_said(
    tiny_rife: Any, disguised: bytes, decoded_frames: list[CountingContainer]
) -> None:
    # tiny-rife takes at most 256×256: the 512×512 frames would have been interpolated had they all
    # been that size; here frame 0 differs, which was found only once every frame was decoded.
    request = FrameInterpolationRequest(video=disguised, multiplier=2, seed=0)
    tiny_rife.check_inputs(request)  # the container says 64×64, 9 frames: within the limits
    with pytest.raises(ParameterError, match="video frame 1"):
        tiny_rife.run(request)
    assert decoded_frames[-1].decoded == 2


@pytest.fixture(scope="module")
def tiny_upscaler() -> Iterator[Any]:
    adapter = registry.resolve("tiny-realesrgan")
    adapter.load("cpu")
    yield adapter
    adapter.unload()


def test_a_video_upscale_refuses_frames_bigger_than_the_probe_said(
    tiny_upscaler: Any, disguised: bytes, decoded_frames: list[CountingContainer]
) -> None:
    request = UpscaleRequest(video=disguised, scale=2, seed=0)
    tiny_upscaler.check_inputs(request)  # 9 frames of 128×128 out: within tiny-realesrgan's limits
    with pytest.raises(ParameterError, match="video frame 1"):
        tiny_upscaler.run(request)
    assert decoded_frames[-1].decoded == 2
