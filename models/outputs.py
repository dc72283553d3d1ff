"""What a pipeline returns: raw pixels from the device stage, then encoded bytes plus the hashes a receipt signs.

A job has two stages. The *device stage* (``ModelAdapter.generate_batch``) runs while
the pool holds the device and returns :class:`RawImage` / :class:`RawVideo`: uint8
pixels, nothing encoded. The *output stage* (:func:`finish_output`) turns them into
:class:`ImageOutput` / :class:`VideoOutput`: PNG or MP4 bytes, hashes, fingerprints.
It touches no device and is thread-safe, and zlib, x264 and hashlib release the GIL
for most of it, so the pool runs it in worker threads outside the device limiter:
on an H100 it took 64-88 ms per 512² image, as long as a compiled SDXL-Turbo call,
and used to hold the GPU idle for that time (docs/benchmarks.md); with the PNG writer
of :mod:`.png` on one thread it took 18-23 ms there.

Two hashes per output, because they answer different questions: ``sha256`` over
the encoded bytes says "this is the file I sent", ``pixel_sha256`` over the
pixels decoded *from those bytes* says "these are the pixels", which a verifier
recomputes from the file alone. pHash/dHash (64-bit, hex) let a verifier
compare honest outputs from other hardware, which never match bit for bit
(DESIGN.md, comparison tolerance).

Encoding is deterministic: the same pixels give the same bytes on every
machine with the same library versions (PNG without metadata; H.264 with one
encoder thread, because x264's output depends on its thread count, and FFmpeg's
bitexact flags so no version or time strings vary).

PNG is written by :mod:`.png` (Sub filter, run-length deflate, bands on several
threads), and the hashes and fingerprints of an image are computed on those threads
while it deflates: a 512² output stage costs about what its slowest part costs.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, TypeAlias

import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import ParameterError
from .png import encode_png_array, output_executor

if TYPE_CHECKING:
    import av

RGB = npt.NDArray[np.uint8]  # H × W × 3

H264_CRF = 18  # visually lossless for generated content; keeps per-frame hashes stable under re-decode


def _check_rgb(name: str, array: RGB) -> None:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be H × W × 3 uint8 RGB, got {array.dtype} {array.shape}")


@dataclass(frozen=True, eq=False)
class RawImage:
    """One image as the device stage leaves it: pixels not yet encoded."""

    pixels: RGB = field(repr=False)  # H × W × 3 uint8
    # Device-stage wall times by stage name; the output stage adds "encode".
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rgb("RawImage.pixels", self.pixels)

    @classmethod
    def from_pil(cls, image: Image.Image, timings_ms: dict[str, float] | None = None) -> RawImage:
        return cls(np.asarray(image.convert("RGB"), dtype=np.uint8), dict(timings_ms or {}))

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True, eq=False)
class RawVideo:
    """One video as the device stage leaves it: frames not yet encoded, and their rate."""

    frames: tuple[RGB, ...] = field(repr=False)  # each H × W × 3 uint8, all one size
    fps: float  # frames per second of the video to encode
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("RawVideo needs at least one frame")
        for index, frame in enumerate(self.frames):
            _check_rgb(f"RawVideo.frames[{index}]", frame)
            if frame.shape != self.frames[0].shape:
                raise ValueError(f"RawVideo.frames[{index}] is {frame.shape}, frame 0 is {self.frames[0].shape}")

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def num_frames(self) -> int:
        return len(self.frames)


RawOutput: TypeAlias = RawImage | RawVideo


@dataclass(frozen=True)
class ImageOutput:
    png: bytes = field(repr=False)
    width: int  # pixels
    height: int  # pixels
    sha256: str  # hex, of ``png``
    pixel_sha256: str  # hex, of the decoded RGB bytes (row-major, 8 bits per channel)
    phash: str  # 16 hex digits, imagehash.phash
    dhash: str  # 16 hex digits, imagehash.dhash
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_pil(cls, image: Image.Image, timings_ms: dict[str, float] | None = None) -> ImageOutput:
        return cls.from_array(np.asarray(image.convert("RGB"), dtype=np.uint8), timings_ms)

    @classmethod
    def from_array(cls, array: RGB, timings_ms: dict[str, float] | None = None) -> ImageOutput:
        _check_rgb("image", array)
        array = np.ascontiguousarray(array)
        executor = output_executor()
        # The hashes are of the pixels a verifier decodes from the file. PNG is lossless
        # for 8-bit RGB, so those are exactly the pixels held here (a test checks it):
        # decoding the file again would cost ~10 % of the output stage for nothing.
        # They run on the output threads while the PNG's bands deflate (hashlib, Pillow's
        # convert and resize release the GIL).
        pixel_digest = executor.submit(lambda: hashlib.sha256(array.data).hexdigest())
        fingerprints = executor.submit(_fingerprints, array)
        png = encode_png_array(array, executor)
        phash, dhash = fingerprints.result()
        return cls(
            png=png,
            width=int(array.shape[1]),
            height=int(array.shape[0]),
            sha256=hashlib.sha256(png).hexdigest(),
            pixel_sha256=pixel_digest.result(),
            phash=phash,
            dhash=dhash,
            timings_ms=dict(timings_ms or {}),
        )

    def to_pil(self) -> Image.Image:
        return decode_image_bytes(self.png)


@dataclass(frozen=True)
class VideoOutput:
    mp4: bytes = field(repr=False)
    width: int  # pixels
    height: int  # pixels
    num_frames: int
    fps: float  # frames per second; encoded as a rational (e.g. 30000/1001)
    sha256: str  # hex, of ``mp4``
    pixel_sha256: str  # hex, over every decoded frame's RGB bytes in order
    frame_phash: tuple[str, ...]  # per decoded frame
    frame_dhash: tuple[str, ...]
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_frames(
        cls, frames: Sequence[Image.Image | RGB], fps: float, timings_ms: dict[str, float] | None = None
    ) -> VideoOutput:
        mp4 = encode_mp4(frames, fps)
        decoded, _ = decode_video_bytes(mp4)
        digest = hashlib.sha256()
        for frame in decoded:
            digest.update(frame.tobytes())
        return cls(
            mp4=mp4,
            width=decoded[0].width,
            height=decoded[0].height,
            num_frames=len(decoded),
            fps=float(fps),
            sha256=hashlib.sha256(mp4).hexdigest(),
            pixel_sha256=digest.hexdigest(),
            frame_phash=tuple(str(imagehash.phash(f)) for f in decoded),
            frame_dhash=tuple(str(imagehash.dhash(f)) for f in decoded),
            timings_ms=dict(timings_ms or {}),
        )

    def to_frames(self) -> list[Image.Image]:
        return decode_video_bytes(self.mp4)[0]


def finish_output(raw: RawOutput) -> ImageOutput | VideoOutput:
    """The output stage: encode, hash and fingerprint; adds ``timings_ms["encode"]``.

    Pure CPU work, safe to call from several threads at once. The result depends
    only on the pixels (and fps), so it is deterministic wherever it runs.
    """
    start = time.perf_counter()
    output: ImageOutput | VideoOutput
    if isinstance(raw, RawImage):
        output = ImageOutput.from_array(raw.pixels, raw.timings_ms)
    else:
        output = VideoOutput.from_frames(raw.frames, raw.fps, raw.timings_ms)
    output.timings_ms["encode"] = (time.perf_counter() - start) * 1000.0
    return output


def _fingerprints(array: RGB) -> tuple[str, str]:
    """pHash and dHash of an image; both start from one grey conversion (imagehash converts to "L" first)."""
    gray = Image.fromarray(array, mode="RGB").convert("L")
    return str(imagehash.phash(gray)), str(imagehash.dhash(gray))


def pixel_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def encode_png(image: Image.Image) -> bytes:
    """8-bit RGB PNG of ``image``; see :func:`encode_png_array`."""
    return encode_png_array(np.asarray(image.convert("RGB"), dtype=np.uint8))


# The most pixels an image (or one video frame) may have for it to be decoded here, input or output:
# the largest any preset takes or makes is an upscale's output, realesrgan's ``max_pixels`` of 4096 × 4096
# (tests/models/test_input_bounds.py keeps every preset within it). Decoded, that is 64 MiB (PIL holds 4
# bytes a pixel); PIL's own decompression-bomb check only warns from 89 Mpx and refuses from 179 Mpx, so a
# 420 KB PNG of 12000 × 12000 would otherwise cost about 1 GiB, and a 10 KB MP4 hundreds of MiB.
MAX_IMAGE_PIXELS = 4096 * 4096
# The image formats decoded: what requesters send (docs/protocol.md: ``image/png``, ``image/jpeg``) and WebP,
# which the pipelines always took. Anything else (TIFF, BMP, PSD, ...) only brings decoders to attack.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
_FORMATS_SHOWN = "a PNG, JPEG or WebP image"


def check_pixels(field_name: str, width: int, height: int, max_pixels: int) -> None:
    """ParameterError naming the size and the limit if ``width`` × ``height`` is over ``max_pixels``."""
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        square = f", e.g. {side}x{side}" if side * side == max_pixels else ""
        raise ParameterError(
            field_name, f"{width}x{height} ({width * height} pixels)", f"at most {max_pixels} pixels{square}"
        )


def image_size(data: bytes, field_name: str = "image", max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Width and height from the header alone, nothing decoded; ParameterError if the file is not
    :data:`IMAGE_FORMATS` or has more than ``max_pixels`` (None: any size)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = (int(side) for side in img.size)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ParameterError(field_name, f"<{len(data)} bytes>", f"{_FORMATS_SHOWN} ({exc})") from exc
    if max_pixels is not None:
        check_pixels(field_name, width, height, max_pixels)
    return width, height


def decode_image_bytes(data: bytes, field_name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to RGB; undecodable input, or more than ``max_pixels``, is a ParameterError.

    The size is read from the header (``Image.open`` decodes nothing) and refused before any pixel is.
    """
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            check_pixels(field_name, int(width), int(height), max_pixels)
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ParameterError(field_name, f"<{len(data)} bytes>", f"{_FORMATS_SHOWN} ({exc})") from exc


