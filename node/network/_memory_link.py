"""Connections and byte streams of the in-memory network.

A stream is two one-way pipes. The sender stamps each chunk with the trio
time it arrives (link delay + jitter, after the bytes ahead of it have gone
through the link's bandwidth) and appends it; the reader waits until the head
chunk is due. So latency costs no task and no timer per chunk, order is kept,
and the sender is held back only by the window (bytes not yet read), which
is how TCP/yamux flow control behaves.

Partitions stall a connection instead of breaking it at once: bytes that
were due before the partition can still be read, later ones wait for
``heal()``; if the partition outlasts ``partition_timeout_s`` the hub closes
the connection and every stream on it is reset.
"""

from __future__ import annotations

import math
import random
from collections import deque

import trio
from lpnode.protocol.errors import StreamClosed

from .base import PeerId

_CHUNK_BYTES = 64 * 1024  # one chunk per yamux-frame-sized slice of a send_all


class Partitions:
    """Which peers can reach which; shared by the hub and every connection."""

    __slots__ = ("epoch", "group_of", "heal_lot", "since")

    def __init__(self) -> None:
        self.group_of: dict[PeerId, int] | None = None  # None: no partition
        self.since = math.inf  # trio time the current partition began
        self.epoch = 0  # bumped on every partition/heal, so stale timers do nothing
        # everyone stalled by a partition parks here; heal (and a connection
        # closing while partitioned) wakes them to look again
        self.heal_lot = trio.lowlevel.ParkingLot()

    def blocked(self, a: PeerId, b: PeerId) -> bool:
        groups = self.group_of
        # peers named in no group share one implicit group (-1)
        return groups is not None and groups.get(a, -1) != groups.get(b, -1)


class Pipe:
    """One direction of a stream: chunks in flight or waiting to be read."""

    __slots__ = ("buffered", "chunks", "last_due", "readable", "reader_gone", "reset", "tx_free_at", "writable")

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes | None]] = deque()  # (due time, data); b"" is the FIN, None a reset
        self.buffered = 0  # bytes sent and not yet read: what the window bounds
        self.reset = False
        self.reader_gone = False  # the reading side closed: further sends fail
        self.tx_free_at = -math.inf  # when the link finishes serialising what was sent before
        self.last_due = -math.inf  # keeps chunks in order despite per-message jitter
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()

    def kill(self) -> None:
        self.reset = True
        self.chunks.clear()
        self.buffered = 0
        self.readable.unpark_all()
        self.writable.unpark_all()

    def reset_after(self, due: float) -> None:
        """Its writer reset the stream: what it sent first still arrives (a yamux RST follows its data
        frames, and the reader keeps what it buffered), then the reader sees the end; no more writes."""
        self.reader_gone = True  # the writer's own further sends fail
        self.chunks.append((due, None))
        self.readable.unpark_all()
        self.writable.unpark_all()


class _StreamPair:
    __slots__ = ("ab", "ba", "open_ends")

    def __init__(self) -> None:
        self.ab = Pipe()
        self.ba = Pipe()
        self.open_ends = 2


class Connection:
    """The one connection between two peers, shared by both sides."""

    __slots__ = ("a", "b", "bandwidth", "closed", "delay_s", "jitter_s", "partitions", "rng", "streams")

    def __init__(
        self,
        a: PeerId,
        b: PeerId,
        *,
        delay_s: float,
        jitter_s: float,
        bandwidth: float | None,
        rng: random.Random,
        partitions: Partitions,
    ) -> None:
        self.a, self.b = a, b
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.bandwidth = bandwidth
        self.rng = rng  # the hub's: one seeded source for every per-message draw
        self.partitions = partitions
        self.streams: dict[_StreamPair, None] = {}  # dict, not set: deterministic order
        self.closed = False

    def one_way_delay(self) -> float:
        if self.jitter_s:
            return self.delay_s + self.rng.random() * self.jitter_s
        return self.delay_s

    def blocked(self) -> bool:
        return self.partitions.blocked(self.a, self.b)

    async def wait_passable(self) -> None:
        """Return once no partition cuts this connection, or it closed."""
        while not self.closed and self.blocked():
            await self.partitions.heal_lot.park()

    def stamp(self, pipe: Pipe, size: int, now: float) -> float:
        """The time a chunk of ``size`` bytes sent now on ``pipe`` reaches the reader."""
        start = max(now, pipe.tx_free_at)
        pipe.tx_free_at = start + size / self.bandwidth if self.bandwidth else start
        due = max(pipe.tx_free_at + self.one_way_delay(), pipe.last_due)
        pipe.last_due = due
        return due

    def open_stream_pair(
        self, dialer: PeerId, listener: PeerId, protocol_id: str, window: int
    ) -> tuple[MemoryStream, MemoryStream]:
        pair = _StreamPair()
        self.streams[pair] = None
        return (
            MemoryStream(self, pair, listener, protocol_id, send=pair.ab, recv=pair.ba, window=window),
            MemoryStream(self, pair, dialer, protocol_id, send=pair.ba, recv=pair.ab, window=window),
        )

    def close(self) -> None:
        """Drop the connection: every stream on it is reset, stalled waiters look again."""
        if self.closed:
            return
        self.closed = True
        for pair in self.streams:
            pair.ab.kill()
            pair.ba.kill()
        self.streams.clear()
        if self.partitions.group_of is not None:
            self.partitions.heal_lot.unpark_all()

    def forget(self, pair: _StreamPair) -> None:
        self.streams.pop(pair, None)


