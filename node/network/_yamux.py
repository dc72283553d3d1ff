"""lpnode's yamux: the stream multiplexer under every libp2p connection (``/yamux/1.0.0``).

py-libp2p 0.8.1's yamux costs about 0.4 ms of Python per message each way, and a job
crosses the connection a dozen times (quote, progress, result, the output's frames):
every frame takes four to six trio locks, formats debug strings that are never
logged, sends a window update after every read (21 for one 653 kB output), and a
sender out of window polls every 10 ms for the update (docs/benchmarks.md). This is
the same protocol (the hashicorp yamux spec, which go-, rust- and py-libp2p speak),
written for how a node uses it:

* **One lock per connection** for writes (the Noise channel's nonces are sequential),
  none on the read path: a single task reads the connection, parses frames out of each
  decrypted Noise message and hands data to its stream's buffer.
* **Windows wake, not poll**: a sender out of window waits on an event the window
  update sets.
* **Credit once half of a 1 MiB window is read** (go-yamux's rule and its default
  ceiling): a job's output needs no update or one, instead of one per read. The
  increase above the spec's initial 256 KiB goes out as a plain WINDOW_UPDATE right
  after the stream's SYN or ACK, which every implementation applies.
* **The SYN rides the first frame** (as rust-yamux does): a stream's opener speaks
  first in libp2p (multistream-select), so its SYN, window and first bytes leave as one
  Noise message.
* **Frames fit one Noise message** (65,519 plaintext bytes), so none is split in two.
* **Bounded**: at most :data:`MAX_STREAMS` streams per connection and
  :data:`MAX_PENDING_ACCEPT` not yet taken by the host (more SYNs are reset, never
  queued); data beyond a stream's window, an unknown frame type or version, or a flood
  of control frames ends the connection with GO_AWAY (protocol error); control replies
  (ACKs, pongs, resets of refused streams) queue for a writer task, so the read loop
  never blocks on a full socket, and ride ahead of the next data write where they fit.
* **Writes are whole**: once a message has started out it is finished even if its
  caller is cancelled (a Noise message cut off halfway would kill the connection); a
  peer that stops reading for :data:`WRITE_TIMEOUT_S` loses the connection instead.

Nothing outside this module knows it is not py-libp2p's class: it implements
``IMuxedConn`` / ``IMuxedStream`` and the attributes the swarm reads (``peer_id``,
``event_started``, ``is_established``, ``on_close``), and it is registered under the
same protocol id (``libp2p.py``).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import trio
from libp2p.abc import IMuxedConn, IMuxedStream, ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)
from multiaddr import Multiaddr

from ._fast_lock import FastLock

log = logging.getLogger("lpnode.network.yamux")

PROTOCOL_ID = "/yamux/1.0.0"

_HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
HEADER_BYTES = _HEADER.size  # 12
VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 1
FLAG_ACK = 2
FLAG_FIN = 4
FLAG_RST = 8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1

INITIAL_WINDOW = 256 * 1024  # the spec's: what either side may send on a new stream before any update
RECEIVE_WINDOW = 1024 * 1024  # ours: how far a peer may send ahead on one stream
MAX_MESSAGE_BYTES = 65_519  # one Noise transport message's plaintext (65,535 less the tag)
MAX_DATA_PAYLOAD = MAX_MESSAGE_BYTES - HEADER_BYTES
MAX_STREAMS = 512  # open streams per connection, both directions together
MAX_PENDING_ACCEPT = 64  # inbound streams the host has not taken yet
MAX_CONTROL_BACKLOG = 1024  # control frames waiting for the writer: past this the peer is flooding us
CLOSE_GRACE_S = 2.0  # closing: the GO_AWAY's write, and the swarm's own clean-up
WRITE_TIMEOUT_S = 10.0  # one message of at most 64 KiB: 2 s on a 256 kbit/s uplink; past this the peer is not reading


class YamuxProtocolError(MuxedStreamError):
    """The peer broke the yamux protocol; the connection is ended with GO_AWAY."""


def _frame(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(VERSION, kind, flags, stream_id, length)


class YamuxStream(IMuxedStream):
    """One stream: a receive buffer filled by the connection's reader, a send window drained by writes."""

    def __init__(self, conn: YamuxConnection, stream_id: int, *, opened_here: bool) -> None:
        self.muxed_conn = conn
        self._conn = conn
        self.stream_id = stream_id
        self._syn_pending = opened_here  # the SYN leaves with this stream's first frame
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._readable = trio.Event()
        self._recv_window = INITIAL_WINDOW  # what the peer may still send, as it counts
        self._unacked = 0  # bytes read since our last window update
        self._send_window = INITIAL_WINDOW
        self._window_open = trio.Event()
        self._write_lock = FastLock()  # one write at a time per stream, so frames keep their order
        self._send_closed = False  # our FIN is out
        self._recv_closed = False  # the peer's FIN is in
        self._reset = False

    # ------------------------------------------------------------ IMuxedStream

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all buffered ones for None or -1), waiting for some; MuxedStreamEOF at the end."""
        if n == 0:
            return b""
        while not self._chunks:
            if self._reset:
                raise MuxedStreamReset(f"yamux stream {self.stream_id} was reset")
            if self._recv_closed:
                raise MuxedStreamEOF(f"yamux stream {self.stream_id} ended")
            await self._readable.wait()
            self._readable = trio.Event()
        data = self._take(n)
        self._unacked += len(data)
        if self._unacked >= RECEIVE_WINDOW // 2 and not self._recv_closed and not self._reset:
            delta, self._unacked = self._unacked, 0
            self._recv_window += delta
            # Owed, not awaited: nothing may wait between taking bytes and returning them, or a
            # cancelled read (a caller's timeout) would lose them and the credit with them.
            self._conn._owe(_frame(TYPE_WINDOW_UPDATE, 0, self.stream_id, delta))
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        async with self._write_lock:
            sent = 0
            while sent < len(view) or (not view and self._syn_pending):
                self._check_writable()
                while self._send_window == 0:
                    await self._window_open.wait()
                    self._window_open = trio.Event()
                    self._check_writable()
                prefix = self._open_frames()
                room = MAX_MESSAGE_BYTES - len(prefix) - HEADER_BYTES - self._conn.control_bytes
                size = min(self._send_window, room, len(view) - sent)
                self._send_window -= size
                try:
                    await self._conn._send_frames(
                        prefix, _frame(TYPE_DATA, 0, self.stream_id, size), view[sent : sent + size]
                    )
                except trio.Cancelled:
                    self._unsent(prefix, size)
                    raise
                sent += size

    async def close(self) -> None:
        """Half-close: our FIN; reading goes on until the peer's."""
        async with self._write_lock:
            if self._send_closed or self._reset:
                return
            self._send_closed = True
            prefix = self._open_frames()
            try:
                await self._conn._send_frames(prefix, _frame(TYPE_WINDOW_UPDATE, FLAG_FIN, self.stream_id, 0))
            except trio.Cancelled:
                self._send_closed = False
                self._unsent(prefix, 0)
                raise
            finally:
                self._conn._forget_if_done(self)

    async def reset(self) -> None:
        """Abort both directions; the peer reads a reset. Never waits behind a blocked write."""
        if self._reset:
            return
        never_sent = self._syn_pending
        self._mark_reset()
        if never_sent or self._conn.is_closed:
            return  # the peer never heard of this stream, or there is no connection left to tell
        with contextlib.suppress(MuxedStreamError):  # the connection died meanwhile: its streams end with it
            await self._conn._send_frames(_frame(TYPE_WINDOW_UPDATE, FLAG_RST, self.stream_id, 0))

    def set_deadline(self, ttl: int) -> None:
        raise NotImplementedError("yamux streams have no deadlines: bound the caller with trio timeouts")

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    async def __aenter__(self) -> YamuxStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ called by the connection

    def _open_frames(self) -> bytes:
        """The SYN and our window increase, the first time this stream sends anything; else nothing."""
        if not self._syn_pending:
            return b""
        self._syn_pending = False
        self._recv_window = RECEIVE_WINDOW
        return _frame(TYPE_WINDOW_UPDATE, FLAG_SYN, self.stream_id, 0) + _frame(
            TYPE_WINDOW_UPDATE, 0, self.stream_id, RECEIVE_WINDOW - INITIAL_WINDOW
        )

    def _unsent(self, prefix: bytes, size: int) -> None:
        """A send cancelled while it waited for the connection's turn (the write itself is never cut
        short): nothing of it left, so its SYN is still owed and its bytes are still ours to send."""
        self._send_window += size
        if prefix:
            self._syn_pending = True

    def _on_data(self, payload: bytes) -> None:
        if len(payload) > self._recv_window:
            raise YamuxProtocolError(
                f"stream {self.stream_id}: {len(payload)} bytes sent past a window of {self._recv_window}"
            )
        self._recv_window -= len(payload)
        if self._recv_closed or self._reset:
            return  # after FIN or RST: counted against the window, then dropped
        if payload:
            self._chunks.append(payload)
            self._buffered += len(payload)
            self._readable.set()

    def _on_window(self, delta: int) -> None:
        if delta:
            self._send_window += delta
            self._window_open.set()

    def _on_fin(self) -> None:
        self._recv_closed = True
        self._readable.set()

    def _mark_reset(self) -> None:
        self._reset = True
        self._readable.set()
        self._window_open.set()
        self._conn._forget(self)

    def _check_writable(self) -> None:
        if self._reset:
            raise MuxedStreamReset(f"yamux stream {self.stream_id} was reset")
        if self._send_closed:
            raise MuxedStreamClosed(f"yamux stream {self.stream_id} is closed for writing")

    @property
    def _done(self) -> bool:
        return self._reset or (self._send_closed and self._recv_closed)

    def _take(self, n: int | None) -> bytes:
        first = self._chunks[0]
        if n is None or n < 0 or n >= self._buffered:
            data = first if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
        elif n >= len(first):
            data = self._chunks.popleft()  # a whole frame's payload: no copy
        else:
            data, self._chunks[0] = first[:n], first[n:]
        self._buffered -= len(data)
        return data


