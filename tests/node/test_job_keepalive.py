"""A job waiting in a worker's queue is not taken for a silent worker.

The worker quotes up to ``max_jobs`` jobs, but its one device runs one at a time, and the pool
reports progress only while a job is on the device. A job queued behind a 70 s run said nothing
for 70 s, and the requester, which gives a worker 60 s of silence (docs/protocol.md §8.8),
cancelled it and recorded a healthy worker as timed out (found by review). The worker now says
its last word again every ``progress_keepalive_s`` (``queued`` before the run starts).
Virtual time: a one-device stand-in pool, no threads.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from lpnode.models.base import StepProgress
from lpnode.models.outputs import ImageOutput
from lpnode.node.job_quote import WorkerConfig
from lpnode.node.job_requester import JobOutcome, run_job
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.jobs import Progress

from .job_fixtures import T2I, Peer, StuckPool, no_exploring, peers, sees_models
from .test_gossip import virtual_wall_clock

STEP_S, STEPS = 7.0, 10  # 70 s on the device per job, a Progress every 7 s while it runs


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class OneDevicePool(StuckPool):
    """Runs one job at a time, as a pool on one GPU does; the next waits for the device in silence."""

    def __init__(self) -> None:
        super().__init__()
        self.device = trio.Lock()

    async def run(self, model: str, request: object, *, progress: Any = None) -> ImageOutput:
        async with self.device:
            self.running.set()
            for step in range(1, STEPS + 1):
                await trio.sleep(STEP_S)
                if progress is not None:
                    progress(StepProgress("denoise", step, STEPS))
        return ImageOutput.from_array(np.zeros((64, 64, 3), dtype=np.uint8))


async def test_a_job_queued_behind_a_long_run_is_kept_alive_and_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = OneDevicePool()
    outcomes: list[JobOutcome] = []
    heard: list[tuple[str, float]] = []  # the second job's Progress: stage, when
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert worker.worker is not None and worker.worker.config.progress_keepalive_s < 60
        await sees_models(requester.node, [worker])

        async def one(progress: Any = None) -> None:
            outcome = await run_job(
                requester.node, T2I, max_price=10_000, deadline_s=600, rng=no_exploring(), on_progress=progress
            )
            outcomes.append(outcome)

        def second_progress(peer_id: str, message: Progress) -> None:
            heard.append((message.stage, trio.current_time()))

        with trio.fail_after(400):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                await pool.running.wait()  # the first job holds the device
                began = trio.current_time()
                nursery.start_soon(one, second_progress)
    assert len(outcomes) == 2  # both done: the second was not given up after 60 s of queueing
    assert all(a.outcome == "done" for outcome in outcomes for a in outcome.attempts)
    queued = [at - began for stage, at in heard if stage == "queued"]
    assert queued and all(b - a <= WorkerConfig().progress_keepalive_s + 1 for a, b in itertools.pairwise(queued))
    assert any(stage == "denoise" for stage, _ in heard)  # then it ran, saying so
