"""Chunked transfers: round trips and a 50 MB payload on both backends, refusals, corruption, timeouts."""

from __future__ import annotations

import hashlib
import random
from functools import partial

import pytest
import trio
import trio.testing
from lpnode.node.framing import READ_BYTES, FramedStream, FrameKind, FramingConfig
from lpnode.node.transfer import (
    DEFAULT_CHUNK_BYTES,
    TransferHeader,
    TransferLimits,
    receive_transfer,
    send_transfer,
)
from lpnode.protocol.codec import encode
from lpnode.protocol.errors import (
    FrameTooLarge,
    StreamBroken,
    StreamClosed,
    StreamTimeout,
    TransferCorrupt,
    TransferTooLarge,
)

from tests.network.conftest import GroupOpener, _memory_group

from .stream_pairs import BitFlipStream, CountingStream, stream_pair

DEADLINE = 60  # seconds; the 50 MB libp2p case takes ~1 s on a 2-core machine
MiB = 1024 * 1024
CHUNK = 16 * 1024  # small chunks in the edge-case tests: more chunk boundaries per byte


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def send_refused(framed: FramedStream, data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
    """Send a transfer the receiver refuses: the send fails, or its tail is buffered and then dropped."""
    try:
        await send_transfer(framed, data, "video/mp4", chunk_bytes=chunk_bytes)
    except StreamClosed:
        assert framed.send_broken is not None  # what the receiver sent before it refused is still readable


def make_header(data: bytes, chunk_bytes: int = CHUNK) -> TransferHeader:
    return TransferHeader(len(data), hashlib.sha256(data).digest(), "image/png", chunk_bytes)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
async def test_transfer_round_trips(open_group: GroupOpener, size: int) -> None:
    data = payload(size)
    seen: list[tuple[int, int]] = []
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            sender, receiver = FramedStream(a), FramedStream(b)
            nursery.start_soon(partial(send_transfer, sender, data, "image/png", chunk_bytes=CHUNK))
            got = await receive_transfer(receiver, progress=lambda done, total: seen.append((done, total)))
            assert got.data == data
            assert got.header == make_header(data)
            assert seen[0] == (0, size) and seen[-1] == (size, size)
            assert [done for done, _ in seen] == sorted({done for done, _ in seen})
            # the stream stays framed for what follows (the job's Result, say)
            await sender.send_frame(b"after")
            assert await receiver.receive_frame(10) == b"after"


async def test_50_megabytes_with_hash_check(open_group: GroupOpener, backend_name: str) -> None:
    data = payload(50 * 1000 * 1000)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            nursery.start_soon(send_transfer, FramedStream(a), data, "video/mp4")
            start = trio.current_time()
            got = await receive_transfer(FramedStream(b))
            elapsed = trio.current_time() - start
    assert got.header.sha256 == hashlib.sha256(data).digest() and got.data == data
    print(f"\n50 MB transfer on {backend_name}: {elapsed:.2f} s, {len(data) / elapsed / 1e6:.0f} MB/s")


async def test_sink_receives_every_chunk_in_order(open_group: GroupOpener) -> None:
    data = payload(5 * CHUNK + 3)
    kept = bytearray()

    async def sink(chunk: bytes) -> None:
        assert len(chunk) <= CHUNK
        kept.extend(chunk)

    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            nursery.start_soon(partial(send_transfer, FramedStream(a), data, "video/mp4", chunk_bytes=CHUNK))
            got = await receive_transfer(FramedStream(b), sink=sink)
    assert got.data == b"" and bytes(kept) == data


async def test_a_flipped_bit_is_detected(open_group: GroupOpener) -> None:
    data = payload(4 * CHUNK)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            header_frame = 5 + len(encode(make_header(data)))
            sender = FramedStream(BitFlipStream(a, at=header_frame + 2 * (5 + CHUNK) + 100))  # inside chunk 2
            nursery.start_soon(partial(send_transfer, sender, data, "image/png", chunk_bytes=CHUNK))
            receiver = FramedStream(b)
            with pytest.raises(TransferCorrupt, match="hashes to"):
                await receive_transfer(receiver)
            # the transfer was whole, so the receiver can still say so on the stream
            await receiver.send_frame(b"corrupt")
            assert await sender.receive_frame(10) == b"corrupt"


async def test_announced_length_above_the_limit_is_refused_before_any_chunk(open_group: GroupOpener) -> None:
    data = payload(4 * MiB)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            sender = FramedStream(a)

            async def send_and_fail() -> None:
                with pytest.raises(StreamClosed):  # the receiver reset the stream
                    await send_transfer(sender, data, "video/mp4")

            nursery.start_soon(send_and_fail)
            counted = CountingStream(b)
            receiver = FramedStream(counted)
            with pytest.raises(TransferTooLarge) as caught:
                await receive_transfer(receiver, TransferLimits(max_total_bytes=MiB))
            assert (caught.value.announced, caught.value.limit) == (4 * MiB, MiB)
            assert counted.received <= READ_BYTES  # the header and read-ahead, never a whole chunk
            with pytest.raises(StreamBroken, match="TransferTooLarge"):
                await receiver.receive_frame(10)


async def test_chunk_size_above_the_limit_is_refused(open_group: GroupOpener) -> None:
    data = payload(3 * MiB)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:

            async def send_and_fail() -> None:
                with pytest.raises(StreamClosed):
                    await send_transfer(FramedStream(a), data, "video/mp4", chunk_bytes=2 * MiB)

            nursery.start_soon(send_and_fail)
            with pytest.raises(FrameTooLarge):
                await receive_transfer(FramedStream(b))  # default limit: 1 MiB chunks


async def test_expected_hash_is_checked_against_the_header(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b), trio.open_nursery() as nursery:
            nursery.start_soon(send_refused, FramedStream(a), b"the real output")
            with pytest.raises(TransferCorrupt, match="is not the expected"):
                await receive_transfer(FramedStream(b), expected_sha256=hashlib.sha256(b"promised").digest())


@pytest.mark.parametrize(
    ("chunks", "error"),
    [
        ([b"a" * CHUNK, b"b" * 10, b"c" * (CHUNK - 10)], "chunk at offset 16384 is 10 bytes"),  # short chunk
        ([b"a" * CHUNK, b"b" * CHUNK, b"extra"], "more than the 32768 bytes"),  # no end mark: more data
        ([b"a" * CHUNK, b"", b"b" * CHUNK], "chunk at offset 16384 is 0 bytes"),  # early end mark
    ],
)
async def test_chunks_that_break_the_announced_shape_are_corrupt(
    open_group: GroupOpener, chunks: list[bytes], error: str
) -> None:
    data = b"a" * CHUNK + b"b" * CHUNK
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender = FramedStream(a)
            await sender.send_message(make_header(data))
            for chunk in chunks:
                await sender.send_frame(chunk, FrameKind.DATA)
            receiver = FramedStream(b)
            with pytest.raises(TransferCorrupt, match=error):
                await receive_transfer(receiver)
            assert receiver.broken is not None


async def test_a_message_in_place_of_a_chunk_is_refused(open_group: GroupOpener) -> None:
    data = payload(2 * CHUNK)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender = FramedStream(a)
            await sender.send_message(make_header(data))
            await sender.send_message(make_header(data))
            receiver = FramedStream(b)
            with pytest.raises(Exception, match="expected a DATA frame"):
                await receive_transfer(receiver)
            assert receiver.broken is not None


async def test_sender_vanishing_mid_transfer_is_stream_closed(open_group: GroupOpener) -> None:
    data = payload(4 * CHUNK)
    with trio.fail_after(DEADLINE):
        async with stream_pair(open_group) as (a, b):
            sender = FramedStream(a)
            await sender.send_message(make_header(data))
            await sender.send_frame(data[:CHUNK], FrameKind.DATA)
            await sender.aclose()  # a clean close after half the payload: only the length tells
            with pytest.raises(StreamClosed):
                await receive_transfer(FramedStream(b))


# ------------------------------------------------ virtual time (memory backend)


async def test_slow_loris_header_then_nothing_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with stream_pair(_memory_group) as (a, b):
        await FramedStream(a).send_message(make_header(payload(4 * CHUNK)))
        receiver = FramedStream(b, FramingConfig(idle_timeout_s=20))
        start = trio.current_time()
        with pytest.raises(StreamTimeout, match="no frame arrived within 20"):
            await receive_transfer(receiver, timeout_s=600)  # 600 s for the header, 20 s between chunks
        assert trio.current_time() - start == pytest.approx(20)
        with pytest.raises(StreamBroken, match="transfer failed after 0 of 65536 bytes"):
            await receiver.receive_frame(10)
        assert await a.receive_some(10) == b""


async def test_cancelled_receiver_leaves_the_stream_broken(autojump_clock: trio.testing.MockClock) -> None:
    data = payload(64 * CHUNK)
    async with stream_pair(_memory_group) as (a, b), trio.open_nursery() as nursery:
        sender = FramedStream(a)
        sender_errors: list[BaseException] = []

        async def send() -> None:
            try:
                await send_transfer(sender, data, "video/mp4", chunk_bytes=CHUNK)
            except StreamClosed as exc:
                sender_errors.append(exc)

        nursery.start_soon(send)
        receiver = FramedStream(b)
        with trio.CancelScope() as scope:

            def cancel_halfway(done: int, total: int) -> None:
                if done >= total // 2:
                    scope.cancel()

            await receive_transfer(receiver, progress=cancel_halfway)
        assert scope.cancelled_caught
        assert receiver.broken is not None and f"after {32 * CHUNK} of {64 * CHUNK} bytes" in receiver.broken
        with pytest.raises(StreamBroken):
            await receive_transfer(receiver)
    assert len(sender_errors) == 1 and sender.send_broken is not None  # the sender learnt it too


async def test_cancelled_sender_leaves_both_ends_knowing(autojump_clock: trio.testing.MockClock) -> None:
    data = payload(64 * CHUNK)
    async with stream_pair(_memory_group) as (a, b), trio.open_nursery() as nursery:
        sender = FramedStream(a)

        async def send_then_give_up() -> None:
            with trio.CancelScope() as scope:

                def cancel_halfway(done: int, total: int) -> None:
                    if done >= total // 2:
                        scope.cancel()

                await send_transfer(sender, data, "video/mp4", chunk_bytes=CHUNK, progress=cancel_halfway)

        nursery.start_soon(send_then_give_up)
        with pytest.raises(StreamClosed):
            await receive_transfer(FramedStream(b))
    assert sender.broken is not None and "Cancelled" in sender.broken


def test_header_and_limits_validate_their_fields() -> None:
    digest = hashlib.sha256(b"").digest()
    with pytest.raises(ValueError, match="sha256"):
        TransferHeader(0, b"short", "image/png", CHUNK)
    with pytest.raises(ValueError, match="media_type"):
        TransferHeader(0, digest, "png", CHUNK)
    with pytest.raises(ValueError, match="chunk_bytes"):
        TransferHeader(0, digest, "image/png", 1)  # a peer may not make us handle one frame per byte
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        TransferLimits(max_chunk_bytes=64 * MiB)
    assert TransferLimits().max_chunk_bytes >= DEFAULT_CHUNK_BYTES
