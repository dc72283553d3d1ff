"""A requester that follows the wire format but abuses the worker's capacity (review s11), and a stop mid-job.

Each of these held a worker before the fix: a trickled upload kept its slot for the requester's own
deadline (up to 24 h); one peer's standing quotes or silent streams kept every slot; the advert called a
fully reserved worker idle; a stop waited on a job's upload or standing quote (and then skipped the
served rows' flush), and ignored a job whose output was on its way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from lpnode.models.base import PipelineKind
from lpnode.models.pool import ModelPool, ModelStatus
from lpnode.node.framing import FramedStream, FrameKind
from lpnode.node.job_requester import JobRequest, build_spec
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.job_worker import STOP_NOTICE_S, WorkerConfig
from lpnode.node.network.memory import MemoryHubConfig, open_memory_hub
from lpnode.node.run import _cancel_on_signal
from lpnode.node.served_jobs import SERVED_MIGRATIONS, ServedBook, serve_served_book
from lpnode.node.store import open_store
from lpnode.node.transfer import TransferHeader
from lpnode.protocol.errors import NetworkError, StreamClosed
from lpnode.protocol.jobs import (
    Accept,
    ErrorCode,
    InputShape,
    JobError,
    Quote,
    QuoteRequest,
    Refusal,
    RefusalReason,
    Result,
)
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline
from lpnode.protocol.names import JOB_PROTOCOL

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock

I2I = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)


class StuckPoolWithInputs(StuckPool):
    """StuckPool that takes image-to-image too, so a job has an input to upload."""

    def status(self) -> tuple[ModelStatus, ...]:
        (row,) = super().status()
        return (dataclasses.replace(row, pipelines=(PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE)),)


async def open_job(requester: Peer, worker: Peer) -> FramedStream:
    stream = await requester.node.network.open_stream(worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs())
    return FramedStream(stream)


def t2i_request(nonce: bytes, *, accept: bool = False) -> QuoteRequest:
    return QuoteRequest(build_spec(T2I, {}, 10**7), nonce, 10_000, 600_000, accept=accept)


def i2i_request(nonce: bytes, image: bytes, *, deadline_ms: int) -> QuoteRequest:
    spec = build_spec(I2I, {"image": image}, 10**7)
    return QuoteRequest(spec, nonce, 10_000, deadline_ms, input_shape=InputShape(64, 64, 1))


async def ask(framed: FramedStream, requester: Peer, request: QuoteRequest) -> object:
    await send_job_message(framed, request, requester.node.key)
    return await receive_job_message(framed)


async def accept_and_start_upload(framed: FramedStream, requester: Peer, request: QuoteRequest, quote: Quote) -> bytes:
    """Accept, then send the input's header and its first 4 KiB chunk only; the rest of the input."""
    await send_job_message(framed, Accept(quote.quote_id, quote.job_id, request.spec.inputs), requester.node.key)
    image = IMAGE
    await framed.send_message(TransferHeader(len(image), hashlib.sha256(image).digest(), "image/png", 4096))
    await framed.send_frame(image[:4096], FrameKind.DATA)
    return image[4096:]


IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024)  # never completed, so it never has to decode


async def _sigint() -> AsyncIterator[int]:
    yield signal.SIGINT


