"""What a pipeline returns: encoded bytes plus the hashes a receipt signs.

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
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import imagehash
import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import ParameterError

RGB = npt.NDArray[np.uint8]  # H × W × 3

PNG_COMPRESS_LEVEL = 6
H264_CRF = 18  # visually lossless for generated content; keeps per-frame hashes stable under re-decode


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
        rgb = image.convert("RGB")
        png = encode_png(rgb)
        # Hash pixels decoded from the bytes we send, not the ones we hold, so a verifier
        # holding only the file computes the same value.
        decoded = decode_image_bytes(png)
        return cls(
            png=png,
            width=rgb.width,
            height=rgb.height,
            sha256=hashlib.sha256(png).hexdigest(),
            pixel_sha256=pixel_sha256(decoded),
            phash=str(imagehash.phash(decoded)),
            dhash=str(imagehash.dhash(decoded)),
            timings_ms=dict(timings_ms or {}),
        )

    @classmethod
    def from_array(cls, array: RGB, timings_ms: dict[str, float] | None = None) -> ImageOutput:
        return cls.from_pil(Image.fromarray(array, mode="RGB"), timings_ms)

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
        cls, frames: Sequence[Image.Image], fps: float, timings_ms: dict[str, float] | None = None
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


def pixel_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # No pnginfo, no optimize pass: bytes depend only on pixels and zlib's level.
    image.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_image_bytes(data: bytes, field_name: str = "image") -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to RGB; undecodable input is a ParameterError."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ParameterError(field_name, f"<{len(data)} bytes>", f"a PNG or JPEG image ({exc})") from exc


def encode_mp4(frames: Sequence[Image.Image], fps: float) -> bytes:
    """H.264 (yuv420p) in an MP4, in memory. Width and height must be even (4:2:0 chroma)."""
    if not frames:
        raise ValueError("encode_mp4 needs at least one frame")
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
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
            frame = av.VideoFrame.from_image(image.convert("RGB"))  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def decode_video_bytes(data: bytes, field_name: str = "video") -> tuple[list[Image.Image], float]:
    """Decode every frame of a video to RGB, with its average fps. Bad input is a ParameterError."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # frame order and pixels must not depend on threading
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_image() for f in container.decode(stream)]  # type: ignore[no-untyped-call]
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise ParameterError(field_name, f"<{len(data)} bytes>", f"a decodable video ({exc})") from exc
    if not frames:
        raise ParameterError(field_name, f"<{len(data)} bytes>", "a video with at least one frame")
    return frames, float(rate) if rate else 0.0
