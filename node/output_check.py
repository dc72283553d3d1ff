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
import zlib

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


class PngCheck:
    """The PNG check of :func:`output_problem`, fed the file as it arrives (``feed``), read at the end.

    It walks what ``Image.verify`` walks: the signature, then every chunk's length and type up to
    IEND, the first one an IHDR whose mode and size are a PNG's, at least one IDAT. Nothing is
    inflated and the bytes are not kept, so a check costs next to nothing once the last byte is in
    (``output_problem`` took 0.3 ms of the answer's path for a 512² output on the dev box).

    Every chunk's CRC is checked but the image data's (IDAT). Those are nearly all the bytes, and
    checking them made the transfer itself 0.3 ms longer on the H100 host (zlib's CRC-32 runs about
    as fast as SHA-256 there, on the requester's one busy core). They prove nothing here: the
    transfer's SHA-256 already proves the bytes are the ones the worker signed, and a worker that
    means to cheat computes its CRCs. What the check is for, a signed file that is no image of the
    size asked for, is in the chunk structure.
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # the part of a signature, chunk head or CRC not complete yet
        self._signature_seen = False
        self._type = b""  # the chunk whose data is being read ("" between chunks)
        self._left = 0  # its data bytes still to come
        self._crc = 0
        self._ihdr = bytearray()
        self._size: tuple[int, int] | None = None
        self._ended = False
        self._image_data = False
        self._problem = ""

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and not self._problem and not self._ended:
            if self._type and self._left:  # chunk data: CRC'd in place, no copy
                part = view[: self._left]
                if self._type != b"IDAT":
                    self._crc = zlib.crc32(part, self._crc)
                if self._type == b"IHDR" and len(self._ihdr) < 13:
                    self._ihdr += part[: 13 - len(self._ihdr)]
                self._left -= len(part)
                view = view[len(part) :]
                continue
            piece = 4 if self._signature_seen and self._type else 8  # a CRC; the signature or a chunk head
            need = piece - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < piece:
                return
            self._step(bytes(self._pending))
            self._pending.clear()

    def _step(self, piece: bytes) -> None:
        if not self._signature_seen:
            if piece != _PNG_SIGNATURE:
                self._problem = "not a readable PNG (no PNG signature)"
            self._signature_seen = True
        elif self._type:  # the CRC after a chunk's data
            if self._type != b"IDAT" and int.from_bytes(piece, "big") != self._crc:
                self._problem = f"not a readable PNG (broken data stream: bad CRC in {self._type.decode('latin-1')})"
            elif self._type == b"IHDR":
                self._size = int.from_bytes(self._ihdr[0:4], "big"), int.from_bytes(self._ihdr[4:8], "big")
                if not _valid_ihdr(bytes(self._ihdr)):
                    self._problem = "not a readable PNG (an IHDR of no PNG mode)"
            elif self._type == b"IDAT":
                self._image_data = True
            elif self._type == b"IEND":
                self._ended = True
                if not self._image_data:
                    self._problem = "not a readable PNG (no image data)"
            self._type = b""
        else:  # a chunk's length and type
            length, kind = int.from_bytes(piece[:4], "big"), piece[4:]
            if not kind.isalpha():
                self._problem = f"not a readable PNG (broken chunk type {kind!r})"
            elif length > _PNG_MAX_CHUNK:
                self._problem = f"not a readable PNG (chunk {kind.decode()} of {length} bytes)"
            elif self._size is None and kind != b"IHDR":
                self._problem = "not a readable PNG (its first chunk is not IHDR)"
            elif kind == b"IHDR" and length != 13:
                self._problem = "not a readable PNG (an IHDR that is not 13 bytes)"
            self._type, self._left, self._crc = kind, length, zlib.crc32(kind)

    def problem(self, size: tuple[int, int] | None) -> str:
        """What :func:`output_problem` says of the whole file ("" when it is one, of ``size`` if given)."""
        if self._problem:
            return self._problem
        if not self._ended:
            return "not a readable PNG (truncated: no IEND chunk)"
        assert self._size is not None  # IEND comes after the IHDR, or the IHDR check failed first
        bomb = Image.MAX_IMAGE_PIXELS
        if bomb is not None and self._size[0] * self._size[1] > 2 * bomb:  # what Image.open refuses as a bomb
            return f"not a readable PNG ({self._size[0]}x{self._size[1]} pixels)"
        if size is not None and self._size != size:
            return f"{self._size[0]}x{self._size[1]}, not the {size[0]}x{size[1]} the job asked for"
        return ""


def _valid_ihdr(ihdr: bytes) -> bool:
    """Width and height over 0, a bit depth its colour type allows, the one compression and filter method."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour, compression, filtering, interlace = ihdr[8:13]
    return (
        0 < width < 2**31
        and 0 < height < 2**31
        and depth in _PNG_DEPTHS.get(colour, ())
        and compression == 0
        and filtering == 0
        and interlace in (0, 1)
    )


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # by colour type
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNK = 2**31 - 1  # the spec's bound on a chunk's length


__all__ = ["PngCheck", "expected_size", "output_problem"]
