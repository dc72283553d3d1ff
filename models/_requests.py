"""The requests every pipeline takes: one frozen dataclass per ``PipelineKind``, bounds checked at construction.

Absolute bounds (no model accepts more) live here; a model's own limits are
checked by ``ModelAdapter.check_inputs``. Re-exported by ``lpnode.models.base``,
which is where callers import them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, TypeAlias

from .errors import ParameterError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed accepts any int64; keep seeds msgpack-friendly
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens anyway; this only bounds the wire size


class PipelineKind(StrEnum):
    """What a job asks for; the values are the names used on the wire and in the CLI."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    IMAGE_TO_VIDEO = "image-to-video"
    UPSCALE = "upscale"
    FRAME_INTERPOLATION = "frame-interpolation"


# --- bounds helpers (shared by request classes and adapters) -------------------------------


def check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise ParameterError unless ``value`` is an int (not bool) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParameterError(name, value, f"an integer in [{lo}, {hi}]")


def check_float(name: str, value: object, lo: float, hi: float) -> None:
    """Raise ParameterError unless ``value`` is a finite real number in ``[lo, hi]``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi
    if not ok:
        raise ParameterError(name, value, f"a number in [{lo}, {hi}]")


def check_multiple(name: str, value: int, multiple: int) -> None:
    if value % multiple:
        raise ParameterError(name, value, f"a multiple of {multiple}")


def _check_prompt(name: str, value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        raise ParameterError(name, value, f"a string of at most {MAX_PROMPT_CHARS} characters")


def _check_bytes(name: str, value: object) -> None:
    if not isinstance(value, bytes) or not value:
        raise ParameterError(name, f"<{type(value).__name__}>", "non-empty encoded bytes (PNG/JPEG/MP4)")


# --- requests ------------------------------------------------------------------------------
# Absolute bounds live in __post_init__; model-specific ones in ModelAdapter.check_inputs.
# Bulky fields are repr=False so logs stay readable.


@dataclass(frozen=True)
class TextToImageRequest:
    kind: ClassVar[PipelineKind] = PipelineKind.TEXT_TO_IMAGE
    prompt: str
    seed: int
    width: int = 512  # pixels
    height: int = 512  # pixels
    num_inference_steps: int = 1
    guidance_scale: float = 0.0  # <= 1 disables classifier-free guidance (SDXL-Turbo default)
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        _check_prompt("prompt", self.prompt)
        _check_prompt("negative_prompt", self.negative_prompt)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("width", self.width, 8, 8192)
        check_int("height", self.height, 8, 8192)
        check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_float("guidance_scale", self.guidance_scale, 0.0, 50.0)


@dataclass(frozen=True)
class ImageToImageRequest:
    """Output size is the input image's size."""

    kind: ClassVar[PipelineKind] = PipelineKind.IMAGE_TO_IMAGE
    prompt: str
    image: bytes = field(repr=False)  # PNG or JPEG
    seed: int
    strength: float = 0.5  # share of the schedule re-noised: 0 keeps the image, 1 ignores it
    num_inference_steps: int = 2
    guidance_scale: float = 0.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        _check_prompt("prompt", self.prompt)
        _check_prompt("negative_prompt", self.negative_prompt)
        _check_bytes("image", self.image)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_float("strength", self.strength, 0.01, 1.0)
        check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_float("guidance_scale", self.guidance_scale, 0.0, 50.0)


@dataclass(frozen=True)
class ImageToVideoRequest:
    """The conditioning image is resized (center-cropped) to width × height."""

    kind: ClassVar[PipelineKind] = PipelineKind.IMAGE_TO_VIDEO
    image: bytes = field(repr=False)
    seed: int
    width: int = 1024  # pixels
    height: int = 576  # pixels
    num_frames: int = 14
    fps: int = 7  # frames per second; SVD also conditions on it (micro-conditioning)
    motion_bucket_id: int = 127  # SVD motion amount, 0..255
    noise_aug_strength: float = 0.02
    num_inference_steps: int = 25
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int = 8  # frames decoded at once; lower saves VRAM, same output

    def __post_init__(self) -> None:
        _check_bytes("image", self.image)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("width", self.width, 8, 4096)
        check_int("height", self.height, 8, 4096)
        check_int("num_frames", self.num_frames, 2, 256)
        check_int("fps", self.fps, 1, 120)
        check_int("motion_bucket_id", self.motion_bucket_id, 0, 255)
        check_float("noise_aug_strength", self.noise_aug_strength, 0.0, 1.0)
        check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_float("min_guidance_scale", self.min_guidance_scale, 0.0, 50.0)
        check_float("max_guidance_scale", self.max_guidance_scale, self.min_guidance_scale, 50.0)
        check_int("decode_chunk_size", self.decode_chunk_size, 1, 256)


@dataclass(frozen=True)
class UpscaleRequest:
    """Exactly one of ``image`` (PNG/JPEG → PNG) and ``video`` (MP4 → MP4, every frame, same fps and count).

    Single pass, no noise: ``seed`` is kept only so every request and receipt has one.
    """

    kind: ClassVar[PipelineKind] = PipelineKind.UPSCALE
    image: bytes | None = field(default=None, repr=False)  # PNG or JPEG
    scale: int = 4  # output side / input side; must be one of spec.limits.scales
    seed: int = 0
    video: bytes | None = field(default=None, repr=False)  # MP4 (any codec FFmpeg decodes); last, so image stays first

    def __post_init__(self) -> None:
        given = [name for name in ("image", "video") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ParameterError("image/video", given or "neither", "exactly one of image and video")
        _check_bytes(given[0], getattr(self, given[0]))
        check_int("scale", self.scale, 1, 16)
        check_int("seed", self.seed, 0, MAX_SEED)


@dataclass(frozen=True)
class FrameInterpolationRequest:
    """``multiplier - 1`` frames are inserted between each pair of input frames.

    The output keeps the input's duration: its fps is the input fps × multiplier.
    """

    kind: ClassVar[PipelineKind] = PipelineKind.FRAME_INTERPOLATION
    video: bytes = field(repr=False)  # MP4 (any codec FFmpeg decodes)
    multiplier: int = 2  # must be one of spec.limits.scales
    seed: int = 0

    def __post_init__(self) -> None:
        _check_bytes("video", self.video)
        check_int("multiplier", self.multiplier, 2, 16)
        check_int("seed", self.seed, 0, MAX_SEED)


Request: TypeAlias = (
    TextToImageRequest | ImageToImageRequest | ImageToVideoRequest | UpscaleRequest | FrameInterpolationRequest
)

REQUEST_TYPES: Mapping[PipelineKind, type[Request]] = {
    PipelineKind.TEXT_TO_IMAGE: TextToImageRequest,
    PipelineKind.IMAGE_TO_IMAGE: ImageToImageRequest,
    PipelineKind.IMAGE_TO_VIDEO: ImageToVideoRequest,
    PipelineKind.UPSCALE: UpscaleRequest,
    PipelineKind.FRAME_INTERPOLATION: FrameInterpolationRequest,
}