async def test_a_trickled_upload_ends_at_the_workers_own_bound_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        hostile, worker, honest = await start(0), await start(1, pool=StuckPoolWithInputs()), await start(2)
        await sees_models(hostile.node, [worker])
        assert worker.worker is not None
        config = worker.worker.config = WorkerConfig(max_jobs=1)
        request = i2i_request(b"h" * 16, IMAGE, deadline_ms=86_400_000)  # the longest deadline a request may ask
        framed = await open_job(hostile, worker)
        quote = await ask(framed, hostile, request)
        assert isinstance(quote, Quote), quote
        began = trio.current_time()
        rest = await accept_and_start_upload(framed, hostile, request, quote)

        async def trickle() -> None:  # 4 KiB every 50 s (~80 B/s): each frame well inside the framing's bounds
            for offset in range(0, len(rest), 4096):
                await trio.sleep(50)
                await framed.send_frame(rest[offset : offset + 4096], FrameKind.DATA)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            # Told why first, then cut off mid-transfer: the stream is reset (a transfer cut short must
            # not be misread by either side), after the JobError the requester still reads.
            told = await receive_job_message(framed)
            took = trio.current_time() - began
            with pytest.raises(NetworkError):
                await receive_job_message(framed)
            nursery.cancel_scope.cancel()
        answer = await ask(await open_job(honest, worker), honest, t2i_request(b"o" * 16))
    allowed = config.input_grace_s + len(IMAGE) / config.min_input_bytes_per_s
    assert allowed <= took < allowed + 1
    assert isinstance(answer, Quote), answer  # the slot is free again
    assert isinstance(told, JobError) and told.code is ErrorCode.DEADLINE_EXCEEDED, told
    assert "did not arrive within 46 s: this worker allows 30 s plus their size at 64 KiB/s" in told.message
    assert "inputs not in within 46 s" in caplog.text  # the worker's log line says why it ended


async def test_one_requester_holds_at_most_its_share_of_standing_quotes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        hostile, worker, honest = await start(0), await start(1, pool=StuckPool()), await start(2)
        await sees_models(hostile.node, [worker])
        assert worker.worker is not None
        share = worker.worker.config.max_standing_quotes_per_peer
        assert share < worker.worker.config.max_jobs
        held = [await open_job(hostile, worker) for _ in range(share + 1)]
        answers = [await ask(framed, hostile, t2i_request(bytes([i]) * 16)) for i, framed in enumerate(held)]
        # others still get quotes; and one taken in advance is not a standing quote, so it is not limited
        other = await ask(await open_job(honest, worker), honest, t2i_request(b"o" * 16))
        in_advance = await ask(await open_job(hostile, worker), hostile, t2i_request(b"a" * 16, accept=True))
    assert all(isinstance(a, Quote) for a in answers[:share]), answers
    refused = answers[share]
    assert isinstance(refused, Refusal) and refused.reason is RefusalReason.RATE_LIMITED, refused
    assert "unanswered" in refused.message and refused.retry_after_ms > 0
    assert isinstance(other, Quote) and isinstance(in_advance, Quote)


async def test_one_peer_cannot_take_every_job_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        hostile, worker, honest = await start(0), await start(1, pool=StuckPool()), await start(2)
        await sees_models(hostile.node, [worker])
        assert worker.worker is not None
        worker.worker.config = WorkerConfig(max_streams=8, max_streams_per_peer=4)
        silent = [await open_job(hostile, worker) for _ in range(4)]  # say nothing: held until request_timeout_s
        one_more = await open_job(hostile, worker)
        try:
            turned_away: object = await ask(one_more, hostile, t2i_request(b"x" * 16))
        except StreamClosed as exc:
            turned_away = exc
        answer = await ask(await open_job(honest, worker), honest, t2i_request(b"o" * 16))
        assert len(silent) == 4
    assert isinstance(turned_away, StreamClosed), turned_away
    assert isinstance(answer, Quote), answer
    assert worker.worker.turned_away == 1


