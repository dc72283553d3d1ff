"""Cancelling a workflow's running step cancels the workflow (QA's second pass, O12).

A step runs in its workflow's task; the cancel used to wait for the step to finish and answer
"succeeded". Virtual time, a worker whose pool never finishes a run (``StuckPool``).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from lpnode.node.job_manager import CANCELLED, MemoryRecordBook, open_job_manager, requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import status_for
from lpnode.node.rpc_jobs import OutputStore

from .job_fixtures import Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock
from .test_job_manager import job


async def test_cancelling_a_running_step_cancels_it_and_its_workflow(autojump_clock: trio.testing.MockClock) -> None:
    stuck = StuckPool()
    book = MemoryRecordBook()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        runner = requester_runner(requester.node)
        async with open_job_manager(book, OutputStore(), runner, status_for=status_for) as manager:

            async def two_steps(live: Any) -> dict[str, Any]:
                await manager.run_child(live, job(), (0, 2))
                await manager.run_child(live, job(), (1, 2))  # never reached
                return {}

            workflow_id = await manager.submit_work("workflow", {"steps": 2}, two_steps)
            await stuck.running.wait()
            (step,) = [r for r in await manager.list() if r["parent_id"] == workflow_id]
            with trio.fail_after(5):
                cancelled = await manager.cancel(step["id"])
                workflow = await manager.wait(workflow_id)
                await stuck.cancelled.wait()  # the worker's run was stopped too
    assert cancelled["state"] == CANCELLED
    assert workflow["state"] == CANCELLED
    # the step's try was cancelled by a user, not cut off by the node stopping (it read "interrupted": QA s11)
    assert [a["outcome"] for a in cancelled["attempts"]] == ["cancelled"], cancelled["attempts"]
    assert [a["outcome"] for a in workflow["attempts"]] == ["cancelled"], workflow["attempts"]
    assert [r["id"] for r in await book.list(10, None) if r["parent_id"] == workflow_id] == [step["id"]]
