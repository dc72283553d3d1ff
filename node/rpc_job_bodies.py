"""Request bodies of the pipeline endpoints → network jobs, inputs and options, checked before any peer is asked.

Each pipeline has one pydantic body with Livepeer AI's field names and
defaults, plus lpnode's job options (:class:`JobOptions`). Text-to-image and
workflows are JSON; the file-input pipelines are multipart/form-data (field
values arrive as strings and pydantic coerces them, so one model serves both).

A file-input endpoint takes exactly one file. Its bytes, not the form field
it came in, say which input it is (an MP4 sent to ``/upscale`` is a video to
upscale, whether the field is ``image`` or ``video``): :func:`prepare` names the
input after its content and refuses (422) a kind the pipeline does not take.

Uploads are read bounded (:func:`read_body`): a body over the node's input
limit is refused with :class:`InputTooLarge` (HTTP 413) as soon as it is
known to be too big, never held whole in memory first. Bad values raise
FastAPI's :class:`RequestValidationError` (HTTP 422), including the checks the
job spec adds to pydantic's, so no peer is contacted for a request that
cannot run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from lpnode.node.input_probe import InputSize, InputUnreadable, check_input_pixels, probe_input
from lpnode.node.job_requester import JobRequest, Params, build_spec, media_type_of
from lpnode.protocol.errors import InvalidSignature, LpnodeError
from lpnode.protocol.jobs import MAX_PRICE
from lpnode.protocol.jobspec import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    PIPELINE_IO,
    FrameInterpolationParams,
    ImageToImageParams,
    ImageToVideoParams,
    Pipeline,
    TextToImageParams,
    UpscaleParams,
)
from lpnode.protocol.peer_id import public_key_from_peer_id
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile

MAX_IMAGES_PER_PROMPT = 8
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024  # one non-file form field (a prompt is at most 2000 characters)
FORM_OVERHEAD_BYTES = 1024 * 1024  # fields and multipart framing on top of the file itself
_TEXT_FIELDS = frozenset({"prompt"})  # form fields where "" is a value (a blank prompt), not "not given"
MAX_JSON_DEPTH = 16  # a workflow nests 4 deep (body → steps → step → params): far deeper is a mistake or an attack


def _peer_id(value: str) -> str:
    """A peer id as lpnode peers have them (Ed25519): a typo in `avoid` would otherwise avoid nobody (QA)."""
    try:
        public_key_from_peer_id(value)
    except InvalidSignature as exc:
        raise PydanticCustomError(
            "peer_id", "{value} is not a peer id: {why}", {"value": repr(value[:64]), "why": str(exc)}
        ) from None
    return value


PeerId = Annotated[str, Field(max_length=64), AfterValidator(_peer_id)]
# Diffusion pipelines denoise a latent the VAE downsamples 8×: every text-to-image and image-to-video
# model on offer refuses another size, so it is refused here, in the field's terms, before any peer is asked.
DIFFUSION_SIZE_MULTIPLE = 8
_VERIFICATION = re.compile(r"none|spot|redundant:[2-5]")


class InputTooLarge(LpnodeError):
    """A request body or input file over the node's input limit (HTTP 413)."""


