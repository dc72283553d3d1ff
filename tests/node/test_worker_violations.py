"""A requester that breaks the protocol while its job runs is told so, in a JobError (QA3 Q13).

The violation aborted the run, and the run's end cancelled the task that was sending the
JobError, so the requester saw the stream end without a word, against docs/protocol.md §8.4.
"""

from __future__ import annotations

import trio
import trio.testing
from lpnode.node.framing import FramedStream
from lpnode.node.job_requester import build_spec
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.jobs import Cancel, ErrorCode, JobError, Quote, QuoteRequest
from lpnode.protocol.names import JOB_PROTOCOL

from .job_fixtures import BOUND_S, T2I, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock


async def test_a_cancel_naming_another_job_mid_run_gets_a_job_error_naming_the_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            stream = await requester.node.network.open_stream(
                worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs()
            )
            framed = FramedStream(stream)
            request = QuoteRequest(build_spec(T2I, {}, 10**7), b"q" * 16, 10_000, 60_000, accept=True)
            await send_job_message(framed, request, requester.node.key)
            quote = await receive_job_message(framed)
            assert isinstance(quote, Quote)
            await stuck.running.wait()
            await send_job_message(framed, Cancel("ab" * 32, "user"), requester.node.key)
            answer = await receive_job_message(framed)
            await stream.aclose()
            await stuck.cancelled.wait()
            while worker.worker is not None and worker.worker.reservations:
                await trio.testing.wait_all_tasks_blocked()
    assert isinstance(answer, JobError) and answer.job_id == quote.job_id
    assert (answer.code, answer.message) == (ErrorCode.PROTOCOL_VIOLATION, "Cancel names another job")
