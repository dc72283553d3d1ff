"""Is a received output the file its job asked for? Read from its structure and header, nothing decoded.

The transfer proves the bytes are the ones the worker signed; it says nothing about what they
are. A worker that signs a text file as ``image/png`` would otherwise be paid and its "image"
saved (QA3 Q2). So before a try counts as done, the requester checks each output, cheaply:

* an image is a PNG whose every chunk and checksum is intact (``Image.verify``, 0.2 ms for a
  512² output), of the size the spec asks for when the spec fixes it;
* a video is an MP4 with a video stream and at least one frame, of the frame size the spec
  asks for when it fixes it (its frame count is not checked: encoders may count otherwise).

What the pixels look like, and whether the receipt's ``pixel_sha256`` is theirs, is for spot
checks, which decode both runs anyway (``lpnode.reputation.compare``).
"""

from __future__ import annotations

import io

from lpnode.protocol.jobs import InputShape
from lpnode.protocol.jobspec import (
    FrameInterpolationParams,
    ImageToImageParams,
    ImageToVideoParams,
    JobSpec,
    TextToImageParams,
    UpscaleParams,
)
from PIL import Image

from .input_probe import VIDEO, InputUnreadable, probe_input


def expected_size(spec: JobSpec, input_shape: InputShape | None = None) -> tuple[int, int] | None:
    """(width, height) of each output image or frame, where the spec (or the declared input) fixes it."""
    params = spec.params
    if isinstance(params, TextToImageParams | ImageToVideoParams):
        return params.width, params.height
    if isinstance(params, UpscaleParams) and params.declared:
        return params.input_width * params.scale, params.input_height * params.scale
    if isinstance(params, ImageToImageParams | FrameInterpolationParams) and input_shape is not None:
        return input_shape.width, input_shape.height
    return None


def output_problem(data: bytes, media_type: str, size: tuple[int, int] | None) -> str:
    """Why ``data`` is not an output of ``media_type`` and frame ``size`` ("" when it is one)."""
    if media_type == "image/png":
        try:
            with Image.open(io.BytesIO(data)) as img:
                found, kind = img.size, img.format
                img.verify()  # every chunk and its CRC, without inflating the pixels
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return f"not a readable PNG ({exc})"[:200]
        if kind != "PNG":
            return f"a {kind} file, not a PNG"
    elif media_type == "video/mp4":
        try:
            probe = probe_input(VIDEO, data)
        except InputUnreadable as exc:
            return f"not a readable MP4 ({exc})"[:200]
        found = probe.width, probe.height
    else:
        return f"an output of media type {media_type!r}, which no pipeline makes"
    if size is not None and found != size:
        return f"{found[0]}x{found[1]}, not the {size[0]}x{size[1]} the job asked for"
    return ""


__all__ = ["expected_size", "output_problem"]