class YamuxConnection(IMuxedConn):
    """One connection's streams over its secure channel; ``start`` runs its reader until the end."""

    def __init__(self, secured_conn: ISecureConn, peer_id: ID, is_initiator: bool | None = None) -> None:
        self.secured_conn = secured_conn
        self.peer_id = peer_id
        self._initiator = secured_conn.is_initiator if is_initiator is None else is_initiator
        self._next_stream_id = 1 if self._initiator else 2  # the dialer opens odd ids, the listener even
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        self._created_at = time.time()  # read by py-libp2p's connection pruner as the connection's age (wall clock)
        self.on_close: Callable[[], Awaitable[Any]] | None = None  # set by the swarm's connection
        self._streams: dict[int, YamuxStream] = {}
        self._accept_send, self._accept_receive = trio.open_memory_channel[YamuxStream](MAX_PENDING_ACCEPT)
        self._write_lock = FastLock()
        self._control: deque[bytes] = deque()
        self.control_bytes = 0  # their total: a data frame leaves room for them
        self._control_ready = trio.Event()
        self._going_away = False  # a GO_AWAY came in: no new streams either way
        self._closing = False

    # ------------------------------------------------------------ IMuxedConn

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_established(self) -> bool:
        return self.event_started.is_set() and not self._closing

    @property
    def is_closed(self) -> bool:
        return self._closing

    async def start(self) -> None:
        """Read frames until the connection ends, then end every stream; the swarm runs this in its nursery."""
        reason = "connection ended"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_control)
                self.event_started.set()
                try:
                    reason = await self._read_frames()
                except YamuxProtocolError as exc:
                    reason = f"protocol error: {exc}"
                    log.debug("yamux with %s: %s", self.peer_id, exc)
                    await self._send_go_away(GO_AWAY_PROTOCOL_ERROR)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._shut_down(reason)

    async def close(self) -> None:
        if self._closing:
            return
        await self._send_go_away(GO_AWAY_NORMAL)
        with trio.CancelScope(shield=True):
            await self._shut_down("closed locally")

    async def open_stream(self) -> YamuxStream:
        if self._closing or self._going_away:
            raise MuxedConnUnavailable(
                f"yamux connection to {self.peer_id} is {'closed' if self._closing else 'going away'}"
            )
        if len(self._streams) >= MAX_STREAMS:
            raise MuxedConnUnavailable(f"yamux connection to {self.peer_id} has {MAX_STREAMS} streams open")
        stream_id = self._next_stream_id
        if stream_id > 0xFFFF_FFFF:
            raise MuxedConnUnavailable(f"yamux connection to {self.peer_id} has used up its stream ids")
        self._next_stream_id += 2
        stream = YamuxStream(self, stream_id, opened_here=True)
        self._streams[stream_id] = stream
        await trio.lowlevel.checkpoint()
        return stream

    async def accept_stream(self) -> YamuxStream:
        try:
            return await self._accept_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise MuxedConnUnavailable(f"yamux connection to {self.peer_id} is closed") from exc

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self.secured_conn.get_transport_addresses()

    def get_connection_type(self) -> Any:
        return self.secured_conn.get_connection_type()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.secured_conn.get_remote_address()

    # ------------------------------------------------------------ writing

    async def _send_frames(self, *parts: bytes | memoryview) -> None:
        """Send frames as one Noise message (their total must fit one).

        Waiting for the turn to write can be cancelled; the write itself cannot: a Noise message
        cut off halfway would leave the peer a stream it cannot decrypt, and every stream on the
        connection would die with the one whose caller gave up. A write that does not finish
        within :data:`WRITE_TIMEOUT_S` (the peer stopped reading) ends the connection instead.
        """
        if self._closing:
            raise MuxedStreamReset(f"yamux connection to {self.peer_id} is closed")
        data = b"".join(parts)
        async with self._write_lock:
            if self._closing:
                raise MuxedStreamReset(f"yamux connection to {self.peer_id} is closed")
            # Control replies owed go first, in the same message where they fit: an accepted stream's
            # ACK is never overtaken by that stream's own first bytes.
            owed = self._take_control(MAX_MESSAGE_BYTES - len(data))
            if owed:
                data = owed + data
            if not data:
                return  # a control flush that another write already carried
            with trio.CancelScope(shield=True):
                failure: BaseException | None = None
                with trio.move_on_after(WRITE_TIMEOUT_S) as timer:
                    try:
                        await self.secured_conn.write(data)
                    except Exception as exc:  # any failure of the secure channel ends this connection, never the host
                        failure = exc
                if timer.cancelled_caught:
                    failure = TimeoutError(f"a {len(data)}-byte write took over {WRITE_TIMEOUT_S} s")
                if failure is not None:
                    await self._shut_down(f"write failed: {failure!r}")
                    raise MuxedStreamReset(f"yamux connection to {self.peer_id} failed: {failure!r}") from failure

    def _queue_control(self, frame: bytes) -> None:
        """A reply the peer's frame asks for; too many owed means the peer floods us and does not read."""
        if len(self._control) >= MAX_CONTROL_BACKLOG:
            raise YamuxProtocolError(f"more than {MAX_CONTROL_BACKLOG} control replies owed: the peer does not read")
        self._owe(frame)

    def _owe(self, frame: bytes) -> None:
        """A control frame for the writer task (or the next data write) to send; never waits."""
        self._control.append(frame)
        self.control_bytes += len(frame)
        self._control_ready.set()

    def _take_control(self, room: int) -> bytes:
        """The control frames owed, oldest first, as many as fit in ``room`` bytes."""
        taken: list[bytes] = []
        while self._control and len(self._control[0]) <= room:
            frame = self._control.popleft()
            taken.append(frame)
            room -= len(frame)
            self.control_bytes -= len(frame)
        return b"".join(taken)

    async def _write_control(self) -> None:
        """ACKs, pongs and resets of refused streams, written off the read loop (which must never block)."""
        while True:
            await self._control_ready.wait()
            self._control_ready = trio.Event()
            while self._control:
                try:
                    await self._send_frames()  # carries what is owed, unless a data write took it first
                except MuxedStreamError:
                    return  # the reader sees the connection end too

    async def _send_go_away(self, code: int) -> None:
        if self._closing:
            return
        # shielded (a closing host is being cancelled), bounded (a peer that stopped reading blocks the write)
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S), contextlib.suppress(MuxedStreamError):
            await self._send_frames(_frame(TYPE_GO_AWAY, 0, 0, code))

    # ------------------------------------------------------------ reading

    async def _read_frames(self) -> str:
        """Parse frames out of each decrypted message until the channel ends; answers why it ended."""
        pending = b""  # the start of a frame that continues in the next message
        while True:
            try:
                message = await self.secured_conn.read(None)
            except Exception as exc:  # any failure of the secure channel ends this connection, never the host
                return f"read failed: {exc!r}"
            if not message:
                return "the peer closed the connection"
            data = pending + message if pending else message
            offset = 0
            end = len(data)
            while end - offset >= HEADER_BYTES:
                version, kind, flags, stream_id, length = _HEADER.unpack_from(data, offset)
                if version != VERSION:
                    raise YamuxProtocolError(f"frame version {version}")
                if kind == TYPE_DATA:
                    if length > RECEIVE_WINDOW:
                        raise YamuxProtocolError(f"a {length}-byte data frame exceeds any window we give")
                    if end - offset - HEADER_BYTES < length:
                        break  # the payload continues in the next message
                    start = offset + HEADER_BYTES
                    payload = data[start : start + length]
                    offset = start + length
                else:
                    payload = b""
                    offset += HEADER_BYTES
                self._on_frame(kind, flags, stream_id, length, payload)
            pending = data[offset:] if offset < end else b""

    def _on_frame(self, kind: int, flags: int, stream_id: int, length: int, payload: bytes) -> None:
        if kind == TYPE_PING:
            if flags & FLAG_SYN:
                self._queue_control(_frame(TYPE_PING, FLAG_ACK, 0, length))
            return  # a pong: we send no pings
        if kind == TYPE_GO_AWAY:
            self._going_away = True
            return
        if kind not in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            raise YamuxProtocolError(f"unknown frame type {kind}")
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            if stream is not None or stream_id == 0:
                raise YamuxProtocolError(f"SYN for stream {stream_id}, which is already open")
            stream = self._inbound(stream_id)
            if stream is None:
                return
        if stream is None:
            return  # a stream we reset or forgot: its late frames are dropped (the spec allows it)
        if kind == TYPE_DATA:
            stream._on_data(payload)
        else:
            stream._on_window(length)
        if flags & FLAG_RST:
            stream._mark_reset()
        elif flags & FLAG_FIN:
            stream._on_fin()
            self._forget_if_done(stream)

    def _inbound(self, stream_id: int) -> YamuxStream | None:
        """A stream the peer opened, handed to the host; a refused one is reset and answered None."""
        if (stream_id % 2 == 1) == self._initiator:
            raise YamuxProtocolError(f"the peer opened stream {stream_id}, an id of ours")
        if self._closing or self._going_away or len(self._streams) >= MAX_STREAMS:
            self._queue_control(_frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
            return None
        stream = YamuxStream(self, stream_id, opened_here=False)
        try:
            self._accept_send.send_nowait(stream)
        except trio.WouldBlock:
            self._queue_control(_frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
            return None
        self._streams[stream_id] = stream
        stream._recv_window = RECEIVE_WINDOW
        self._queue_control(
            _frame(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, 0)
            + _frame(TYPE_WINDOW_UPDATE, 0, stream_id, RECEIVE_WINDOW - INITIAL_WINDOW)
        )
        return stream

    # ------------------------------------------------------------ bookkeeping

    def _forget(self, stream: YamuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]

    def _forget_if_done(self, stream: YamuxStream) -> None:
        if stream._done:
            self._forget(stream)

    async def _shut_down(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        log.debug("yamux with %s ends: %s", self.peer_id, reason)
        for stream in list(self._streams.values()):
            stream._mark_reset()
        self._accept_send.close()
        try:
            await self.secured_conn.close()
        except Exception as exc:  # closing a channel that already failed: nothing left to do
            log.debug("closing the channel to %s: %r", self.peer_id, exc)
        self.event_closed.set()
        if self.on_close is not None:
            with trio.move_on_after(CLOSE_GRACE_S):
                await self.on_close()


__all__ = ["PROTOCOL_ID", "YamuxConnection", "YamuxProtocolError", "YamuxStream"]
