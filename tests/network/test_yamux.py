"""lpnode's yamux (``node/network/_yamux.py``) frame by frame.

The connection runs over an in-memory message channel standing in for Noise (the
muxer sees only ``read(None)`` -> one message, ``write``, ``close``), so a test can
play a raw peer and send frames no well-behaved implementation would. Interop with
py-libp2p's yamux over real Noise and TCP is in ``test_libp2p_specific.py``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing
from libp2p.abc import ISecureConn
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamEOF, MuxedStreamReset
from lpnode.node.network._yamux import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
    INITIAL_WINDOW,
    MAX_MESSAGE_BYTES,
    MAX_PENDING_ACCEPT,
    RECEIVE_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YamuxConnection,
    YamuxStream,
)

_HEADER = struct.Struct(">BBHII")
PEER = ID(b"\x00\x24\x08\x01\x12\x20" + bytes(32))


def frame(kind: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(0, kind, flags, stream_id, length) + payload


def frames(message: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(type, flags, stream id, length, payload) of every frame in one message."""
    out = []
    offset = 0
    while offset < len(message):
        _, kind, flags, stream_id, length = _HEADER.unpack_from(message, offset)
        offset += 12
        payload = message[offset : offset + length] if kind == TYPE_DATA else b""
        offset += len(payload)
        out.append((kind, flags, stream_id, length, payload))
    return out


class Channel:
    """One end of a message channel: what the muxer needs of a secure connection."""

    def __init__(self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes], initiator: bool):
        self._send = send
        self._receive = receive
        self.is_initiator = initiator
        self.closed = False
        self.gate: trio.Event | None = None  # when set: writes wait for it (a peer that stopped reading)

    async def write(self, data: bytes) -> None:
        assert len(data) <= MAX_MESSAGE_BYTES, f"{len(data)} bytes do not fit one Noise message"
        if self.gate is not None:
            await self.gate.wait()
        await self._send.send(bytes(data))

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def close(self) -> None:
        self.closed = True
        await self._send.aclose()
        await self._receive.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 1)

    def get_transport_addresses(self) -> list[Any]:
        return []

    def get_connection_type(self) -> Any:
        return None


def channel_pair() -> tuple[Channel, Channel]:
    a_send, b_receive = trio.open_memory_channel[bytes](1000)
    b_send, a_receive = trio.open_memory_channel[bytes](1000)
    return Channel(a_send, a_receive, True), Channel(b_send, b_receive, False)


@asynccontextmanager
async def connection(channel: Channel) -> AsyncIterator[YamuxConnection]:
    conn = YamuxConnection(cast(ISecureConn, channel), PEER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.start)
        await conn.event_started.wait()
        yield conn
        await conn.close()


@asynccontextmanager
async def two_ends() -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    left, right = channel_pair()
    async with connection(left) as a, connection(right) as b:
        yield a, b


@asynccontextmanager
async def against_raw_peer() -> AsyncIterator[tuple[YamuxConnection, Channel]]:
    """Our connection (the listener: it opens even ids) and the raw channel end a test speaks frames on."""
    ours, raw = channel_pair()
    ours.is_initiator = False
    async with connection(ours) as conn:
        yield conn, raw


async def opened_by_raw_peer(conn: YamuxConnection, raw: Channel, kind: int = TYPE_WINDOW_UPDATE) -> YamuxStream:
    """Stream 1, opened by the raw peer with a SYN on a ``kind`` frame and accepted by us; our ACK and
    window increase already read off the raw end."""
    await raw.write(frame(kind, FLAG_SYN, 1, 0))
    stream = await conn.accept_stream()
    await raw.read()
    return stream


async def test_a_stream_carries_bytes_both_ways_and_half_closes() -> None:
    with trio.fail_after(5):
        async with two_ends() as (a, b):
            opened = await a.open_stream()
            await opened.write(b"ping")
            await opened.close()
            accepted = await b.accept_stream()
            assert await accepted.read() == b"ping"
            with pytest.raises(MuxedStreamEOF):
                await accepted.read()
            await accepted.write(b"pong")  # half-closed by the opener: the other way is still open
            await accepted.close()
            assert await opened.read() == b"pong"
            with pytest.raises(MuxedStreamEOF):
                await opened.read()
            assert not a._streams and not b._streams  # both FINs seen: forgotten on both ends


async def test_the_first_write_carries_the_syn_our_window_and_the_data_in_one_message() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            stream = await conn.open_stream()
            await trio.testing.wait_all_tasks_blocked()
            assert raw._receive.statistics().current_buffer_used == 0  # opening alone sends nothing
            await stream.write(b"hello")
            assert frames(await raw.read()) == [
                (TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, b""),
                (TYPE_WINDOW_UPDATE, 0, 2, RECEIVE_WINDOW - INITIAL_WINDOW, b""),
                (TYPE_DATA, 0, 2, 5, b"hello"),
            ]


