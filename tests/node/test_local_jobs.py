"""The in-process stream of the allow_local path keeps the ByteStream semantics the backends keep.

Pure trio, no model pool: these run under the autojump MockClock in virtual time.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from lpnode.node.local_jobs import LocalStream, local_stream_pair
from lpnode.node.network.base import ByteStream
from lpnode.protocol.errors import StreamClosed

PEER = "12D3KooWlocal"


async def receive_all(stream: LocalStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(1000):
        data += chunk
    return bytes(data)


def test_both_ends_are_byte_streams_naming_this_node() -> None:
    a, b = local_stream_pair(PEER, "/lpnode/job/1")
    assert isinstance(a, ByteStream) and isinstance(b, ByteStream)
    assert a.remote_peer == b.remote_peer == PEER and a.protocol_id == "/lpnode/job/1"
    with pytest.raises(ValueError, match="window"):
        local_stream_pair(PEER, "p", window=0)


async def test_bytes_arrive_in_order_then_end_of_stream_after_close(autojump_clock: trio.testing.MockClock) -> None:
    a, b = local_stream_pair(PEER, "p", window=64)
    payload = bytes(range(256)) * 40  # many windows' worth: the writer waits for the reader
    got = b""
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            await a.send_all(payload)
            await a.aclose()

        nursery.start_soon(write)
        got = await receive_all(b)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert await b.receive_some() == b""  # and on every later read
    await a.aclose()  # idempotent


async def test_the_window_bounds_what_is_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    a, b = local_stream_pair(PEER, "p", window=100)
    with trio.move_on_after(1) as stalled:
        await a.send_all(b"x" * 250)  # nobody reads: blocks once 100 bytes wait
    assert stalled.cancelled_caught
    assert await b.receive_some(1000) == b"x" * 100


async def test_writing_to_a_closed_end_fails_and_wakes_a_blocked_writer(autojump_clock: trio.testing.MockClock) -> None:
    a, b = local_stream_pair(PEER, "p", window=10)
    failed = trio.Event()

    async def write() -> None:
        with pytest.raises(StreamClosed):
            await a.send_all(b"y" * 100)  # blocks on the window, then the reader leaves
        failed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        await b.aclose()
        await failed.wait()
    with pytest.raises(StreamClosed):
        await a.send_all(b"z")
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()


async def test_a_cancelled_receive_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    a, b = local_stream_pair(PEER, "p")
    with trio.move_on_after(1):
        await b.receive_some()
    await a.send_all(b"kept")
    assert await b.receive_some() == b"kept"
