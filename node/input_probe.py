"""The size of a job's input file from its header or container, nothing decoded.

Every image or video input is probed by the requester before any peer is contacted
(``rpc_job_bodies.probe_inputs``): a file that cannot be read is a 422 naming its field.

A requester declares what it sends to an upscale (``UpscaleParams.input_*``) so
the worker can bound and price the work when it quotes. The worker reads the
same facts from the file it receives (``lpnode.models.upscale.probe_upscale_input``)
and refuses a mismatch, so the two must count alike: frames are the video
stream's non-empty packets, as there. Kept apart from ``lpnode.models`` so a
requester-only node never imports torch.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from lpnode.protocol.jobs import InputShape
from lpnode.protocol.jobspec import MAX_DECLARED_FRAMES, JobSpec, Pipeline
from PIL import Image

IMAGE, VIDEO = "image", "video"


class InputUnreadable(ValueError):
    """The file is not a readable image or video of the kind it was taken for."""


@dataclass(frozen=True)
class InputSize:
    width: int  # pixels (of each frame)
    height: int  # pixels
    num_frames: int  # 1 for an image


def probe_input(kind: str, data: bytes) -> InputSize:
    """Width, height and frame count of an ``image`` or ``video`` file; InputUnreadable if it cannot be read."""
    if kind == IMAGE:
        try:
            with Image.open(io.BytesIO(data)) as img:
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


# The input whose size fixes a job's work, for the pipelines whose spec does not declare it
# (QuoteRequest.input_shape); an upscale declares its input in the spec (UpscaleParams.input_*).
_SHAPED_INPUT = {Pipeline.IMAGE_TO_IMAGE: IMAGE, Pipeline.FRAME_INTERPOLATION: VIDEO}


def input_shape(spec: JobSpec, inputs: Mapping[str, bytes]) -> InputShape | None:
    """What a QuoteRequest declares about ``spec``'s input (``QuoteRequest.input_shape``); None for the
    pipelines that need none.

    Workers refuse an image-to-image or frame interpolation job that declares none (its price is its
    input's size), so an input that is missing or cannot be read raises :class:`InputUnreadable` here,
    before any peer is asked.
    """
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


__all__ = ["InputSize", "InputUnreadable", "input_shape", "probe_input"]
