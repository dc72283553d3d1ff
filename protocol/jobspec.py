"""JobSpec: what a requester asks a worker to compute, and the job id derived from it.

A spec carries every parameter the model adapters' request dataclasses need
(``lpnode.models.base``: ``TextToImageRequest`` ...) as wire types, plus the
seed, so a receipt that signs the spec signs everything that shaped the output.
Bulky inputs (images, videos) are not in the spec: it names them by
``BlobDescriptor`` (name, media type, length, sha256) and they travel as chunks
after ``Accept``. Because the descriptors hold the inputs' hashes, the job id
commits to the input bytes too.

Bounds mirror the absolute ones of the model requests (``__post_init__`` there);
model-specific limits are the worker's to check (it refuses ``unsupported_params``).
``protocol/`` must not import ``lpnode.models`` (torch), so ``node/`` converts a
spec into a model request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Annotated, Any

from .codec import Bound, canonical_bytes

MAX_SEED = 2**63 - 1  # same as lpnode.models.base.MAX_SEED: int64, what torch.Generator takes
MAX_PROMPT_CHARS = 2000  # same as lpnode.models.base.MAX_PROMPT_CHARS
MAX_INPUTS = 8
MAX_BLOB_BYTES = 2**40  # bytes; a sanity bound, node config sets the real transfer limits
MIN_NONCE_BYTES = 16  # 128 bits: two requesters never pick the same job id by chance
MAX_NONCE_BYTES = 32
_JOB_ID_DOMAIN = "lpnode/job-id/1"
_HEX = frozenset("0123456789abcdef")


class Pipeline(StrEnum):
    """Mirror of ``lpnode.models.base.PipelineKind``: the same wire names."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    IMAGE_TO_VIDEO = "image-to-video"
    UPSCALE = "upscale"
    FRAME_INTERPOLATION = "frame-interpolation"


IMAGE_PNG = "image/png"
VIDEO_MP4 = "video/mp4"

_NONE: frozenset[str] = frozenset()
_IMAGE = frozenset({"image"})
_VIDEO = frozenset({"video"})

# What each pipeline takes and makes: the sets of named bulky inputs it accepts (the bytes
# fields of its model request; exactly one set per spec) and, for each, the media type of
# what it produces (models/outputs.py encodes PNG and H.264 MP4). Upscaling maps an image
# to an image and a video to a video, so a spec's output type follows from its inputs.
PIPELINE_IO: dict[Pipeline, tuple[tuple[frozenset[str], str], ...]] = {
    Pipeline.TEXT_TO_IMAGE: ((_NONE, IMAGE_PNG),),
    Pipeline.IMAGE_TO_IMAGE: ((_IMAGE, IMAGE_PNG),),
    Pipeline.IMAGE_TO_VIDEO: ((_IMAGE, VIDEO_MP4),),
    Pipeline.UPSCALE: ((_IMAGE, IMAGE_PNG), (_VIDEO, VIDEO_MP4)),
    Pipeline.FRAME_INTERPOLATION: ((_VIDEO, VIDEO_MP4),),
}
# Every media type each pipeline may produce, whatever its inputs.
OUTPUT_MEDIA_TYPES: dict[Pipeline, frozenset[str]] = {
    pipeline: frozenset(media for _, media in choices) for pipeline, choices in PIPELINE_IO.items()
}
# What each pipeline makes from its first input choice (an image, for upscaling). A spec's
# own output type is output_media_type(spec.pipeline, <its input names>).
OUTPUT_MEDIA_TYPE: dict[Pipeline, str] = {pipeline: choices[0][1] for pipeline, choices in PIPELINE_IO.items()}


def output_media_type(pipeline: Pipeline, input_names: Iterable[str]) -> str:
    """The media type ``pipeline`` produces from inputs named ``input_names``; ValueError if it takes other inputs."""
    names = frozenset(input_names)
    for accepted, media_type in PIPELINE_IO[pipeline]:
        if names == accepted:
            return media_type
    takes = " or ".join(str(sorted(accepted)) for accepted, _ in PIPELINE_IO[pipeline])
    raise ValueError(f"{pipeline} takes inputs {takes}, got {sorted(names)}")


Prompt = Annotated[str, Bound(max_len=MAX_PROMPT_CHARS)]
Sha256Hex = Annotated[str, Bound(max_len=64)]


# ---------------------------------------------------------------- checks shared by messages


def check_range(name: str, value: int | float, lo: int | float, hi: int | float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} outside [{lo}, {hi}]")


