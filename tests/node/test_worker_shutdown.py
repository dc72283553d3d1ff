"""A worker that stops mid-job tells its requester why, rather than dropping the stream (QA)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from lpnode.node.job_requester import JobFailed, run_job
from lpnode.node.network.memory import open_memory_hub

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
