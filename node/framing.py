"""Length-prefixed frames on a :class:`ByteStream`.

A frame is a 5-byte header, ``kind`` (1 byte) then the body length (4 bytes,
big-endian), followed by the body. ``MESSAGE`` bodies are codec frames
(msgpack, see :mod:`lpnode.protocol.codec`); ``DATA`` bodies are raw bytes
(chunks of a transfer, see :mod:`lpnode.node.transfer`), so a 1 MiB chunk is
never copied through msgpack.

Why so strict: py-libp2p reads a remote reset as a clean end of stream, so
truncation is only visible through lengths; and a peer must not make us buffer
or wait without bound. Hence:

- the receiver states the largest body it accepts, and the length is checked
  before a byte of the body is read (read-ahead is bounded by ``READ_BYTES``);
- reads are exact: ``receive_some`` may return any amount, the reader buffers;
- the wait for a frame to *start* and the time for a started frame to *finish*
  are bounded separately (``FramingConfig``), so a caller may wait minutes for
  a result while a peer that sends a header and then stalls (slow loris) is
  cut off after ``frame_timeout_s``;
- anything that leaves the stream mid-frame (oversized or garbage header,
  truncation, a timeout or cancellation after the first byte, a cancelled
  send) resets the stream and marks it broken: later calls raise
  :class:`StreamBroken` naming the first failure instead of reading from the
  middle of a frame. Cancelling a receive before any byte of the frame
  arrived leaves the stream usable.
- a send the *peer* cut off (it reset or closed the stream: :class:`StreamClosed`)
  ends our sending, not our reading: what the peer wrote before it cut us off is
  still read, so a worker's last word (why it stopped our upload) reaches us.

A whole frame whose body does not decode (``receive_message``) leaves the
framing intact: the caller may still answer with an error message.
"""

from __future__ import annotations

import enum
import inspect
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ..protocol.codec import decode, decode_any, encode, max_frame_bytes, tag_of
from ..protocol.errors import (
    FrameTooLarge,
    FrameTruncated,
    MalformedMessage,
    StreamBroken,
    StreamClosed,
    StreamTimeout,
)
from .network.base import ByteStream

T = TypeVar("T")

HEADER = struct.Struct(">BI")  # kind, body length in bytes
HARD_MAX_FRAME_BYTES = 16 * 1024 * 1024  # no caller may accept more in one frame: chunk bigger things
READ_BYTES = 64 * 1024  # most bytes read beyond the current frame (one yamux/noise frame's worth)


class FrameKind(enum.IntEnum):
    # 0 is not a kind, so a run of zero bytes is rejected as garbage
    MESSAGE = 1  # a codec frame
    DATA = 2  # raw bytes of a transfer chunk; an empty one ends the transfer


@dataclass(frozen=True)
class FramingConfig:
    """Time limits of one framed stream, in seconds."""

    # Waiting for the first byte of the next frame, unless the call gives its own timeout_s.
    idle_timeout_s: float = 60.0
    # From the first byte of a frame to its last: a 1 MiB chunk at 100 kB/s takes 10 s.
    frame_timeout_s: float = 30.0
    # One send_frame call, including waiting for the peer's flow-control window.
    write_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "frame_timeout_s", "write_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"FramingConfig.{name} must be a positive number of seconds, got {value!r}")


