"""Between the wire and the model pool: JobSpec → model request, pool output → blobs and receipt hashes.

``protocol/`` must not import ``lpnode.models`` (torch), so the worker converts
here. Only the models' public pieces are used: the request dataclasses, the
presets' ``Limits`` and the output dataclasses' fields.

Parameter checks happen in two places on purpose: :func:`check_params` runs at
quote time against the preset's limits, with no decoding and no device, so a
job that cannot run is refused before capacity is reserved; checks that need
the decoded input (an image's size) happen in ``pool.run`` before queueing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lpnode.models import registry
from lpnode.models.base import (
    REQUEST_TYPES,
    PipelineKind,
    Request,
    check_int,
    check_output_size,
)
from lpnode.models.errors import ParameterError
from lpnode.models.outputs import ImageOutput, VideoOutput
from lpnode.protocol.jobspec import (
    IMAGE_PNG,
    VIDEO_MP4,
    BlobDescriptor,
    FrameInterpolationParams,
    JobSpec,
    UpscaleParams,
)
from lpnode.protocol.receipts import OutputHashes

OUTPUT_NAME = "output"  # one output per job; num_images_per_prompt becomes several jobs


@dataclass(frozen=True)
class EncodedOutput:
    data: bytes  # the file the requester receives
    blob: BlobDescriptor  # announced in the Result
    hashes: OutputHashes  # signed in the receipt


def model_request(spec: JobSpec, inputs: Mapping[str, bytes]) -> Request:
    """The model request for ``spec`` with the received input bytes; ParameterError if a value is refused."""
    kind = PipelineKind(spec.pipeline.value)
    fields: dict[str, Any] = {**dataclasses.asdict(spec.params), "seed": spec.seed, **inputs}
    try:
        return REQUEST_TYPES[kind](**fields)
    except TypeError as exc:  # the request and the spec params disagree on a field: a version skew
        raise ParameterError("spec", kind.value, f"fields the {kind} request takes ({exc})") from exc


def check_params(preset_name: str, spec: JobSpec) -> None:
    """Model-specific limits that need no input decoding; raises ParameterError naming the field.

    Mirrors the parts of ``ModelAdapter.check_inputs`` that read only parameters,
    so the worker refuses (``unsupported_params``) before it reserves anything.
    """
    model = registry.spec(preset_name)
    kind = PipelineKind(spec.pipeline.value)
    if kind not in model.pipelines:
        raise ParameterError("pipeline", kind.value, f"one of {sorted(model.pipelines)}")
    lim = model.limits
    params = spec.params
    if isinstance(params, UpscaleParams) and params.scale not in lim.scales:
        raise ParameterError("scale", params.scale, f"one of {list(lim.scales)}")
    if isinstance(params, FrameInterpolationParams) and params.multiplier not in lim.scales:
        raise ParameterError("multiplier", params.multiplier, f"one of {list(lim.scales)}")
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    if width is not None and height is not None:
        check_output_size(lim, width, height)
    steps = getattr(params, "num_inference_steps", None)
    if steps is not None:
        check_int("num_inference_steps", steps, 1, lim.max_steps)
    frames = getattr(params, "num_frames", None)
    if frames is not None:
        check_int("num_frames", frames, 2, lim.max_frames)


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