def encode_mp4(frames: Sequence[Image.Image | RGB], fps: float) -> bytes:
    """H.264 (yuv420p) in an MP4, in memory. Width and height must be even (4:2:0 chroma).

    Frames are PIL images or H × W × 3 uint8 arrays; equal pixels give equal bytes either way.
    """
    if not frames:
        raise ValueError("encode_mp4 needs at least one frame")
    first = frames[0]
    width, height = first.size if isinstance(first, Image.Image) else (first.shape[1], first.shape[0])
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    import av  # PyAV (FFmpeg) loads only where video is made: image-only nodes never need it

    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    # bitexact keeps FFmpeg's version string and timestamps out of the container.
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        # mbtree's floating-point lookahead made small clips encode to different bytes
        # depending on what the process had run before (seen: 5 variants of one 32x24 clip);
        # without it the same frames give the same bytes every time.
        stream.options = {"crf": str(H264_CRF), "preset": "medium", "x264-params": "mbtree=0"}
        for image in frames:
            frame = _video_frame(image)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _video_frame(image: Image.Image | RGB) -> av.VideoFrame:
    import av

    if isinstance(image, Image.Image):
        frame: av.VideoFrame = av.VideoFrame.from_image(image.convert("RGB"))  # type: ignore[no-untyped-call]
        return frame
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")


