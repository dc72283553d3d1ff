"""The job manager: cancel reaches the worker, bounds refuse, a stopping node leaves ``interrupted`` records.

Runs in virtual time (MockClock) against a worker whose pool never finishes a
run (``StuckPool``), so "while running" is a state the test waits for, not a race.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from lpnode.node.job_book import INTERRUPTED_ERROR, Record
from lpnode.node.job_manager import (
    CANCELLED,
    CHECKPOINT_DELAY_S,
    INTERRUPTED,
    JobAlreadyFinished,
    JobEvent,
    JobManager,
    Listener,
    ManagerBusy,
    MemoryRecordBook,
    open_job_manager,
    requester_runner,
)
from lpnode.node.job_requester import JobOutcome
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import status_for
from lpnode.node.rpc_job_bodies import PreparedJob, TextToImageBody, prepare
from lpnode.node.rpc_jobs import OutputStore

from .job_fixtures import MODEL, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock

T2I = TextToImageBody(prompt="a lighthouse", model_id=MODEL, width=64, height=64, num_inference_steps=2, seed=1)


def job(deadline: float = 600) -> PreparedJob:
    return prepare(T2I.model_copy(update={"deadline": deadline}), {}, 1 << 20)


async def running(manager: JobManager, job_id: str) -> None:
    async with manager.listen(job_id) as listener:
        while (await listener.next()).data.get("state") != "running":
            pass


async def test_cancel_stops_the_network_job_and_frees_the_workers_reservation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck = StuckPool()
    book = MemoryRecordBook()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        runner = requester_runner(requester.node)
        async with open_job_manager(book, OutputStore(), runner, status_for=status_for, max_jobs=1) as manager:
            job_id = await manager.submit(job())
            with pytest.raises(ManagerBusy):  # one request at a time on this manager
                await manager.submit(job())
            await running(manager, job_id)
            await stuck.running.wait()
            record = await manager.cancel(job_id)
            with trio.fail_after(5):
                await stuck.cancelled.wait()
                while worker.worker is not None and worker.worker.reservations:
                    await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(JobAlreadyFinished):
                await manager.cancel(job_id)
            assert await manager.submit(job())  # the slot is free again
    assert record["state"] == CANCELLED and (await book.get(job_id) or {})["state"] == CANCELLED


async def test_a_node_stopping_mid_job_leaves_the_record_interrupted(autojump_clock: trio.testing.MockClock) -> None:
    stuck = StuckPool()
    book = MemoryRecordBook()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with open_job_manager(book, OutputStore(), requester_runner(requester.node)) as manager:
            job_id = await manager.submit(job())
            await stuck.running.wait()
        stopped = await book.get(job_id) or {}
        # the same error as a killed node's record gets at its next start (a clean stop left it null: QA s11)
        assert stopped["state"] == INTERRUPTED and stopped["error"] == INTERRUPTED_ERROR
        # a record left unfinished by a crash (no final save) is marked so at the next start
        crashed = await book.create("text-to-image", {}, None, 0.0)
        running_try = {"peer_id": "12D3KooWa", "outcome": "running", "detail": "running m", "price": None}
        await book.update(crashed | {"state": "running", "attempts": [running_try]}, 1.0)
        assert await book.mark_interrupted(2.0) == 1
        after = await book.get(crashed["id"]) or {}
        assert after["state"] == INTERRUPTED and [a["outcome"] for a in after["attempts"]] == ["interrupted"]
        assert after["error"] == INTERRUPTED_ERROR


async def test_a_failed_job_keeps_its_error_and_attempts(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        async with open_job_manager(
            MemoryRecordBook(), OutputStore(), requester_runner(requester.node), status_for=status_for
        ) as manager:
            record = await manager.wait(await manager.submit(job()))
    assert record["state"] == "failed"
    assert record["error"]["status"] == 404 and record["error"]["error"] == "no_candidates"


async def test_a_slow_listener_loses_progress_but_never_state_or_done() -> None:
    listener = Listener(max_progress=4)
    for step in range(100):
        listener.push(JobEvent("progress", {"step": step}))
    listener.push(JobEvent("state", {"state": "succeeded"}))
    listener.push(JobEvent("done", {"id": "x"}))
    kinds = [(await listener.next()).kind for _ in range(6)]
    assert kinds == ["progress"] * 4 + ["state", "done"] and listener.dropped == 96
    # a reader that keeps up loses nothing
    for step in range(10):
        listener.push(JobEvent("progress", {"step": step}))
        assert (await listener.next()).data == {"step": step}
    assert listener.dropped == 96


async def test_a_running_jobs_record_is_saved_with_its_tries_so_a_killed_node_still_says_who_ran_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before, nothing of a run was saved before its end: a requester killed mid-job (kill -9, no final save)
    left the record with no attempt and no progress (QA2, QA3). Now the record is saved a moment after a try
    starts or ends, and the final save is still the last word."""
    stuck = StuckPool()
    book = MemoryRecordBook()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with open_job_manager(book, OutputStore(), requester_runner(requester.node)) as manager:
            job_id = await manager.submit(job())
            await stuck.running.wait()
            assert (await book.get(job_id) or {})["attempts"] == []  # not yet: a short job costs no extra write
            # virtual time; past the checkpoint due CHECKPOINT_DELAY_S after the try started (at this same instant,
            # so a sleep of exactly the delay would tie with it, and ties wake in either order)
            await trio.sleep(CHECKPOINT_DELAY_S * 1.5)
            saved = await book.get(job_id) or {}
            await manager.cancel(job_id)
            await trio.sleep(CHECKPOINT_DELAY_S * 2)  # a checkpoint due now must not overwrite the final record
    assert saved["state"] == "running"
    assert saved["attempts"] == [
        {"peer_id": worker.peer_id, "outcome": "running", "detail": f"running {MODEL}", "price": None}
    ]
    final = await book.get(job_id) or {}
    assert final["state"] == CANCELLED and [a["outcome"] for a in final["attempts"]] == ["cancelled"]


class _SlowBook(MemoryRecordBook):
    """Record writes that wait for ``gate``: a burst of requests all arrive while the first is written."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def create(self, *args: Any, **kwargs: Any) -> Record:
        await self.gate.wait()
        return await super().create(*args, **kwargs)


async def test_a_burst_of_requests_is_held_to_the_limit_while_their_records_are_written() -> None:
    async def never_ends(*_: object) -> JobOutcome:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    book = _SlowBook()
    admitted: list[str] = []
    refused: list[str] = []
    async with open_job_manager(book, OutputStore(), never_ends, status_for=status_for, max_jobs=2) as manager:

        async def submit() -> None:
            try:
                admitted.append(await manager.submit(job()))
            except ManagerBusy as exc:
                refused.append(str(exc))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(submit)
                await trio.testing.wait_all_tasks_blocked()  # all five asked while no record was written yet
                book.gate.set()
    assert len(admitted) == 2 and len(refused) == 3
    assert all("its limit is 2" in message for message in refused)
