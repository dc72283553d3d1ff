"""Jobs on this node's own worker (allow_local), and the model router choosing the model a job runs on."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.job_requester import JobFailed, JobRequest, NoCandidates, ParametersRefused, run_job
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock


async def test_allow_local_runs_on_this_nodes_own_pool_with_a_receipt_it_signed(pool: ModelPool) -> None:
    from lpnode.node.local_jobs import LocalWorker

    async with open_memory_hub() as hub, peers(hub) as start:
        alone: Peer = await start(0, pool=pool)  # type: ignore[assignment]
        assert alone.worker is not None
        local = LocalWorker(alone.worker)
        with pytest.raises(NoCandidates):  # without allow_local this node is never a candidate
            await run_job(alone.node, T2I, max_price=10_000, deadline_s=5, local=local)
        with pytest.raises(NoCandidates):  # allow_local, but no worker to run it on
            await run_job(alone.node, T2I, max_price=10_000, deadline_s=5, allow_local=True)
        # preferring this node without allow_local was dropped without a word; now it is said (QA s11)
        with pytest.raises(ParametersRefused, match=r"prefer names this node itself .* add allow_local"):
            await run_job(alone.node, T2I, max_price=10_000, deadline_s=5, local=local, prefer=[alone.peer_id])
        progress: list[int] = []
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                alone.node,
                T2I,
                max_price=10_000,
                deadline_s=BOUND_S,
                allow_local=True,
                local=local,
                on_progress=lambda p, m: progress.append(m.step),
            )
    receipt = verify_receipt(outcome.receipt_bytes)
    assert receipt.worker_peer_id == receipt.requester_peer_id == alone.peer_id == outcome.worker_peer_id
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(alone.peer_id, "done")]
    assert [o.sha256 for o in receipt.outputs] == [hashlib.sha256(b).hexdigest() for b in outcome.outputs]
    assert progress
    # the whole worker ran it: a reservation taken and freed, one job completed, the stream closed
    assert alone.worker.completed == 1 and alone.worker.reservations == set() and alone.worker.open_streams == 0


async def test_a_local_worker_of_another_node_is_refused(pool: ModelPool) -> None:
    from lpnode.node.local_jobs import LocalWorker

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert worker.worker is not None
        with pytest.raises(ValueError, match="local worker"):
            await run_job(
                requester.node, T2I, max_price=10_000, deadline_s=5, allow_local=True, local=LocalWorker(worker.worker)
            )


async def test_model_router_binds_its_choice_into_the_job_the_attempts_and_the_outcome(pool: ModelPool) -> None:
    any_model = JobRequest(T2I.pipeline, T2I.params, "", seed=7)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, any_model, max_price=10_000, deadline_s=BOUND_S)
    assert outcome.model_id == outcome.spec.model_id == outcome.receipt.spec.model_id == MODEL
    assert [(a.model_id, a.outcome) for a in outcome.attempts] == [(MODEL, "done")]


async def test_a_local_job_past_its_deadline_leaves_nothing_running(autojump_clock: trio.testing.MockClock) -> None:
    from lpnode.node.local_jobs import LocalWorker

    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        alone: Peer = await start(0, pool=stuck)  # type: ignore[assignment]
        assert alone.worker is not None
        with pytest.raises(JobFailed, match="deadline") as failed:
            await run_job(
                alone.node, T2I, max_price=10_000, deadline_s=20, allow_local=True, local=LocalWorker(alone.worker)
            )
        # run_job returned only after the worker's side of the local job ended
        assert stuck.running.is_set() and stuck.cancelled.is_set()
        assert alone.worker.reservations == set() and alone.worker.open_streams == 0
    assert [(a.peer_id, a.outcome) for a in failed.value.attempts] == [(alone.peer_id, "deadline")]