async def test_an_accepted_stream_is_acked_and_given_our_window() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            await raw.write(frame(TYPE_DATA, FLAG_SYN, 1, 3, b"abc"))
            stream = await conn.accept_stream()
            assert frames(await raw.read()) == [
                (TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0, b""),
                (TYPE_WINDOW_UPDATE, 0, 1, RECEIVE_WINDOW - INITIAL_WINDOW, b""),
            ]
            assert await stream.read() == b"abc"


async def test_a_writer_out_of_window_waits_for_credit_and_then_finishes() -> None:
    payload = bytes(range(256)) * (3 * RECEIVE_WINDOW // 256)
    with trio.fail_after(10):
        async with two_ends() as (a, b):
            opened = await a.open_stream()
            done = trio.Event()

            async def write_all() -> None:
                await opened.write(payload)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_all)
                accepted = await b.accept_stream()
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set() and opened._send_window == 0  # one window sent, then waiting
                assert accepted._buffered == RECEIVE_WINDOW
                received = bytearray()
                while len(received) < len(payload):
                    received.extend(await accepted.read(100_000))
            assert done.is_set() and bytes(received) == payload


async def test_credit_goes_out_once_half_the_window_is_read_not_per_read() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            stream = await opened_by_raw_peer(conn, raw)
            chunk = bytes(60_000)
            for _ in range(9):  # 540,000 bytes: past half of 1 MiB on the ninth
                await raw.write(frame(TYPE_DATA, 0, 1, len(chunk), chunk))
            for _ in range(8):
                assert len(await stream.read(len(chunk))) == len(chunk)
            await trio.testing.wait_all_tasks_blocked()
            assert raw._receive.statistics().current_buffer_used == 0  # 480,000 read: no update yet
            await stream.read(len(chunk))
            assert frames(await raw.read()) == [(TYPE_WINDOW_UPDATE, 0, 1, 540_000, b"")]


async def test_data_past_the_window_ends_the_connection_with_a_protocol_error() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            stream = await opened_by_raw_peer(conn, raw, TYPE_DATA)
            big = bytes(60_000)
            for _ in range(RECEIVE_WINDOW // len(big) + 1):
                await raw.write(frame(TYPE_DATA, 0, 1, len(big), big))
            assert frames(await raw.read()) == [(TYPE_GO_AWAY, 0, 0, 1, b"")]
            await conn.event_closed.wait()
            assert stream._reset
            with pytest.raises(MuxedConnUnavailable):
                await conn.accept_stream()


@pytest.mark.parametrize(
    "bad",
    [
        _HEADER.pack(1, TYPE_DATA, 0, 1, 0),  # version 1
        frame(7, 0, 1, 0),  # no such type
        frame(TYPE_DATA, FLAG_SYN, 2, 0),  # the peer opening an id of ours (even: we listen)
        frame(TYPE_DATA, 0, 1, RECEIVE_WINDOW + 1),  # a frame larger than any window, announced
    ],
    ids=["version", "type", "our-id", "oversized"],
)
async def test_garbage_frames_end_the_connection(bad: bytes) -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            await raw.write(bad)
            assert frames(await raw.read()) == [(TYPE_GO_AWAY, 0, 0, 1, b"")]
            await conn.event_closed.wait()


async def test_a_ping_is_answered_with_its_opaque_value() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (_, raw):
            await raw.write(frame(TYPE_PING, FLAG_SYN, 0, 0xBEEF))
            assert frames(await raw.read()) == [(TYPE_PING, FLAG_ACK, 0, 0xBEEF, b"")]


async def test_streams_the_host_has_not_taken_are_bounded_the_rest_reset() -> None:
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            for n in range(MAX_PENDING_ACCEPT + 1):
                await raw.write(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * n + 1, 0))
            replies = []
            while len(replies) < MAX_PENDING_ACCEPT * 2 + 1:
                replies.extend(frames(await raw.read()))
            assert replies[-1] == (TYPE_WINDOW_UPDATE, FLAG_RST, 2 * MAX_PENDING_ACCEPT + 1, 0, b"")
            assert sum(flags == FLAG_ACK for _, flags, *_ in replies) == MAX_PENDING_ACCEPT
            assert len(conn._streams) == MAX_PENDING_ACCEPT


async def test_a_reset_reaches_the_other_end_and_a_blocked_writer() -> None:
    with trio.fail_after(5):
        async with two_ends() as (a, b):
            opened = await a.open_stream()
            await opened.write(b"x")
            accepted = await b.accept_stream()
            assert await accepted.read() == b"x"
            async with trio.open_nursery() as nursery:

                async def write_forever() -> None:
                    with pytest.raises(MuxedStreamReset):
                        await accepted.write(bytes(3 * RECEIVE_WINDOW))  # blocks once its window is spent

                nursery.start_soon(write_forever)
                await trio.testing.wait_all_tasks_blocked()
                await opened.reset()
            with pytest.raises(MuxedStreamReset):
                await accepted.read()
            assert not a._streams and not b._streams