class JobOptions(BaseModel):
    """lpnode's options, taken by every pipeline endpoint and by workflows."""

    # unknown fields: the pipeline bodies refuse them by name, but for Livepeer's own (LIVEPEER_IGNORED);
    # NaN and infinity are refused as such (else NaN reads as "should be <= 50", which it is not either)
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    # at most what a QuoteRequest can carry (above it the request could not even be built: a 500)
    max_price: int = Field(1_000_000, ge=0, le=MAX_PRICE, description="micro-credits per network job, at most")
    deadline: float = Field(120.0, gt=0, le=3600, description="seconds for the whole request")
    priority: Literal["cost", "speed", "trust"] = "speed"
    # K as reputation.policy.parse_verification takes it (1 < K <= MAX_REDUNDANCY = 5): refused here, as a 422
    verification: str = Field("spot", description="none | spot | redundant:K (K peers run it, 2..5)")
    min_reputation: float | None = Field(None, ge=0.0, le=1.0)
    min_vram_gb: float | None = Field(None, ge=0.0, le=4096.0, description="GPU memory the worker must have")
    prefer: list[PeerId] = Field(default_factory=list, max_length=32)
    avoid: list[PeerId] = Field(default_factory=list, max_length=32)
    allow_local: bool = False

    @field_validator("verification")
    @classmethod
    def _verification(cls, value: str) -> str:
        # said in words: a regex pattern in the 422 ("should match pattern '^(none|spot|...'") reads as noise
        if not _VERIFICATION.fullmatch(value):
            raise PydanticCustomError(
                "verification",
                "{value} is not none, spot or redundant:K with K from 2 to 5",
                {"value": repr(value[:40])},  # bounded: the answer echoes it
            )
        return value

    def options(self) -> JobOptions:
        return JobOptions.model_validate({name: getattr(self, name) for name in JobOptions.model_fields})


# Fields of Livepeer's AI gateway API (its SDKs send them with every request) that lpnode takes and ignores:
# no safety checker or LoRAs run here, and the upscale nets take no steps. Any other field lpnode does not know
# is refused by name: ignored, a typo such as `max_prize` ran the job with the default budget (QA s11).
LIVEPEER_IGNORED: dict[Pipeline, frozenset[str]] = {
    Pipeline.TEXT_TO_IMAGE: frozenset({"loras", "safety_check"}),
    Pipeline.IMAGE_TO_IMAGE: frozenset({"loras", "safety_check", "image_guidance_scale"}),
    Pipeline.IMAGE_TO_VIDEO: frozenset({"safety_check"}),
    Pipeline.UPSCALE: frozenset({"safety_check", "num_inference_steps"}),
    Pipeline.FRAME_INTERPOLATION: frozenset(),
}


class _PipelineBody(JobOptions):
    model_id: str = Field("", max_length=128, description="empty: the best model of the pipeline on offer")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="empty: a random seed; image i uses seed + i")

    pipeline: ClassVar[Pipeline]

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            unknown = sorted(str(k) for k in values.keys() - cls.model_fields.keys() - LIVEPEER_IGNORED[cls.pipeline])
            if unknown:
                raise PydanticCustomError(
                    "unknown_field",
                    "unknown field(s) {unknown}; {pipeline} takes {known}",
                    {"unknown": unknown[:8], "pipeline": str(cls.pipeline), "known": sorted(cls.model_fields)},
                )
        return values

    def image_count(self) -> int:
        """Network jobs for this request (one per image)."""
        return 1

    def params(self) -> Params:
        raise NotImplementedError

    def job_requests(self) -> list[JobRequest]:
        """One network job per image; ValueError for a value the spec refuses."""
        first = self.seed if self.seed is not None else secrets.randbelow(MAX_SEED - MAX_IMAGES_PER_PROMPT)
        params = self.params()
        return [
            JobRequest(self.pipeline, params, self.model_id, min(MAX_SEED, first + i))
            for i in range(self.image_count())
        ]


def _diffusion_size(value: int) -> int:
    """``value`` if it is a whole number of latent blocks; a 422 naming the two nearest sizes otherwise."""
    step = DIFFUSION_SIZE_MULTIPLE
    if value % step:
        lower = max(step, value - value % step)
        raise PydanticCustomError(
            "size_multiple",
            "{value} is not a multiple of {step} (diffusion models work in {step}-pixel blocks): "
            "try {lower} or {upper}",
            {"value": value, "step": step, "lower": lower, "upper": lower + step},
        )
    return value


