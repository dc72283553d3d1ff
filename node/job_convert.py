"""Between the wire and the model pool: JobSpec → model request, pool output → blobs and receipt hashes.

``protocol/`` must not import ``lpnode.models`` (torch), so the worker converts
here. Only the models' public pieces are used: the request dataclasses, the
presets' ``Limits`` and the output dataclasses' fields.

Parameter checks happen in two places on purpose: :func:`check_params` runs at
quote time against the preset's limits, with no decoding and no device, so a
job that cannot run is refused before capacity is reserved; checks that need
the decoded input (an image's size) happen in ``pool.run`` before queueing.

An upscale's, an image-to-image's and a frame interpolation's work depend on their
input, which the quote does not see: the requester declares the input's size (an
upscale in its spec, ``UpscaleParams.input_*``; the others in the QuoteRequest,
``InputShape``), :func:`check_params` bounds and prices that, and
:func:`model_request` refuses an input that is not what was declared (read from
its header or container, nothing decoded), so a requester cannot buy a 64-frame
job at the price of one frame. An image-to-video input declares no size: :func:`model_request`
bounds it in pixels from its header (``input_probe.MAX_CONDITIONING_PIXELS``) before the pool
decodes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lpnode.models import registry
from lpnode.models.base import (
    REQUEST_TYPES,
    Limits,
    PipelineKind,
    Request,
    UpscaleRequest,
    check_int,
    check_output_size,
    check_video_output,
)
from lpnode.models.errors import ParameterError
from lpnode.models.outputs import ImageOutput, VideoOutput
from lpnode.models.upscale import probe_upscale_input
from lpnode.protocol.jobs import InputShape
from lpnode.protocol.jobspec import (
    IMAGE_PNG,
    VIDEO_MP4,
    BlobDescriptor,
    FrameInterpolationParams,
    ImageToImageParams,
    ImageToVideoParams,
    JobSpec,
    UpscaleParams,
)
from lpnode.protocol.receipts import OutputHashes

from .input_probe import IMAGE, MAX_CONDITIONING_PIXELS, VIDEO, InputUnreadable, probe_input
from .peer_choice import interpolated_frames

OUTPUT_NAME = "output"  # one output per job; num_images_per_prompt becomes several jobs
# Spec fields that describe the input for pricing and are not model request fields.
_DECLARED_INPUT = frozenset({"input_width", "input_height", "input_frames"})


@dataclass(frozen=True)
class EncodedOutput:
    data: bytes  # the file the requester receives
    blob: BlobDescriptor  # announced in the Result
    hashes: OutputHashes  # signed in the receipt


def model_request(spec: JobSpec, inputs: Mapping[str, bytes], shape: InputShape | None = None) -> Request:
    """The model request for ``spec`` with the received input bytes; ParameterError if a value is refused,
    or if the input is not the ``shape`` the QuoteRequest declared (and the job was priced on)."""
    kind = PipelineKind(spec.pipeline.value)
    params = {k: v for k, v in dataclasses.asdict(spec.params).items() if k not in _DECLARED_INPUT}
    fields: dict[str, Any] = {**params, "seed": spec.seed, **inputs}
    try:
        request = REQUEST_TYPES[kind](**fields)
    except TypeError as exc:  # the request and the spec params disagree on a field: a version skew
        raise ParameterError("spec", kind.value, f"fields the {kind} request takes ({exc})") from exc
    if isinstance(request, UpscaleRequest) and isinstance(spec.params, UpscaleParams) and spec.params.declared:
        _check_declared(spec.params, request)
    if shape is not None:
        _check_shape(spec, inputs, shape)
    if isinstance(spec.params, ImageToVideoParams) and IMAGE in inputs:
        _check_conditioning_image(inputs[IMAGE])
    return request


def _check_conditioning_image(data: bytes) -> None:
    """An image-to-video input of at most MAX_CONDITIONING_PIXELS, read from its header before the pool decodes
    a pixel of it (it declares no size, so none was checked at quote time); ParameterError otherwise."""
    try:
        size = probe_input(IMAGE, data)
    except InputUnreadable as exc:
        raise ParameterError(IMAGE, f"<{len(data)} bytes>", f"a readable {IMAGE} ({exc})") from exc
    pixels = size.width * size.height
    if pixels > MAX_CONDITIONING_PIXELS:
        raise ParameterError(
            IMAGE,
            f"{size.width}x{size.height} ({pixels} pixels)",
            f"at most {MAX_CONDITIONING_PIXELS} pixels (it is cropped and resized to the clip's size)",
        )


def _check_shape(spec: JobSpec, inputs: Mapping[str, bytes], shape: InputShape) -> None:
    """The input is the size the QuoteRequest declared, read as the requester reads it (``input_probe``)."""
    kind = VIDEO if isinstance(spec.params, FrameInterpolationParams) else IMAGE
    if kind not in inputs:
        return  # not an input-sized pipeline: the declaration is ignored
    try:
        found = probe_input(kind, inputs[kind])
    except InputUnreadable as exc:
        raise ParameterError(kind, f"<{len(inputs[kind])} bytes>", f"a readable {kind} ({exc})") from exc
    got = (found.width, found.height, found.num_frames)
    declared = (shape.width, shape.height, shape.frames)
    if got != declared:
        shown = "{}x{} × {} frames"
        raise ParameterError("input", shown.format(*got), "the declared " + shown.format(*declared))


def _check_declared(params: UpscaleParams, request: UpscaleRequest) -> None:
    """The input is what the spec declared (and was priced on); ParameterError otherwise."""
    found = probe_upscale_input(request, params.input_frames)  # counts one frame past the declared number
    declared = (params.input_width, params.input_height, params.input_frames)
    got = (found.width, found.height, found.num_frames)
    if got != declared:
        shown = "{}x{} × {} frames"
        raise ParameterError("input", shown.format(*got), "the declared " + shown.format(*declared))


def check_params(preset_name: str, spec: JobSpec, shape: InputShape | None = None) -> None:
    """Model-specific limits that need no input decoding; raises ParameterError naming the field.

    Mirrors the parts of ``ModelAdapter.check_inputs`` that read only parameters (and the input
    ``shape`` a QuoteRequest declares), so the worker refuses (``unsupported_params``) before it
    reserves anything.
    """
    model = registry.spec(preset_name)
    kind = PipelineKind(spec.pipeline.value)
    if kind not in model.pipelines:
        raise ParameterError("pipeline", kind.value, f"one of {sorted(model.pipelines)}")
    lim = model.limits
    params = spec.params
    if isinstance(params, UpscaleParams):
        if params.scale not in lim.scales:
            raise ParameterError("scale", params.scale, f"one of {list(lim.scales)}")
        _check_upscale_work(lim, spec, params)
    if isinstance(params, FrameInterpolationParams) and params.multiplier not in lim.scales:
        raise ParameterError("multiplier", params.multiplier, f"one of {list(lim.scales)}")
    if isinstance(params, ImageToImageParams | FrameInterpolationParams):
        if shape is None:  # priced on the input's size: undeclared, any input would cost one megapixel-step
            raise ParameterError("input_shape", None, "the input's width, height and frames (QuoteRequest.input_shape)")
        _check_shape_work(lim, params, shape)
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    if width is not None and height is not None:
        check_output_size(lim, width, height)
    steps = getattr(params, "num_inference_steps", None)
    if steps is not None:
        check_int("num_inference_steps", steps, 1, lim.max_steps)
    frames = getattr(params, "num_frames", None)
    if frames is not None:
        check_int("num_frames", frames, 2, lim.max_frames)


def _check_upscale_work(lim: Limits, spec: JobSpec, params: UpscaleParams) -> None:
    video = any(blob.name == "video" for blob in spec.inputs)
    if not params.declared:  # priced on the input's size: undeclared, any input would cost one megapixel-step
        raise ParameterError("input_width", 0, "an upscale declares input_width, input_height, input_frames")
    width, height = params.input_width * params.scale, params.input_height * params.scale
    if video:
        check_video_output(lim, width, height, params.input_frames)
    else:
        check_int("input_frames", params.input_frames, 1, 1)
        check_output_size(lim, width, height)


def _check_shape_work(lim: Limits, params: ImageToImageParams | FrameInterpolationParams, shape: InputShape) -> None:
    """What the adapters check on the decoded input, on the declared size instead."""
    if isinstance(params, ImageToImageParams):
        check_output_size(lim, shape.width, shape.height)  # the output is the input's size
        return
    check_output_size(lim, shape.width, shape.height)
    if shape.frames < 2:
        raise ParameterError("input_frames", shape.frames, "at least 2 frames to interpolate between")
    check_video_output(lim, shape.width, shape.height, interpolated_frames(shape.frames, params.multiplier))


def encode_output(output: ImageOutput | VideoOutput) -> EncodedOutput:
    """The blob and receipt entry for one pool output (hashes as the pool computed them)."""
    phash: tuple[str, ...]
    dhash: tuple[str, ...]
    if isinstance(output, ImageOutput):
        data, media_type = output.png, IMAGE_PNG
        phash, dhash = (output.phash,), (output.dhash,)
    else:
        data, media_type = output.mp4, VIDEO_MP4
        phash, dhash = output.frame_phash, output.frame_dhash
    blob = BlobDescriptor(name=OUTPUT_NAME, media_type=media_type, size_bytes=len(data), sha256=output.sha256)
    hashes = OutputHashes(
        name=OUTPUT_NAME,
        media_type=media_type,
        size_bytes=len(data),
        sha256=output.sha256,
        pixel_sha256=output.pixel_sha256,
        phash=phash,
        dhash=dhash,
    )
    return EncodedOutput(data=data, blob=blob, hashes=hashes)


__all__ = ["OUTPUT_NAME", "EncodedOutput", "check_params", "encode_output", "model_request"]