class MemoryStream:
    """One end of a stream; implements :class:`~lpnode.node.network.base.ByteStream`."""

    def __init__(
        self,
        conn: Connection,
        pair: _StreamPair,
        remote_peer: PeerId,
        protocol_id: str,
        *,
        send: Pipe,
        recv: Pipe,
        window: int,
    ) -> None:
        self._conn = conn
        self._pair = pair
        self._remote_peer = remote_peer
        self._protocol_id = protocol_id
        self._send = send
        self._recv = recv
        self._window = window
        self._closed = False
        self.bytes_sent = 0

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        pipe = self._send
        for start in range(0, max(len(data), 1), _CHUNK_BYTES):
            chunk = bytes(data[start : start + _CHUNK_BYTES])
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed locally")
                if pipe.reset or pipe.reader_gone:
                    raise StreamClosed(f"stream {self._protocol_id} to {self._remote_peer} is gone")
                # a chunk larger than the free window still goes once the pipe is empty
                if pipe.buffered == 0 or pipe.buffered + len(chunk) <= self._window:
                    break
                await pipe.writable.park()
            if not chunk:
                return
            pipe.chunks.append((self._conn.stamp(pipe, len(chunk), trio.current_time()), chunk))
            pipe.buffered += len(chunk)
            self.bytes_sent += len(chunk)
            pipe.readable.unpark_all()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await trio.lowlevel.checkpoint()
        pipe = self._recv
        conn = self._conn
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed locally")
            if pipe.reset:
                return b""  # reads as end of stream, as a libp2p reset does
            if not pipe.chunks:
                await pipe.readable.park()
                continue
            due, data = pipe.chunks[0]
            if due > trio.current_time():
                with trio.move_on_at(due):
                    await pipe.readable.park()  # woken early only by a reset
                continue
            if due >= conn.partitions.since and conn.blocked():
                await conn.wait_passable()  # arrived during the partition: stalls until heal
                continue
            if not data:
                return b""  # FIN or reset: left at the head so every later read sees it too
            if len(data) > max_bytes:
                pipe.chunks[0] = (due, data[max_bytes:])
                data = data[:max_bytes]
            else:
                pipe.chunks.popleft()
            pipe.buffered -= len(data)
            pipe.writable.unpark_all()
            return data

    async def aclose(self) -> None:
        """Send FIN after the data already sent and stop reading; idempotent."""
        if not self._closed:
            self._closed = True
            send, recv = self._send, self._recv
            if not (send.reset or send.reader_gone):
                send.chunks.append((self._conn.stamp(send, 0, trio.current_time()), b""))
                send.readable.unpark_all()
            # the remote's further writes fail (nobody will read them), as after a full close
            recv.reader_gone = True
            recv.chunks.clear()
            recv.buffered = 0
            recv.writable.unpark_all()
            recv.readable.unpark_all()
            self._pair.open_ends -= 1
            if self._pair.open_ends == 0:
                self._conn.forget(self._pair)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def reset(self) -> None:
        """Abort both directions at once: the remote's sends fail, and it reads what we sent before, then b""."""
        if not (self._send.reset or self._send.reader_gone):
            self._send.reset_after(self._conn.stamp(self._send, 0, trio.current_time()))
        self._recv.kill()
        self._conn.forget(self._pair)
