"""Bulky payloads (images, videos) over a :class:`FramedStream`, in bounded chunks.

On the wire, one transfer is::

    MESSAGE  TransferHeader(total_bytes, sha256, media_type, chunk_bytes)
    DATA     chunk 0 .. chunk n-1   every chunk exactly chunk_bytes long, the last one the remainder
    DATA     (empty)                the sender's end mark

The receiver refuses a header announcing more than its limits before it reads
any chunk, reads each chunk with its exact expected length as the frame bound
(so a peer cannot make it buffer more than one chunk ahead of what it keeps),
and checks the length and sha256 at the end: py-libp2p reads a reset as a
clean end of stream, so only the announced length tells a truncated output
from a whole one, and only the hash tells a damaged one.

Chunks are raw ``DATA`` frames, not msgpack, so a chunk is copied once into
its frame and once out of it. Each ``send_frame`` waits for the transport to
take the chunk (yamux flow control), so one chunk is in flight per direction.

Any failure or cancellation between header and end mark resets the stream
(``FramedStream.abort``): the peer sees the stream end, and further use here
raises :class:`StreamBroken` naming why. Only a complete transfer whose hash
does not match leaves the stream framed, so the receiver can still answer it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from ..protocol.codec import Bound, message
from ..protocol.errors import FrameTooLarge, StreamBroken, StreamClosed, TransferCorrupt, TransferTooLarge
from .framing import HARD_MAX_FRAME_BYTES, FramedStream, FrameKind

MiB = 1024 * 1024
# 1 MiB chunks are 1-10% faster on loopback (docs/benchmarks.md "Transfer"), but one crosses a
# 256 kbit/s home uplink in 33 s, past FramingConfig.frame_timeout_s (30 s); 256 KiB takes 8 s.
DEFAULT_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_CHUNK_BYTES = 1 * MiB
DEFAULT_MAX_TOTAL_BYTES = 256 * MiB  # a few minutes of 1080p video
MIN_CHUNK_BYTES = 4096  # below this, per-frame cost would let a peer burn our CPU
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")

# (bytes done, bytes total); called after the header and after every chunk, on the transfer's task.
Progress = Callable[[int, int], None]
# Takes each verified-length chunk in order; a sink's contents are only valid once receive_transfer returns.
Sink = Callable[[bytes], Awaitable[None]]


@message("transfer_header", max_bytes=512)
@dataclass(frozen=True)
class TransferHeader:
    total_bytes: int  # payload length in bytes
    sha256: Annotated[bytes, Bound(max_len=32)]  # sha256 of the whole payload
    media_type: Annotated[str, Bound(max_len=127)]  # e.g. "image/png", "video/mp4" (RFC 6838 type/subtype)
    chunk_bytes: int  # length of every DATA frame but the last

    def __post_init__(self) -> None:
        if self.total_bytes < 0:
            raise ValueError("total_bytes cannot be negative")
        if len(self.sha256) != 32:
            raise ValueError("sha256 must be 32 bytes")
        if not _MEDIA_TYPE.fullmatch(self.media_type):
            raise ValueError(f"media_type {self.media_type!r} is not type/subtype")
        if not MIN_CHUNK_BYTES <= self.chunk_bytes <= HARD_MAX_FRAME_BYTES:
            raise ValueError(f"chunk_bytes must be within {MIN_CHUNK_BYTES}..{HARD_MAX_FRAME_BYTES}")


@dataclass(frozen=True)
class TransferLimits:
    """What a receiver accepts."""

    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.max_total_bytes < 0:
            raise ValueError("TransferLimits.max_total_bytes cannot be negative")
        if not MIN_CHUNK_BYTES <= self.max_chunk_bytes <= HARD_MAX_FRAME_BYTES:
            raise ValueError(f"TransferLimits.max_chunk_bytes must be within {MIN_CHUNK_BYTES}..{HARD_MAX_FRAME_BYTES}")


@dataclass(frozen=True)
class ReceivedTransfer:
    header: TransferHeader
    data: bytes  # the payload; b"" when it went to a sink


async def send_transfer(
    framed: FramedStream,
    data: bytes,
    media_type: str,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    sha256: bytes | None = None,
    progress: Progress | None = None,
) -> TransferHeader:
    """Send ``data`` as one transfer; returns the header sent.

    ``sha256`` saves hashing ``data`` again when the caller already has its hash
    (a wrong one makes the receiver raise :class:`TransferCorrupt`).
    """
    header = TransferHeader(
        total_bytes=len(data),
        sha256=hashlib.sha256(data).digest() if sha256 is None else sha256,
        media_type=media_type,
        chunk_bytes=chunk_bytes,
    )
    await framed.send_message(header)
    view = memoryview(data)
    done = 0
    try:
        if progress is not None:
            progress(0, len(data))
        while done < len(data):
            chunk = view[done : done + chunk_bytes]
            await framed.send_frame(chunk, FrameKind.DATA)
            done += len(chunk)
            if progress is not None:
                progress(done, len(data))
        await framed.send_frame(b"", FrameKind.DATA)
    except (StreamClosed, StreamBroken):
        raise  # the receiver cut it off itself: it waits for nothing, and what it said first stays readable
    except BaseException as exc:
        # cancellation included: the receiver must not wait for, or misread, the rest
        await framed.abort(f"transfer interrupted after {done} of {len(data)} bytes: {exc!r}")
        raise
    return header


async def receive_transfer(
    framed: FramedStream,
    limits: TransferLimits | None = None,
    *,
    expected_sha256: bytes | None = None,
    sink: Sink | None = None,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> ReceivedTransfer:
    """Receive one transfer, verified: length, chunk sizes and sha256.

    ``timeout_s`` bounds the wait for the header; chunks then follow within the
    stream's ``FramingConfig`` limits. ``expected_sha256`` (e.g. from a signed
    receipt) is checked against the header before any chunk is read.
    """
    limits = limits or TransferLimits()
    parts: list[bytes] = []
    hasher = hashlib.sha256()
    done = total = 0
    try:
        header = await framed.receive_message(TransferHeader, timeout_s=timeout_s)
        total = header.total_bytes
        if total > limits.max_total_bytes:
            raise TransferTooLarge(total, limits.max_total_bytes)
        if header.chunk_bytes > limits.max_chunk_bytes:
            raise FrameTooLarge(header.chunk_bytes, limits.max_chunk_bytes)
        if expected_sha256 is not None and header.sha256 != expected_sha256:
            raise TransferCorrupt(f"announced sha256 {header.sha256.hex()} is not the expected {expected_sha256.hex()}")
        if progress is not None:
            progress(0, total)
        while done < total:
            due = min(header.chunk_bytes, total - done)
            chunk = await _receive_chunk(framed, due, done, total)
            if len(chunk) != due:
                raise TransferCorrupt(f"chunk at offset {done} is {len(chunk)} bytes, {due} were due")
            hasher.update(chunk)
            if sink is None:
                parts.append(chunk)
            else:
                await sink(chunk)
            done += due
            if progress is not None:
                progress(done, total)
        await _receive_chunk(framed, 0, done, total)  # the end mark
    except BaseException as exc:
        await framed.abort(f"transfer failed after {done} of {total} bytes: {exc!r}")
        raise
    if hasher.digest() != header.sha256:
        # Complete and still framed: the caller may answer on this stream.
        raise TransferCorrupt(
            f"{total}-byte {header.media_type} payload hashes to {hasher.hexdigest()}, header said {header.sha256.hex()}"
        )
    return ReceivedTransfer(header, b"".join(parts) if sink is None else b"")


async def _receive_chunk(framed: FramedStream, due: int, done: int, total: int) -> bytes:
    try:
        return await framed.receive_frame(due, FrameKind.DATA)
    except FrameTooLarge as exc:
        raise TransferCorrupt(f"peer sent more than the {total} bytes it announced (at offset {done})") from exc


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "Progress",
    "ReceivedTransfer",
    "Sink",
    "TransferHeader",
    "TransferLimits",
    "receive_transfer",
    "send_transfer",
]
