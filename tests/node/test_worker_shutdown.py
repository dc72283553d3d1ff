"""A worker that stops mid-job tells its requester why, rather than dropping the stream (QA)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from lpnode.node.framing import FramedStream
from lpnode.node.job_requester import JobFailed, build_spec, run_job
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.job_worker import WorkerConfig
from lpnode.node.network.memory import MemoryHubConfig, open_memory_hub
from lpnode.node.run import STOP_NOTICE_S, _cancel_on_signal
from lpnode.node.served_jobs import SERVED_MIGRATIONS, ServedBook, serve_served_book
from lpnode.node.store import open_store
from lpnode.protocol.jobs import Accept, Quote, QuoteRequest
from lpnode.protocol.names import JOB_PROTOCOL

from .job_fixtures import T2I, Peer, StuckPool, no_exploring, peers, sees_models
from .test_gossip import virtual_wall_clock


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_stopping_worker_says_so_and_the_job_goes_on_elsewhere_knowing_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = StuckPool()
    failed: list[JobFailed] = []
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])

        async def ask() -> None:
            try:
                await run_job(requester.node, T2I, max_price=10_000, deadline_s=60, rng=no_exploring())
            except JobFailed as exc:
                failed.append(exc)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await pool.running.wait()  # the worker runs the job
                assert worker.worker is not None
                await worker.worker.stop()  # ... and its node stops (Ctrl-C, SIGTERM: run.py calls this first)
                worker.scope.cancel()
    assert len(failed) == 1  # no other worker to move to
    [attempt] = failed[0].attempts
    # it read as a crash before: "disconnected (while running: stream ... ended)"
    assert attempt.outcome == "error:cancelled" and "the worker is shutting down" in attempt.detail
    assert pool.cancelled.is_set()  # the run itself stopped


async def test_a_stopping_worker_quotes_no_new_job(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=StuckPool())  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        assert worker.worker is not None
        await worker.worker.stop()
        with trio.fail_after(120), pytest.raises(JobFailed) as failed:
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5, rng=no_exploring())
    assert any(a.outcome == "refused:shutting_down" for a in failed.value.attempts), failed.value.attempts


async def test_a_stopped_job_is_kept_with_why_before_the_book_closes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    # review: the jobs a stop cut short never reached the served book (0 of 10 kept)
    pool, book = StuckPool(), ServedBook()
    async with (
        open_store(tmp_path / "node.db", SERVED_MIGRATIONS) as store,
        open_memory_hub() as hub,
        peers(hub, virtual_wall_clock) as start,
        trio.open_nursery() as writer,
    ):
        await writer.start(serve_served_book, book, store)
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool, served=book)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ask, requester)
                await pool.running.wait()
                assert worker.worker is not None
                await _cancel_on_signal(_sigint(), worker.scope, [worker.worker.stop, book.flush])
        assert book._noted == 1  # noted before the node went: the worker's stop waits for its jobs' ends
        await book.flush()  # (the writer's thread may outlast the 1 s bound under the virtual clock)
        [row] = await book.page()
        writer.cancel_scope.cancel()
    assert row["outcome"] == "abandoned" and row["detail"] == "the worker is shutting down"
    assert row["earned"] == 0 and row["run_ms"] is not None


async def test_a_stop_is_bounded_though_a_requester_stopped_reading(autojump_clock: trio.testing.MockClock) -> None:
    # review: the shielded JobError send held a stop for the framing's 30 s write timeout
    pool = StuckPool()
    async with (
        open_memory_hub(config=MemoryHubConfig(stream_window_bytes=64)) as hub,
        peers(hub, virtual_wall_clock) as start,
    ):
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        stream = await requester.node.network.open_stream(worker.peer_id, JOB_PROTOCOL, ())
        framed = FramedStream(stream)
        spec = build_spec(T2I, {}, 10**7)
        await send_job_message(framed, QuoteRequest(spec, b"n" * 16, 10_000, 600_000), requester.node.key)
        quote = await receive_job_message(framed)
        assert isinstance(quote, Quote), quote
        await send_job_message(framed, Accept(quote.quote_id, quote.job_id, spec.inputs), requester.node.key)
        await pool.running.wait()
        # this requester reads no more: the worker's keep-alive (every 15 s) fills the 64-byte window
        await trio.sleep(2 * WorkerConfig().progress_keepalive_s)
        assert worker.worker is not None
        began = trio.current_time()
        await _cancel_on_signal(_sigint(), worker.scope, [worker.worker.stop])
        assert trio.current_time() - began <= STOP_NOTICE_S
        requester.scope.cancel()


async def _ask(requester: Peer) -> None:
    with contextlib.suppress(JobFailed):
        await run_job(requester.node, T2I, max_price=10_000, deadline_s=60, rng=no_exploring())


async def _sigint() -> AsyncIterator[int]:
    yield signal.SIGINT