class TextToImageBody(_PipelineBody):
    """Livepeer AI's text-to-image fields and defaults, plus lpnode's job options."""

    pipeline: ClassVar[Pipeline] = Pipeline.TEXT_TO_IMAGE
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    height: int = Field(576, ge=8, le=8192)
    width: int = Field(1024, ge=8, le=8192)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int = Field(50, ge=1, le=1000)
    num_images_per_prompt: int = Field(1, ge=1, le=MAX_IMAGES_PER_PROMPT)

    @field_validator("width", "height")
    @classmethod
    def _whole_blocks(cls, value: int) -> int:
        return _diffusion_size(value)

    def image_count(self) -> int:
        return self.num_images_per_prompt

    def params(self) -> Params:
        return TextToImageParams(
            self.prompt, self.width, self.height, self.num_inference_steps, self.guidance_scale, self.negative_prompt
        )


class ImageToImageBody(_PipelineBody):
    pipeline: ClassVar[Pipeline] = Pipeline.IMAGE_TO_IMAGE
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    strength: float = Field(0.8, ge=0.01, le=1.0)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int = Field(100, ge=1, le=1000)
    num_images_per_prompt: int = Field(1, ge=1, le=MAX_IMAGES_PER_PROMPT)

    def image_count(self) -> int:
        return self.num_images_per_prompt

    def params(self) -> Params:
        return ImageToImageParams(
            self.prompt, self.strength, self.num_inference_steps, self.guidance_scale, self.negative_prompt
        )


class ImageToVideoBody(_PipelineBody):
    pipeline: ClassVar[Pipeline] = Pipeline.IMAGE_TO_VIDEO
    height: int = Field(576, ge=8, le=4096)
    width: int = Field(1024, ge=8, le=4096)
    fps: int = Field(6, ge=1, le=120)
    motion_bucket_id: int = Field(127, ge=0, le=255)
    noise_aug_strength: float = Field(0.02, ge=0.0, le=1.0)
    num_inference_steps: int = Field(25, ge=1, le=1000)
    num_frames: int = Field(14, ge=2, le=256)
    min_guidance_scale: float = Field(1.0, ge=0.0, le=50.0)
    max_guidance_scale: float = Field(3.0, ge=0.0, le=50.0)
    decode_chunk_size: int = Field(8, ge=1, le=256)

    @field_validator("width", "height")
    @classmethod
    def _whole_blocks(cls, value: int) -> int:
        return _diffusion_size(value)

    def params(self) -> Params:
        return ImageToVideoParams(
            self.width,
            self.height,
            self.num_frames,
            self.fps,
            self.motion_bucket_id,
            self.noise_aug_strength,
            self.num_inference_steps,
            self.min_guidance_scale,
            self.max_guidance_scale,
            self.decode_chunk_size,
        )


class UpscaleBody(_PipelineBody):
    pipeline: ClassVar[Pipeline] = Pipeline.UPSCALE
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="accepted for Livepeer; our nets take none")
    scale: int = Field(4, ge=1, le=16)

    def params(self) -> Params:
        return UpscaleParams(self.scale)


class FrameInterpolationBody(_PipelineBody):
    pipeline: ClassVar[Pipeline] = Pipeline.FRAME_INTERPOLATION
    multiplier: int = Field(2, ge=2, le=16)

    def params(self) -> Params:
        return FrameInterpolationParams(self.multiplier)


BODIES: dict[Pipeline, type[_PipelineBody]] = {
    Pipeline.TEXT_TO_IMAGE: TextToImageBody,
    Pipeline.IMAGE_TO_IMAGE: ImageToImageBody,
    Pipeline.IMAGE_TO_VIDEO: ImageToVideoBody,
    Pipeline.UPSCALE: UpscaleBody,
    Pipeline.FRAME_INTERPOLATION: FrameInterpolationBody,
}
IMAGE, VIDEO = "image", "video"  # the kinds of input file, named as the spec names its inputs
# The kinds of file each pipeline takes (one per request), from the spec's input choices.
INPUT_FILES: dict[Pipeline, tuple[str, ...]] = {
    pipeline: tuple(name for names, _ in choices for name in sorted(names)) for pipeline, choices in PIPELINE_IO.items()
}
# The form field each file endpoint documents (Livepeer's name: upscale's is "image"), None: no file.
INPUT_FILE: dict[Pipeline, str | None] = {pipeline: next(iter(names), None) for pipeline, names in INPUT_FILES.items()}
FILE_FIELDS = frozenset({IMAGE, VIDEO})  # form fields a file may come in; its bytes decide what it is