class FramedStream:
    """Frames and codec messages over one :class:`ByteStream`; one reader and one writer task at a time."""

    def __init__(self, stream: ByteStream, config: FramingConfig | None = None) -> None:
        self._stream = stream
        self._config = config or FramingConfig()
        self._buffer = bytearray()  # bytes read ahead of the current frame, at most READ_BYTES past it
        self._broken: str | None = None  # why this stream may no longer be used
        self._send_broken: str | None = None  # why we may no longer send (the peer cut a send off)

    @property
    def stream(self) -> ByteStream:
        return self._stream

    @property
    def config(self) -> FramingConfig:
        return self._config

    @property
    def broken(self) -> str | None:
        """Why the stream was reset or closed, or None while it is usable."""
        return self._broken

    @property
    def send_broken(self) -> str | None:
        """Why nothing more can be sent (the peer cut a send off; or :attr:`broken`), or None."""
        return self._broken or self._send_broken

    # ------------------------------------------------------------- sending

    async def send_frame(self, body: bytes | memoryview, kind: FrameKind = FrameKind.MESSAGE) -> None:
        self._check_usable()
        if self._send_broken is not None:
            raise StreamBroken(f"stream {self._stream.protocol_id} to {self._stream.remote_peer}: {self._send_broken}")
        if len(body) > HARD_MAX_FRAME_BYTES:
            raise ValueError(f"a frame body is at most {HARD_MAX_FRAME_BYTES} bytes, got {len(body)}")
        # One send_all per frame: a libp2p write costs a noise + yamux frame, and a
        # single call means a cancelled send is the only way to leave half a frame.
        data = HEADER.pack(kind, len(body)) + body
        try:
            with trio.fail_after(self._config.write_timeout_s):
                await self._stream.send_all(data)
        except trio.TooSlowError:
            reason = f"sending a {len(body)}-byte frame took over {self._config.write_timeout_s} s"
            await self.abort(reason)
            raise StreamTimeout(reason) from None
        except StreamClosed as exc:
            # The peer reset or closed the stream under this send: nothing of ours reaches it any more, but
            # what it wrote first (a JobError saying why) is still in our buffers, and readable.
            self._send_broken = f"the peer cut a send off: {exc}"
            raise
        except BaseException as exc:  # cancellation too: the peer may hold half a frame
            await self.abort(f"send of a {len(body)}-byte frame failed: {exc!r}")
            raise

    async def send_message(self, msg: object) -> None:
        await self.send_frame(encode(msg), FrameKind.MESSAGE)

    # ------------------------------------------------------------ receiving

    async def receive_frame(
        self, max_bytes: int, kind: FrameKind = FrameKind.MESSAGE, *, timeout_s: float | None = None
    ) -> bytes:
        """The body of the next frame, which must be of ``kind`` and at most ``max_bytes`` long.

        A frame of another kind raises :class:`MalformedMessage` (the stream stays framed).
        """
        got_kind, body = await self.receive_any_frame(max_bytes, timeout_s=timeout_s)
        if got_kind is not kind:
            raise MalformedMessage(f"expected a {kind.name} frame, got a {got_kind.name} frame")
        return body

    async def receive_any_frame(self, max_bytes: int, *, timeout_s: float | None = None) -> tuple[FrameKind, bytes]:
        """The next frame of either kind.

        ``timeout_s`` bounds the wait for the frame's first byte (default: the
        config's ``idle_timeout_s``); the rest must follow within ``frame_timeout_s``.
        A clean end of stream before the frame raises :class:`StreamClosed`.
        """
        self._check_usable()
        if not 0 <= max_bytes <= HARD_MAX_FRAME_BYTES:
            raise ValueError(f"max_bytes must be within 0..{HARD_MAX_FRAME_BYTES}, got {max_bytes}")
        wait_s = self._config.idle_timeout_s if timeout_s is None else timeout_s
        if not self._buffer:
            # Nothing of the frame consumed yet: a timeout or cancellation here
            # leaves the stream usable (a receive_some cancelled while it waits has consumed nothing).
            try:
                with trio.fail_after(wait_s):
                    data = await self._stream.receive_some(READ_BYTES)
            except trio.TooSlowError:
                raise StreamTimeout(f"no frame arrived within {wait_s} s") from None
            if not data:
                raise StreamClosed(f"stream {self._stream.protocol_id} from {self._stream.remote_peer} ended")
            self._buffer += data
        try:
            with trio.fail_after(self._config.frame_timeout_s):
                kind_byte, length = HEADER.unpack(await self._read_exactly(HEADER.size, "frame header"))
                if kind_byte not in _KINDS:
                    raise MalformedMessage(f"not a frame header: kind byte {kind_byte:#04x}")
                if length > max_bytes:
                    raise FrameTooLarge(length, max_bytes)
                body = await self._read_exactly(length, "frame body")
        except trio.TooSlowError:
            reason = f"a started frame did not complete within {self._config.frame_timeout_s} s"
            await self.abort(reason)
            raise StreamTimeout(reason) from None
        except BaseException as exc:  # garbage, truncation, cancellation: we are mid-frame
            await self.abort(f"receive failed mid-frame: {exc!r}")
            raise
        return _KINDS[kind_byte], body

    async def receive_message(self, expected: type[T], *, timeout_s: float | None = None) -> T:
        """The next message, which must be of type ``expected`` (bounded by its ``max_frame_bytes``)."""
        body = await self.receive_frame(max_frame_bytes(expected), timeout_s=timeout_s)
        return decode(body, expected)

    async def receive_one_of(self, *expected: type[Any], timeout_s: float | None = None) -> Any:
        """The next message, which must be of one of the ``expected`` types."""
        if not expected:
            raise ValueError("name at least one expected message type")
        body = await self.receive_frame(max(max_frame_bytes(cls) for cls in expected), timeout_s=timeout_s)
        msg = decode_any(body, len(body))
        if not isinstance(msg, expected):
            names = ", ".join(tag_of(cls) for cls in expected)
            raise MalformedMessage(f"expected one of {names}, got {tag_of(type(msg))}")
        return msg

    async def _read_exactly(self, n: int, what: str) -> bytes:
        buffer = self._buffer
        if len(buffer) >= n:  # small frames read ahead together: slice them off one by one
            body = bytes(buffer[:n])
            del buffer[:n]
            return body
        # A large body arrives in many reads: keep the pieces and join them once
        # (growing one buffer would copy a 1 MiB chunk several times over), and
        # cut only the last piece where it runs past the frame.
        pieces = [bytes(buffer)] if buffer else []
        have = len(buffer)
        self._buffer = bytearray()
        while have < n:
            data = await self._stream.receive_some(max(n - have, READ_BYTES))
            if not data:
                raise FrameTruncated(what, n, n - have)
            if len(data) > n - have:
                self._buffer = bytearray(data[n - have :])
                data = data[: n - have]
            pieces.append(data)
            have += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    # ------------------------------------------------------------- closing

    async def abort(self, reason: str) -> None:
        """Reset the stream (both directions) and refuse further use, naming ``reason``."""
        if self._broken is None:
            self._broken = reason
        self._buffer = bytearray()
        # ByteStream has no reset(); both backends offer one (libp2p's async, memory's sync).
        # Shielded: this runs while a cancellation is unwinding.
        with trio.CancelScope(shield=True):
            reset = getattr(self._stream, "reset", None)
            if reset is None:
                await self._stream.aclose()
                return
            result = reset()
            if inspect.isawaitable(result):
                await result

    async def aclose(self) -> None:
        """Close our side after what was sent (idempotent); the stream is then unusable here."""
        if self._broken is None:
            self._broken = "closed locally"
        self._buffer = bytearray()
        await self._stream.aclose()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StreamBroken(f"stream {self._stream.protocol_id} to {self._stream.remote_peer}: {self._broken}")


_KINDS = {int(k): k for k in FrameKind}

__all__ = ["HARD_MAX_FRAME_BYTES", "FrameKind", "FramedStream", "FramingConfig"]