def check_hex(name: str, value: str, length: int) -> None:
    """Lowercase hex of exactly ``length`` digits: one spelling per hash, so equal hashes compare equal."""
    if len(value) != length or not _HEX.issuperset(value):
        raise ValueError(f"{name} must be {length} lowercase hex digits")


def _floats(obj: Any) -> None:
    """Store every float field as a float: 1 and 1.0 would otherwise encode differently and change the job id."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))


# ---------------------------------------------------------------- parameters, one type per pipeline


@dataclass(frozen=True)
class TextToImageParams:
    prompt: Prompt
    width: int  # pixels
    height: int  # pixels
    num_inference_steps: int  # denoising steps
    guidance_scale: float  # classifier-free guidance weight; <= 1 disables it
    negative_prompt: Prompt

    def __post_init__(self) -> None:
        _floats(self)
        check_range("width", self.width, 8, 8192)
        check_range("height", self.height, 8, 8192)
        check_range("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_range("guidance_scale", self.guidance_scale, 0.0, 50.0)


@dataclass(frozen=True)
class ImageToImageParams:
    """Output size is the input image's size; the image is the input named ``image``."""

    prompt: Prompt
    strength: float  # share of the schedule re-noised, 0.01..1 (0 would keep the input)
    num_inference_steps: int  # denoising steps
    guidance_scale: float  # classifier-free guidance weight
    negative_prompt: Prompt

    def __post_init__(self) -> None:
        _floats(self)
        check_range("strength", self.strength, 0.01, 1.0)
        check_range("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_range("guidance_scale", self.guidance_scale, 0.0, 50.0)


@dataclass(frozen=True)
class ImageToVideoParams:
    """The conditioning image (input ``image``) is center-cropped to width × height."""

    width: int  # pixels
    height: int  # pixels
    num_frames: int  # output frames
    fps: int  # frames per second of the output; SVD also conditions on it
    motion_bucket_id: int  # SVD motion amount, 0..255
    noise_aug_strength: float  # noise added to the conditioning image, 0..1
    num_inference_steps: int  # denoising steps
    min_guidance_scale: float  # guidance at the first frame
    max_guidance_scale: float  # guidance at the last frame
    decode_chunk_size: int  # frames decoded at once (VRAM only; the output is the same)

    def __post_init__(self) -> None:
        _floats(self)
        check_range("width", self.width, 8, 4096)
        check_range("height", self.height, 8, 4096)
        check_range("num_frames", self.num_frames, 2, 256)
        check_range("fps", self.fps, 1, 120)
        check_range("motion_bucket_id", self.motion_bucket_id, 0, 255)
        check_range("noise_aug_strength", self.noise_aug_strength, 0.0, 1.0)
        check_range("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_range("min_guidance_scale", self.min_guidance_scale, 0.0, 50.0)
        check_range("max_guidance_scale", self.max_guidance_scale, self.min_guidance_scale, 50.0)
        check_range("decode_chunk_size", self.decode_chunk_size, 1, 256)


MAX_DECLARED_SIDE = 1 << 16  # pixels; a sanity bound, the worker's preset sets the real one
MAX_DECLARED_FRAMES = 1 << 16


@dataclass(frozen=True)
class UpscaleParams:
    """The input (``image`` or ``video``) is upscaled by ``scale``; a video frame by frame.

    The requester declares its input's size, so the worker knows the job's work (frames ×
    output pixels) when it quotes, before any input is sent; the worker refuses an input
    that turns out otherwise. All three 0 = not declared (older requesters): an image is
    then priced as one megapixel-step, and a video is refused.
    """

    scale: int  # output side / input side
    input_width: int = 0  # pixels of the input (of each frame of a video); 0 = not declared
    input_height: int = 0  # pixels
    input_frames: int = 0  # frames of the input: 1 for an image

    def __post_init__(self) -> None:
        check_range("scale", self.scale, 1, 16)
        check_range("input_width", self.input_width, 0, MAX_DECLARED_SIDE)
        check_range("input_height", self.input_height, 0, MAX_DECLARED_SIDE)
        check_range("input_frames", self.input_frames, 0, MAX_DECLARED_FRAMES)
        if self.declared != (self.input_width > 0) or self.declared != (self.input_height > 0):
            raise ValueError("input_width, input_height and input_frames are declared all together or not at all")

    @property
    def declared(self) -> bool:
        return self.input_frames > 0

    def output_pixels(self) -> int:
        """Output pixels over all frames, as declared (0 when not declared)."""
        return self.input_width * self.scale * self.input_height * self.scale * self.input_frames


@dataclass(frozen=True)
class FrameInterpolationParams:
    multiplier: int  # output fps / input fps; multiplier - 1 frames go between each input pair

    def __post_init__(self) -> None:
        check_range("multiplier", self.multiplier, 2, 16)


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True)
class BlobDescriptor:
    """A bulky input or output that travels as chunks, checked against ``sha256`` at the end."""

    name: Annotated[str, Bound(max_len=32)]  # the request field it fills ("image", "video") or output name
    media_type: Annotated[str, Bound(max_len=64)]  # "image/png", "image/jpeg", "video/mp4"
    size_bytes: int  # exact length in bytes
    sha256: Sha256Hex  # hex sha256 of the bytes

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a blob needs a name")
        check_range("size_bytes", self.size_bytes, 1, MAX_BLOB_BYTES)
        check_hex("sha256", self.sha256, 64)


@dataclass(frozen=True)
class OutputExpectation:
    media_type: Annotated[str, Bound(max_len=64)]  # must be what the pipeline makes of the inputs (output_media_type)
    max_total_bytes: int  # bytes; the requester rejects a result whose outputs add up to more

    def __post_init__(self) -> None:
        check_range("max_total_bytes", self.max_total_bytes, 1, MAX_BLOB_BYTES)


@dataclass(frozen=True)
class JobSpec:
    """One job. Exactly the params field of ``pipeline`` is set; the others are None.

    Separate optional fields rather than one union field: the codec decodes by
    type hint, and a tagged field per pipeline keeps decoding unambiguous.
    """

    pipeline: Pipeline
    model_id: Annotated[str, Bound(max_len=128)]  # "" = let the worker's node route to its best model
    seed: int  # 0..2**63-1; the only source of noise (a CPU torch.Generator on the worker)
    inputs: Annotated[tuple[BlobDescriptor, ...], Bound(max_items=MAX_INPUTS)]
    output: OutputExpectation
    text_to_image: TextToImageParams | None = None
    image_to_image: ImageToImageParams | None = None
    image_to_video: ImageToVideoParams | None = None
    upscale: UpscaleParams | None = None
    frame_interpolation: FrameInterpolationParams | None = None

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, MAX_SEED)
        set_params = [name for name in _PARAM_FIELDS if getattr(self, name) is not None]
        if set_params != [_PARAM_FIELD[self.pipeline]]:
            raise ValueError(f"a {self.pipeline} spec sets exactly {_PARAM_FIELD[self.pipeline]}, got {set_params}")
        names = [blob.name for blob in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names repeat")
        expected = output_media_type(self.pipeline, names)
        if self.output.media_type != expected:
            raise ValueError(f"{self.pipeline} of {sorted(names) or 'no input'} outputs {expected}")

    @property
    def params(
        self,
    ) -> TextToImageParams | ImageToImageParams | ImageToVideoParams | UpscaleParams | FrameInterpolationParams:
        value = getattr(self, _PARAM_FIELD[self.pipeline])
        assert value is not None  # __post_init__ guarantees it
        return value  # type: ignore[no-any-return]


_PARAM_FIELD: dict[Pipeline, str] = {p: p.value.replace("-", "_") for p in Pipeline}
_PARAM_FIELDS = tuple(_PARAM_FIELD.values())


def job_id(spec: JobSpec, requester_peer_id: str, nonce: bytes) -> str:
    """Hex sha256 naming one job: the spec, who asked, and the requester's nonce.

    The requester and nonce are in it so the same spec asked twice (or by two
    peers) is two jobs, and one worker's two receipts for one id can only mean
    it signed twice for the same work. The domain string keeps this hash apart
    from every other sha256 over canonical bytes.
    """
    return hashlib.sha256(canonical_bytes([_JOB_ID_DOMAIN, spec, requester_peer_id, nonce])).hexdigest()


def check_nonce(nonce: bytes) -> None:
    check_range("nonce length", len(nonce), MIN_NONCE_BYTES, MAX_NONCE_BYTES)


__all__ = [
    "OUTPUT_MEDIA_TYPE",
    "OUTPUT_MEDIA_TYPES",
    "PIPELINE_IO",
    "BlobDescriptor",
    "FrameInterpolationParams",
    "ImageToImageParams",
    "ImageToVideoParams",
    "JobSpec",
    "OutputExpectation",
    "Pipeline",
    "TextToImageParams",
    "UpscaleParams",
    "job_id",
    "output_media_type",
]