def input_kind(data: bytes) -> str | None:
    """``"image"`` (PNG, JPEG) or ``"video"`` (MP4) from the first bytes, as the spec's media type is; None: unknown."""
    media_type = media_type_of("", data)
    if media_type.startswith("image/"):
        return IMAGE
    if media_type.startswith("video/"):
        return VIDEO
    return None


def name_inputs(pipeline: Pipeline, inputs: Mapping[str, bytes]) -> dict[str, bytes]:
    """``inputs`` named by what their bytes are (an unknown format keeps its given name); 422 for a kind not taken."""
    accepted = INPUT_FILES[pipeline]
    named: dict[str, bytes] = {}
    for given, data in inputs.items():
        name = input_kind(data) or given
        if name not in accepted:
            takes = " or ".join(accepted) or "no file"
            raise invalid(f"{pipeline} takes {takes}, but the file {given!r} is {_a(name)}", "body", given)
        if name in named:
            raise invalid(f"{pipeline} takes one file, got two of kind {name}", "body", given)
        named[name] = data
    return named


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


@dataclass(frozen=True)
class PreparedJob:
    """One RPC request, checked: what the job manager runs and records."""

    kind: str  # the pipeline's wire name
    jobs: tuple[JobRequest, ...]  # one per image, run side by side
    inputs: Mapping[str, bytes] = field(repr=False)
    options: JobOptions
    request: dict[str, Any]  # the record's `request`: the fields, inputs as sha256 + size only


def input_summary(inputs: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in inputs.items()}


def probe_inputs(inputs: Mapping[str, bytes]) -> dict[str, InputSize]:
    """Every image or video input read as far as its size (images checked whole); 422 naming the field if not.

    Done for every pipeline before any peer is contacted: a file that is not what its field says
    is the request's fault, and sending it out would only cost a worker a quote, a reservation and
    an input transfer to find that out.
    """
    sizes: dict[str, InputSize] = {}
    for name, data in inputs.items():
        if name not in FILE_FIELDS:
            continue
        try:
            sizes[name] = probe_input(name, data)
        except InputUnreadable as exc:
            raise invalid(_plain(str(exc)), "body", name) from None
    return sizes


def probe_file(field_name: str, kind: str, data: bytes, pipeline: Pipeline) -> InputSize:
    """One file taken as ``kind`` (``image``/``video``) for ``pipeline``, read as far as its size, as
    :func:`probe_inputs` and :func:`check_pixels` read a request's: 422 at ``field_name`` if it cannot be."""
    try:
        size = probe_input(kind, data)
    except InputUnreadable as exc:
        raise invalid(_plain(str(exc)), "body", field_name) from None
    check_pixels(pipeline, {kind: size}, field_name)
    return size


def check_pixels(pipeline: Pipeline, sizes: Mapping[str, InputSize], field_name: str | None = None) -> None:
    """A 422 naming the field for an input every worker refuses for ``pipeline`` by its size alone, before
    any peer is contacted: an image-to-video image over ``input_probe.MAX_CONDITIONING_PIXELS``, or an
    image-to-image input whose sides are not whole latent blocks."""
    for name, size in sizes.items():
        where = field_name or name
        try:
            check_input_pixels(pipeline, name, size)
        except InputUnreadable as exc:
            raise invalid(str(exc), "body", where) from None
        if pipeline is Pipeline.IMAGE_TO_IMAGE and name == IMAGE:
            _check_blocks(size, where)