def decode_video_bytes(
    data: bytes, field_name: str = "video", *, max_frames: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[Image.Image], float]:
    """Decode every frame of a video to RGB, with its average fps. Bad input is a ParameterError.

    Each frame is checked as it comes out of the decoder, and decoding stops at the first one refused,
    before the next is decoded: every frame must be the size the container states (what a probe reads,
    ``interpolate.probe_video``, and what the job was checked and priced on: H.264 changes size
    mid-stream at a new SPS, so a 10 KB MP4 whose header and first frame say 64×64 can go on in
    2048×2048 frames), of at most ``max_pixels``, and there must be at most ``max_frames`` (None: any).
    """
    import av

    frames: list[Image.Image] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # frame order and pixels must not depend on threading
            rate = stream.average_rate or stream.guessed_rate
            codec = stream.codec_context  # read before decoding: the decoder updates it at a new size
            stated = (int(codec.width), int(codec.height)) if codec is not None else (0, 0)
            for frame in container.decode(stream):
                size = (int(frame.width), int(frame.height))
                expected = stated if stated[0] > 0 and stated[1] > 0 else (frames[0].size if frames else size)
                if size != expected:
                    raise ParameterError(
                        f"{field_name} frame {len(frames)}",
                        "{}x{}".format(*size),
                        "the size its container states, {}x{}".format(*expected),
                    )
                check_pixels(f"{field_name} frame {len(frames)}", size[0], size[1], max_pixels)
                if max_frames is not None and len(frames) >= max_frames:
                    raise ParameterError(field_name, f"more than {max_frames} frames", f"at most {max_frames} frames")
                frames.append(frame.to_image())  # type: ignore[no-untyped-call]
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise ParameterError(field_name, f"<{len(data)} bytes>", f"a decodable video ({exc})") from exc
    if not frames:
        raise ParameterError(field_name, f"<{len(data)} bytes>", "a video with at least one frame")
    return frames, float(rate) if rate else 0.0