async def test_the_advert_counts_reserved_slots(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        worker = await start(1, pool=StuckPool())
        holders = [await start(i) for i in (0, 2)]
        honest = await start(3)
        await sees_models(honest.node, [worker])
        assert worker.worker is not None
        share = worker.worker.config.max_standing_quotes_per_peer
        held = []
        for n, holder in enumerate(holders):  # two peers, their share each: every slot reserved
            for i in range(share):
                framed = await open_job(holder, worker)
                assert isinstance(await ask(framed, holder, t2i_request(bytes([n, i]) * 8)), Quote)
                held.append(framed)
        assert len(worker.worker.reservations) == worker.worker.config.max_jobs
        with trio.fail_after(5):  # an advert follows the reservations (settled), well before the quotes expire
            while (record := honest.node.directory.get(worker.peer_id)) is None or record.advert.queue_depth < 4:
                await honest.node.directory.wait_changed()
        assert record.advert.queue_depth == record.advert.queue_capacity == 4


async def test_a_stop_mid_upload_tells_the_requester_ends_the_job_and_keeps_its_row(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    book = ServedBook()
    async with (
        open_store(tmp_path / "node.db", SERVED_MIGRATIONS) as store,
        open_memory_hub() as hub,
        peers(hub, virtual_wall_clock) as start,
        trio.open_nursery() as writer,
    ):
        await writer.start(serve_served_book, book, store)
        requester, worker = await start(0), await start(1, pool=StuckPoolWithInputs(), served=book)
        await sees_models(requester.node, [worker])
        request = i2i_request(b"u" * 16, IMAGE, deadline_ms=600_000)
        framed = await open_job(requester, worker)
        quote = await ask(framed, requester, request)
        assert isinstance(quote, Quote), quote
        await accept_and_start_upload(framed, requester, request, quote)  # the next chunk never comes
        await trio.sleep(1)
        assert worker.worker is not None
        began = trio.current_time()
        await worker.worker.stop()
        took = trio.current_time() - began
        noted = book._noted  # the job's row is queued by the time stop() returns, for the flush after it
        # Told first; then the upload it was reading is cut off, which resets the stream (a transfer cut
        # short must not be misread), so a requester busy sending may read the reset rather than the word.
        try:
            told: object = await receive_job_message(framed)
        except NetworkError as exc:
            told = exc
        await book.flush()  # not timed: under the autojump clock a write in SQLite's thread jumps time
        rows = await store.fetch_all("SELECT outcome, detail FROM served")
        requester.scope.cancel()
        writer.cancel_scope.cancel()
    assert isinstance(told, NetworkError) or (isinstance(told, JobError) and told.code is ErrorCode.CANCELLED), told
    assert took <= STOP_NOTICE_S and noted == 1
    assert [tuple(row) for row in rows] == [("abandoned", "the worker is shutting down")], rows


async def test_a_standing_quote_does_not_hold_a_stop(autojump_clock: trio.testing.MockClock) -> None:
    book, flushed = ServedBook(), []

    async def flush() -> None:
        await book.flush()
        flushed.append(True)

    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester, worker = await start(0), await start(1, pool=StuckPool(), served=book)
        await sees_models(requester.node, [worker])
        framed = await open_job(requester, worker)
        assert isinstance(await ask(framed, requester, t2i_request(b"q" * 16)), Quote)
        assert worker.worker is not None
        began = trio.current_time()
        await _cancel_on_signal(_sigint(), worker.scope, [worker.worker.stop, flush])
        took = trio.current_time() - began
        told = await receive_job_message(framed)
        requester.scope.cancel()
    assert isinstance(told, JobError) and told.code is ErrorCode.CANCELLED, told
    assert took <= STOP_NOTICE_S and flushed == [True]


async def test_a_stop_while_the_output_is_delivered_keeps_the_jobs_row(pool: ModelPool) -> None:
    book = ServedBook()
    async with open_memory_hub(config=MemoryHubConfig(stream_window_bytes=2048)) as hub, peers(hub) as start:
        requester, worker = await start(0), await start(1, pool=pool, served=book)
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            framed = await open_job(requester, worker)
            request = t2i_request(b"d" * 16)
            quote = await ask(framed, requester, request)
            assert isinstance(quote, Quote), quote
            await send_job_message(framed, Accept(quote.quote_id, quote.job_id, ()), requester.node.key)
            while not isinstance(await receive_job_message(framed), Result):
                pass  # progress
            # the Result is in, so the output is on its way: stuck behind the 2 KB window (a slow downlink), unread
            assert worker.worker is not None and worker.worker.completed == 0
            await _cancel_on_signal(_sigint(), worker.scope, [worker.worker.stop, book.flush])
            noted = book._noted
            requester.scope.cancel()
    assert noted == 1, "the delivering job's row was not noted before the node went"