def _check_blocks(size: InputSize, field_name: str) -> None:
    """Image-to-image keeps its input's size, and diffusion models work in 8-pixel blocks: a photo of
    250×180 was sent to every peer, each refused "width=250 is not allowed", a field the request does
    not have (QA s11). Said here once, about the image, with the sizes to crop or resize it to."""
    step = DIFFUSION_SIZE_MULTIPLE
    if size.width % step == 0 and size.height % step == 0:
        return
    down = f"{max(step, size.width - size.width % step)}×{max(step, size.height - size.height % step)}"
    up = f"{-(-size.width // step) * step}×{-(-size.height // step) * step}"
    raise invalid(
        f"the input image is {size.width}×{size.height}; image-to-image keeps the input's size, and its sides "
        f"must be multiples of {step} (diffusion models work in {step}-pixel blocks): crop or resize it to "
        f"{down} or {up}",
        "body",
        field_name,
    )


# What the decoders add to their messages that means nothing to a client: the in-memory file's repr
# (PIL: "cannot identify image file <_io.BytesIO object at 0x7f...>") and FFmpeg's errno and file name.
_DECODER_NOISE = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>|\[Errno -?\d+\]\s*|:\s*'<none>'")


def _plain(message: str) -> str:
    return _DECODER_NOISE.sub("", message)


def declare_input(
    job: JobRequest, inputs: Mapping[str, bytes], sizes: Mapping[str, InputSize] | None = None
) -> JobRequest:
    """An upscale job with its input's size declared (so workers price it at quote time); 422 if unreadable.

    ``sizes``: the inputs already probed (:func:`probe_inputs`), so no file is read twice.
    """
    if not isinstance(job.params, UpscaleParams) or len(inputs) != 1:
        return job
    ((name, data),) = inputs.items()
    size = (sizes or {}).get(name) or probe_inputs({name: data})[name]
    params = dataclasses.replace(
        job.params, input_width=size.width, input_height=size.height, input_frames=size.num_frames
    )
    return dataclasses.replace(job, params=params)


def prepare(
    body: _PipelineBody, inputs: Mapping[str, bytes], max_output_bytes: int, *, declare: bool = True
) -> PreparedJob:
    """Build the network jobs of ``body``; RequestValidationError (422) when the spec refuses a value.

    Inputs are renamed after their content first (see the module docstring), so their given names are only labels.
    With ``declare`` an upscale's spec declares its input's size (:func:`declare_input`); planning a
    workflow, whose inputs are stand-ins until the run makes them, passes False.
    """
    inputs = name_inputs(body.pipeline, inputs)
    try:
        jobs = tuple(body.job_requests())
        if declare:
            sizes = probe_inputs(inputs)
            check_pixels(body.pipeline, sizes)
            jobs = tuple(declare_input(job, inputs, sizes) for job in jobs)
        for job in jobs:
            build_spec(job, inputs, max_output_bytes)  # the spec's own checks, before any peer is asked
    except ValueError as exc:
        raise invalid(str(exc), "body") from None
    request = body.model_dump(mode="json") | {"inputs": input_summary(inputs)}
    return PreparedJob(str(body.pipeline), jobs, dict(inputs), body.options(), request)


