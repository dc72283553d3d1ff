"""Length-prefixed frames: round trips, refusals and failures on both backends; timeouts in virtual time."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated

import pytest
import trio
import trio.testing
from lpnode.node.framing import HARD_MAX_FRAME_BYTES, FramedStream, FrameKind, FramingConfig
from lpnode.protocol.codec import Bound, message
from lpnode.protocol.errors import (
    FrameTooLarge,
    FrameTruncated,
    MalformedMessage,
    StreamBroken,
    StreamClosed,
    StreamTimeout,
)

from tests.network.conftest import GroupOpener, _memory_group

from .stream_pairs import reset_stream, stream_pair

DEADLINE = 20  # seconds: a hang fails the test instead of stalling the run
MiB = 1024 * 1024


@message("test_framing_note", max_bytes=200)
@dataclass(frozen=True)
class Note:
    text: Annotated[str, Bound(max_len=150)]


@message("test_framing_other", max_bytes=100)
@dataclass(frozen=True)
class Other:
    n: int


def header(kind: int, length: int) -> bytes:
    return struct.pack(">BI", kind, length)


async def test_frames_round_trip(open_group: GroupOpener) -> None:
    bodies = [b"", b"x", bytes(range(256)) * 4096, b"y" * MiB, *(b"%d" % i * (i % 50) for i in range(500))]
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            sender, receiver = FramedStream(a), FramedStream(b)

            async def send_all_frames() -> None:
                for i, body in enumerate(bodies):
                    await sender.send_frame(body, FrameKind.DATA if i % 2 else FrameKind.MESSAGE)

            nursery.start_soon(send_all_frames)
            for i, body in enumerate(bodies):
                kind, got = await receiver.receive_any_frame(MiB)  # MiB: "y" * MiB is exactly the max
                assert (kind, got) == (FrameKind.DATA if i % 2 else FrameKind.MESSAGE, body)


async def test_messages_round_trip_and_a_bad_body_keeps_the_stream_framed(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender, receiver = FramedStream(a), FramedStream(b)
            await sender.send_message(Note("hello"))
            assert await receiver.receive_message(Note) == Note("hello")
            await sender.send_message(Other(7))
            assert await receiver.receive_one_of(Note, Other) == Other(7)
            await sender.send_message(Other(8))
            with pytest.raises(MalformedMessage, match="expected a test_framing_note"):
                await receiver.receive_message(Note)
            await sender.send_frame(b"\xc1 not msgpack")
            with pytest.raises(MalformedMessage, match=r"not a msgpack frame: FormatError \(13 bytes\)"):
                await receiver.receive_one_of(Note)
            await sender.send_frame(b"raw", FrameKind.DATA)
            with pytest.raises(MalformedMessage, match="expected a MESSAGE frame"):
                await receiver.receive_message(Note)
            # whole frames were read each time: the stream is still usable
            await sender.send_message(Note("still here"))
            assert await receiver.receive_message(Note) == Note("still here")
            assert receiver.broken is None


async def test_oversized_frame_is_refused_before_its_body_is_read(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            # 16 MiB announced, 10 bytes sent: reading the body would hang until the deadline
            await a.send_all(header(FrameKind.DATA, HARD_MAX_FRAME_BYTES) + b"0123456789")
            receiver = FramedStream(b)
            with pytest.raises(FrameTooLarge) as caught:
                await receiver.receive_frame(1000, FrameKind.DATA)
            assert (caught.value.announced, caught.value.limit) == (HARD_MAX_FRAME_BYTES, 1000)
            assert receiver.broken is not None and "FrameTooLarge" in receiver.broken
            with pytest.raises(StreamBroken, match="FrameTooLarge"):
                await receiver.receive_frame(1000)
            assert await a.receive_some(10) == b""  # the sender sees the reset as end of stream


async def test_one_byte_over_the_limit_is_refused(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            await FramedStream(a).send_frame(b"x" * 101)
            with pytest.raises(FrameTooLarge):
                await FramedStream(b).receive_frame(100)


@pytest.mark.parametrize("garbage", [b"\x00" * 5, b"\xde\xad\xbe\xef\x01", b"GET / HTTP/1.1\r\n\r\n"])
async def test_garbage_header_is_refused_and_resets(open_group: GroupOpener, garbage: bytes) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            await a.send_all(garbage)
            receiver = FramedStream(b)
            with pytest.raises(MalformedMessage, match="not a frame header"):
                await receiver.receive_frame(MiB)
            with pytest.raises(StreamBroken):
                await receiver.receive_frame(MiB)
            assert await a.receive_some(10) == b""


async def test_peer_closing_mid_frame_reads_as_truncated(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            await a.send_all(header(FrameKind.MESSAGE, 1000) + b"x" * 400)
            await a.aclose()
            receiver = FramedStream(b)
            with pytest.raises(FrameTruncated, match="600 bytes short of a 1000-byte frame body") as caught:
                await receiver.receive_frame(MiB)
            assert (caught.value.expected, caught.value.missing) == (1000, 600)
            assert isinstance(caught.value, StreamClosed)
            with pytest.raises(StreamBroken):
                await receiver.receive_frame(MiB)


async def test_peer_closing_inside_the_header_reads_as_truncated(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            await a.send_all(b"\x01\x00")
            await a.aclose()
            with pytest.raises(FrameTruncated, match="3 bytes short of a 5-byte frame header"):
                await FramedStream(b).receive_frame(MiB)


async def test_peer_vanishing_mid_frame_is_stream_closed(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            await a.send_all(header(FrameKind.MESSAGE, 1000) + b"x" * 400)
            await reset_stream(a)
            # a reset may drop bytes in flight: the frame is truncated or never started
            with pytest.raises(StreamClosed):
                await FramedStream(b).receive_frame(MiB)


async def test_clean_end_between_frames_is_stream_closed_not_truncated(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender = FramedStream(a)
            await sender.send_frame(b"last")
            await sender.aclose()
            await sender.aclose()  # idempotent
            receiver = FramedStream(b)
            assert await receiver.receive_frame(10) == b"last"
            with pytest.raises(StreamClosed) as caught:
                await receiver.receive_frame(10)
            assert not isinstance(caught.value, FrameTruncated)
            with pytest.raises(StreamBroken, match="closed locally"):
                await sender.send_frame(b"more")


async def test_send_limits_are_local_errors(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, _):
            framed = FramedStream(a)
            with pytest.raises(ValueError, match="at most"):
                await framed.send_frame(bytes(HARD_MAX_FRAME_BYTES + 1))
            with pytest.raises(ValueError, match="max_bytes"):
                await framed.receive_frame(HARD_MAX_FRAME_BYTES + 1)
            assert framed.broken is None


async def test_slow_loris_on_libp2p_hits_the_frame_timeout() -> None:
    from tests.network.conftest import _libp2p_group

    config = FramingConfig(frame_timeout_s=0.3)
    with trio.fail_after(DEADLINE):
        async with stream_pair(_libp2p_group) as (a, b):
            await a.send_all(header(FrameKind.MESSAGE, 100) + b"x")
            with pytest.raises(StreamTimeout, match=r"did not complete within 0\.3 s"):
                await FramedStream(b, config).receive_frame(MiB)


# ------------------------------------------------ virtual time (memory backend)


async def test_slow_loris_hits_the_frame_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b):
        await a.send_all(header(FrameKind.MESSAGE, 100) + b"x")
        receiver = FramedStream(b, FramingConfig(frame_timeout_s=30))
        start = trio.current_time()
        with pytest.raises(StreamTimeout, match="did not complete within 30"):
            await receiver.receive_frame(MiB, timeout_s=3600)  # the wait for a first byte does not apply
        assert trio.current_time() - start == pytest.approx(30)
        with pytest.raises(StreamBroken, match="did not complete"):
            await receiver.receive_frame(MiB)
        assert await a.receive_some(10) == b""


async def test_a_trickle_is_cut_off_by_the_frame_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b), trio.open_nursery() as nursery:

        async def trickle() -> None:
            await a.send_all(header(FrameKind.MESSAGE, 1000))
            for _ in range(1000):
                await trio.sleep(1)  # one byte a second: each read succeeds, the frame never ends
                await a.send_all(b"x")

        nursery.start_soon(trickle)
        start = trio.current_time()
        with pytest.raises(StreamTimeout):
            await FramedStream(b, FramingConfig(frame_timeout_s=10)).receive_frame(MiB)
        assert trio.current_time() - start == pytest.approx(10)
        nursery.cancel_scope.cancel()


async def test_idle_timeout_before_a_frame_leaves_the_stream_usable(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b):
        receiver = FramedStream(b, FramingConfig(idle_timeout_s=5))
        start = trio.current_time()
        with pytest.raises(StreamTimeout, match="no frame arrived within 5"):
            await receiver.receive_frame(100)
        assert trio.current_time() - start == pytest.approx(5)
        with pytest.raises(StreamTimeout, match="within 60"):
            await receiver.receive_frame(100, timeout_s=60)
        with trio.move_on_after(1):  # a caller's own cancellation between frames
            await receiver.receive_frame(100)
        assert receiver.broken is None
        await FramedStream(a).send_frame(b"late")
        assert await receiver.receive_frame(100) == b"late"


async def test_cancelled_mid_frame_leaves_the_stream_broken(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b):
        await a.send_all(header(FrameKind.MESSAGE, 100) + b"half")
        receiver = FramedStream(b)
        with trio.move_on_after(1):
            await receiver.receive_frame(MiB)
        assert receiver.broken is not None and "Cancelled" in receiver.broken
        with pytest.raises(StreamBroken):
            await receiver.receive_frame(MiB)
        assert await a.receive_some(10) == b""


async def test_peer_not_reading_hits_the_write_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, _):
        sender = FramedStream(a, FramingConfig(write_timeout_s=7))
        start = trio.current_time()
        with pytest.raises(StreamTimeout, match="took over 7"):
            for _ in range(64):  # fills the peer's window, then blocks
                await sender.send_frame(b"x" * MiB)
        assert trio.current_time() - start == pytest.approx(7)
        with pytest.raises(StreamBroken):
            await sender.send_frame(b"")


async def test_cancelled_send_leaves_the_stream_broken(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b):
        sender = FramedStream(a)
        with trio.move_on_after(1):
            for _ in range(64):
                await sender.send_frame(b"x" * MiB)
        assert sender.broken is not None
        with pytest.raises(StreamBroken):
            await sender.send_frame(b"")
        receiver = FramedStream(b)
        with pytest.raises(StreamClosed):  # the frames that got through, then the reset
            while True:
                await receiver.receive_frame(MiB)


def test_config_rejects_non_positive_timeouts() -> None:
    with pytest.raises(ValueError, match="frame_timeout_s"):
        FramingConfig(frame_timeout_s=0)


async def test_a_send_the_peer_cut_off_leaves_what_it_said_first_readable(open_group: GroupOpener) -> None:
    """The peer says why, then resets under our (large) send: the send fails, and the word is still read
    (a worker that stops, or bounds an upload, tells the requester it cut off)."""
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender, peer = FramedStream(a), FramedStream(b)
            await peer.send_message(Note("stopping: no more of that upload"))
            await peer.abort("refused the upload")
            with pytest.raises(StreamClosed):
                for _ in range(64):  # past any window: the reset is seen by then
                    await sender.send_frame(b"x" * MiB)
            assert sender.broken is None and sender.send_broken is not None
            assert await sender.receive_message(Note) == Note("stopping: no more of that upload")
            with pytest.raises(StreamClosed):  # then the end
                await sender.receive_frame(MiB)
            with pytest.raises(StreamBroken):
                await sender.send_frame(b"")