async def test_closing_the_connection_resets_its_streams_and_tells_the_swarm() -> None:
    told = trio.Event()

    async def on_close() -> None:
        told.set()

    with trio.fail_after(5):
        async with two_ends() as (a, b):
            a.on_close = on_close
            opened = await a.open_stream()
            await opened.write(b"x")
            accepted = await b.accept_stream()
            await a.close()
            await told.wait()
            await b.event_closed.wait()  # the peer saw the GO_AWAY and the channel close
            with pytest.raises(MuxedStreamReset):
                await opened.read()
            assert await accepted.read() == b"x"  # what had arrived is still read
            with pytest.raises(MuxedStreamReset):
                await accepted.read()
            with pytest.raises(MuxedConnUnavailable):
                await a.open_stream()


async def test_a_cancelled_writer_still_finishes_the_message_it_started() -> None:
    """A Noise message cut off halfway would kill every stream of the connection: the write runs to its end."""
    left, right = channel_pair()
    with trio.fail_after(5):
        async with connection(left) as a, connection(right) as b:
            opened = await a.open_stream()
            await opened.write(b"first")
            accepted = await b.accept_stream()
            assert await accepted.read() == b"first"
            left.gate = trio.Event()
            writer = trio.CancelScope()

            async def write_second() -> None:
                with writer:
                    await opened.write(b"second")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_second)
                await trio.testing.wait_all_tasks_blocked()
                writer.cancel()  # the writer is inside its write: the cancel waits for it
                await trio.testing.wait_all_tasks_blocked()
                left.gate.set()
            assert await accepted.read() == b"second"  # whole: the cancel did not cut the message
            left.gate = None
            await opened.write(b"third")  # the connection is whole
            assert await accepted.read() == b"third"


async def test_a_peer_that_stops_reading_loses_the_connection_not_the_writer(autojump_clock: object) -> None:
    from lpnode.node.network._yamux import WRITE_TIMEOUT_S

    left, right = channel_pair()
    async with connection(left) as a, connection(right) as b:
        opened = await a.open_stream()
        await opened.write(b"x")
        await b.accept_stream()
        left.gate = trio.Event()  # never set
        started = trio.current_time()
        with pytest.raises(MuxedStreamReset):
            await opened.write(b"y")
        assert trio.current_time() - started >= WRITE_TIMEOUT_S
        assert a.is_closed and left.closed


async def test_an_accepted_streams_ack_goes_out_before_its_first_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ACK is queued for the control writer; a write on the stream carries what is owed first
    (here the control writer never gets a turn, so only the write can have sent it)."""

    async def idle(self: YamuxConnection) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(YamuxConnection, "_write_control", idle)
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            await raw.write(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
            stream = await conn.accept_stream()
            await stream.write(b"at once")  # before the control writer has had a turn
            seen: list[tuple[int, int, int, int, bytes]] = []
            while not any(kind == TYPE_DATA for kind, *_ in seen):
                seen.extend(frames(await raw.read()))
            assert seen == [
                (TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0, b""),
                (TYPE_WINDOW_UPDATE, 0, 1, RECEIVE_WINDOW - INITIAL_WINDOW, b""),
                (TYPE_DATA, 0, 1, 7, b"at once"),
            ]


async def test_a_write_cancelled_before_its_turn_leaves_the_stream_as_it_was() -> None:
    """Cancelled while another stream's write held the connection: nothing of it went out, so its SYN is
    still owed and its send window whole, and the stream works afterwards."""
    left, right = channel_pair()
    with trio.fail_after(5):
        async with connection(left) as a, connection(right) as b:
            busy = await a.open_stream()
            await busy.write(b"warm")
            await b.accept_stream()
            left.gate = trio.Event()  # the next message waits inside its (uncancellable) write
            fresh = await a.open_stream()
            waiting = trio.CancelScope()

            async def write_fresh() -> None:
                with waiting:
                    await fresh.write(b"first words")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy.write, b"holds the connection")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(write_fresh)
                await trio.testing.wait_all_tasks_blocked()
                waiting.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert waiting.cancelled_caught
                assert fresh._syn_pending and fresh._send_window == INITIAL_WINDOW
                left.gate.set()
            left.gate = None
            await fresh.write(b"first words")
            accepted = await b.accept_stream()
            while (got := await accepted.read()) == b"holds the connection":
                accepted = await b.accept_stream()
            assert got == b"first words"


async def test_credit_is_owed_not_awaited_so_a_read_never_loses_bytes() -> None:
    """The window update for what a read took goes to the control writer; the read returns at once,
    even while the connection's writer is stuck (a read's timeout can never strike between the two)."""
    with trio.fail_after(5):
        async with against_raw_peer() as (conn, raw):
            stream = await opened_by_raw_peer(conn, raw)
            big = bytes(60_000)
            for _ in range(9):
                await raw.write(frame(TYPE_DATA, 0, 1, len(big), big))
            ours = conn.secured_conn
            ours.gate = trio.Event()  # type: ignore[attr-defined]  # every write of ours now waits
            taken = 0
            while taken < 9 * len(big):
                taken += len(await stream.read(len(big)))  # never waits on the stuck writer
            ours.gate.set()  # type: ignore[attr-defined]
            assert frames(await raw.read()) == [(TYPE_WINDOW_UPDATE, 0, 1, 540_000, b"")]