def invalid(message: str, where: str = "body", field_name: str | None = None) -> RequestValidationError:
    """A 422 about ``field_name`` of ``where``, or about the whole of ``where`` (the body) when None."""
    loc = (where,) if field_name is None else (where, field_name)
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def validate(model: type[BaseModel], values: Mapping[str, Any]) -> Any:
    """``model`` from ``values``; pydantic's errors become the API's 422."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from None


# ---------------------------------------------------------------- bounded reading


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with InputTooLarge once it passes ``max_bytes``."""
    _check_length(request, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InputTooLarge(f"request body over the node's limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    raw = await read_body(request, max_bytes)
    try:
        value = json.loads(raw or b"null")
    except ValueError as exc:
        sent = request.headers.get("content-type", "").split(";")[0].strip()
        # a form posted here reads "Expecting value: line 1 column 1" alone: say what the endpoint takes (QA s11)
        hint = f" (this endpoint takes application/json, the request is {sent})" if "json" not in sent and sent else ""
        raise invalid(f"not JSON: {exc}{hint}") from None
    except RecursionError:  # json's decoder recurses per level: `[[[[...` a few thousand deep ends here
        raise invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object")
    if _depth(value) > MAX_JSON_DEPTH:  # what pydantic and the record's JSON would recurse over next
        raise invalid(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deeply ``value``'s lists and objects nest (a scalar: 0), without recursing."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            break
        pending.extend((child, level + 1) for child in children)
    return deepest


async def read_form(request: Request, file_field: str, max_input_bytes: int) -> tuple[dict[str, Any], bytes]:
    """Fields and the one file of a multipart upload, each bounded.

    The file may come in ``file_field`` or any of :data:`FILE_FIELDS`: :func:`prepare` names it after its bytes.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid(f"send multipart/form-data with the file in field {file_field!r}", "header", "content-type")
    limit = max_input_bytes + FORM_OVERHEAD_BYTES
    # the same words as a streamed upload's refusal below: the limit a user set is max_input_bytes
    _check_length(request, limit, f"over the node's input limit of {max_input_bytes} bytes (plus the form's fields)")
    received = 0

    async def bounded_receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise InputTooLarge(f"upload over the node's input limit of {max_input_bytes} bytes")
        return message

    bounded = Request(request.scope, bounded_receive)
    try:
        form = await bounded.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except InputTooLarge:
        raise
    except Exception as exc:  # starlette's MultiPartException and parser errors: a malformed upload
        detail = getattr(exc, "detail", None) or str(exc)  # starlette's str() would prefix its own "400: "
        if "Part exceeded maximum size" in detail:  # a big part without a filename is a text field to starlette
            detail += f" (a text field; send the file as a file part with a filename, e.g. curl -F {file_field}=@FILE)"
        raise invalid(f"malformed multipart body: {detail}") from None
    try:
        fields: dict[str, Any] = {}
        upload: UploadFile | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != file_field and name not in FILE_FIELDS:
                    raise invalid(f"unexpected file field {name!r} (this endpoint takes {file_field!r})")
                upload = value
            elif name == file_field or name in FILE_FIELDS:  # a part without a filename: starlette's text field
                raise invalid(
                    f"field {name!r} came as text, not as a file: send it as a file part with a filename"
                    f" (curl -F {name}=@FILE)"
                )
            elif name in ("prefer", "avoid"):  # repeated fields or comma-separated
                fields.setdefault(name, []).extend(p.strip() for p in value.split(",") if p.strip())
            elif value or name in _TEXT_FIELDS:
                fields[name] = value
            # else: an empty field is one not given (HTML forms and generated clients send every field)
        if upload is None:
            raise invalid(f"missing file field {file_field!r}")
        if upload.size is not None and upload.size > max_input_bytes:
            raise InputTooLarge(f"{file_field} is {upload.size} bytes, over the node's input limit {max_input_bytes}")
        data = await upload.read(max_input_bytes + 1)
        if len(data) > max_input_bytes:
            raise InputTooLarge(f"{file_field} is over the node's input limit of {max_input_bytes} bytes")
        if not data:
            raise invalid(f"file {file_field!r} is empty")
        return fields, data
    finally:
        await form.close()


def _check_length(request: Request, max_bytes: int, over: str = "") -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        over = over or f"over the node's limit of {max_bytes} bytes"
        raise InputTooLarge(f"request of {declared} bytes is {over}")


__all__ = [
    "BODIES",
    "FILE_FIELDS",
    "IMAGE",
    "INPUT_FILE",
    "INPUT_FILES",
    "VIDEO",
    "FrameInterpolationBody",
    "ImageToImageBody",
    "ImageToVideoBody",
    "InputTooLarge",
    "JobOptions",
    "PreparedJob",
    "TextToImageBody",
    "UpscaleBody",
    "check_pixels",
    "declare_input",
    "input_kind",
    "input_summary",
    "invalid",
    "name_inputs",
    "prepare",
    "probe_file",
    "probe_inputs",
    "read_body",
    "read_form",
    "read_json",
    "validate",
]
