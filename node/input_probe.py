"""The size of a job's input file from its header or container, nothing decoded.

Every image or video input is probed by the requester before any peer is contacted
(``rpc_job_bodies.probe_inputs``): a file that cannot be read is a 422 naming its field, and so
is an image-to-video input of more pixels than any worker takes (:data:`MAX_CONDITIONING_PIXELS`).

A requester declares what it sends to an upscale (``UpscaleParams.input_*``) so
the worker can bound and price the work when it quotes. The worker reads the
same facts from the file it receives (``lpnode.models.upscale.probe_upscale_input``)
and refuses a mismatch, so the two must count alike: frames are the video
stream's non-empty packets, as there. Kept apart from ``lpnode.models`` so a
requester-only node never imports torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

from lpnode.protocol.jobs import InputShape
from lpnode.protocol.jobspec import MAX_DECLARED_FRAMES, JobSpec, Pipeline
from PIL import Image

IMAGE, VIDEO = "image", "video"
# The image formats workers decode (lpnode.models.outputs.IMAGE_FORMATS): another is refused here, before
# any peer is asked, rather than by every worker after its transfer.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# An image-to-video input is a conditioning image, centre-cropped and resized to the clip's size (at most
# 1024×576 on svd-xt): pixels beyond a 4K photo's add nothing to the clip and cost the worker memory to
# decode (a 420 KB PNG can say 12000×12000). Workers refuse more, before decoding a pixel
# (``job_convert.model_request`` and ``lpnode.models.svd.MAX_CONDITIONING_PIXELS``, kept equal by a test);
# requesters refuse it before any peer is asked (:func:`check_input_pixels`).
MAX_CONDITIONING_PIXELS = 4096 * 4096
# The pipelines whose input is bounded in pixels whatever the model: pipeline → (input name, most pixels).
_PIXEL_BOUNDED: dict[Pipeline, tuple[str, int]] = {Pipeline.IMAGE_TO_VIDEO: (IMAGE, MAX_CONDITIONING_PIXELS)}


class InputUnreadable(ValueError):
    """The file is not a readable image or video of the kind it was taken for."""


class InputTooManyPixels(InputUnreadable):
    """A readable image with more pixels than any worker takes for its pipeline (:func:`check_input_pixels`).

    An InputUnreadable, so every caller that refuses an unreadable input before asking a peer refuses it too.
    """


@dataclass(frozen=True)
class InputSize:
    width: int  # pixels (of each frame)
    height: int  # pixels
    num_frames: int  # 1 for an image


def probe_input(kind: str, data: bytes) -> InputSize:
    """Width, height and frame count of an ``image`` or ``video`` file; InputUnreadable if it cannot be read."""
    if kind == IMAGE:
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size
                # Its structure checked to the end (PNG: every chunk and its CRC) without decoding
                # pixels: a header followed by junk or a truncated file is caught here, cheaply.
                img.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputUnreadable(f"not a readable image ({exc})") from exc
        return InputSize(int(width), int(height), 1)
    if kind == VIDEO:
        return _probe_video(data)
    raise ValueError(f"unknown input kind {kind!r}")


def _probe_video(data: bytes) -> InputSize:
    import av  # here, not at the top: image-only requesters never load FFmpeg

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec is None:  # a damaged container can name a stream FFmpeg has no decoder state for
                raise InputUnreadable("not a readable video (its video stream has no codec)")
            width, height = int(codec.width), int(codec.height)
            count = 0
            for packet in container.demux(stream):
                count += packet.size > 0  # the demuxer ends with an empty flush packet
                if count > MAX_DECLARED_FRAMES:
                    raise InputUnreadable(f"more than {MAX_DECLARED_FRAMES} frames")
    except (av.FFmpegError, IndexError, ValueError) as exc:
        if isinstance(exc, InputUnreadable):
            raise
        raise InputUnreadable(f"not a readable video ({exc})") from exc
    if count == 0 or width <= 0 or height <= 0:
        raise InputUnreadable("a video without frames")
    return InputSize(width, height, count)


def check_input_pixels(pipeline: Pipeline, name: str, size: InputSize) -> None:
    """InputTooManyPixels if input ``name`` of a ``pipeline`` job is over the pixels any worker takes for it."""
    bound = _PIXEL_BOUNDED.get(pipeline)
    if bound is None or bound[0] != name:
        return
    limit = bound[1]
    pixels = size.width * size.height
    if pixels > limit:
        side = math.isqrt(limit)
        raise InputTooManyPixels(
            f"the {name} is {size.width}x{size.height} ({pixels} pixels); {pipeline} takes at most {limit} "
            f"pixels (e.g. {side}x{side}): it is cropped and resized to the output's size, so send it smaller"
        )


# The input whose size fixes a job's work, for the pipelines whose spec does not declare it
# (QuoteRequest.input_shape); an upscale declares its input in the spec (UpscaleParams.input_*).
_SHAPED_INPUT = {Pipeline.IMAGE_TO_IMAGE: IMAGE, Pipeline.FRAME_INTERPOLATION: VIDEO}


def input_shape(spec: JobSpec, inputs: Mapping[str, bytes]) -> InputShape | None:
    """What a QuoteRequest declares about ``spec``'s input (``QuoteRequest.input_shape``); None for the
    pipelines that need none.

    Workers refuse an image-to-image or frame interpolation job that declares none (its price is its
    input's size), so an input that is missing or cannot be read raises :class:`InputUnreadable` here,
    before any peer is asked; so does an image-to-video input over :data:`MAX_CONDITIONING_PIXELS`
    (:class:`InputTooManyPixels`), which every worker would refuse.
    """
    bounded = _PIXEL_BOUNDED.get(spec.pipeline)
    if bounded is not None and bounded[0] in inputs:  # bounded in pixels whatever the worker: refused here
        name = bounded[0]
        check_input_pixels(spec.pipeline, name, probe_input(name, inputs[name]))
    kind = _SHAPED_INPUT.get(spec.pipeline)
    if kind is None:
        return None
    if kind not in inputs:
        raise InputUnreadable(f"{spec.pipeline} takes an input named {kind!r}; got {sorted(inputs) or 'none'}")
    size = probe_input(kind, inputs[kind])
    try:
        return InputShape(size.width, size.height, size.num_frames)
    except ValueError as exc:  # beyond what a QuoteRequest can declare
        raise InputUnreadable(
            f"the {kind} input is {size.width}x{size.height}, {size.num_frames} frame(s): {exc}"
        ) from exc


__all__ = [
    "IMAGE_FORMATS",
    "MAX_CONDITIONING_PIXELS",
    "InputSize",
    "InputTooManyPixels",
    "InputUnreadable",
    "check_input_pixels",
    "input_shape",
    "probe_input",
]
