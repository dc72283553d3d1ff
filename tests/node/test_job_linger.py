"""The worker's end of a job stream: it closes only after the requester has closed (or after ``linger_s``).

Under CPU starvation a job stream torn down by the worker right after its last bytes
lost outputs (docs/benchmarks.md, "Jobs end to end"). The requester closes once it
holds and has checked what the worker sent, so the worker now waits for that close,
bounded, and never cuts its own close short. Virtual time: a pool with no threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from lpnode.node.framing import FramedStream
from lpnode.node.job_requester import JobFailed, build_spec, run_job
from lpnode.node.job_stream import MAX_LINGER_BYTES, await_peer_close, receive_job_message, send_job_message
from lpnode.node.job_worker import WorkerConfig
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.errors import StreamClosed
from lpnode.protocol.jobs import QuoteRequest, Refusal
from lpnode.protocol.names import JOB_PROTOCOL

from .job_fixtures import T2I, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock

LINGER_S = 10.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _lingering_pair(start: Callable[..., Awaitable[object]]) -> tuple[Peer, Peer]:
    """A requester and a worker (whose pool never finishes a job) that lingers LINGER_S after its last word."""
    requester: Peer = await start(0)  # type: ignore[assignment]
    worker: Peer = await start(1, pool=StuckPool())  # type: ignore[assignment]
    assert worker.worker is not None
    worker.worker.config = WorkerConfig(linger_s=LINGER_S)
    return requester, worker


async def _refused_stream(requester: Peer, worker: Peer) -> FramedStream:
    """A job stream on which the worker has said its last word (a refusal: the model is unknown)."""
    spec = build_spec(T2I, {}, 10**7)
    stream = await requester.node.network.open_stream(worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs())
    framed = FramedStream(stream)
    unknown = QuoteRequest(dataclasses.replace(spec, model_id="nobody/serves-this"), b"n" * 16, 1, 60_000)
    await send_job_message(framed, unknown, requester.node.key)
    assert isinstance(await receive_job_message(framed), Refusal)
    return framed


async def test_the_worker_keeps_the_stream_until_the_requester_closes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester, worker = await _lingering_pair(start)
        assert worker.worker is not None
        framed = await _refused_stream(requester, worker)
        # the worker does not close while we have not: nothing arrives for most of its linger time
        with trio.move_on_after(LINGER_S * 0.9) as quiet:
            await framed.stream.receive_some(1)
        assert quiet.cancelled_caught and worker.worker.open_streams == 1
        closed_at = trio.current_time()
        await framed.stream.aclose()
        while worker.worker.open_streams:
            await trio.testing.wait_all_tasks_blocked()
        # it ended because we closed, not because its linger ran out
        assert trio.current_time() - closed_at < LINGER_S * 0.1


async def test_a_requester_that_never_closes_is_let_go_after_linger(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester, worker = await _lingering_pair(start)
        assert worker.worker is not None
        began = trio.current_time()
        framed = await _refused_stream(requester, worker)
        assert await framed.stream.receive_some(1) == b""  # the worker's close, once linger_s ran out
        assert trio.current_time() - began == pytest.approx(LINGER_S, abs=0.5)
        assert worker.worker.open_streams == 0


async def test_a_peer_that_keeps_sending_ends_the_wait_early(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        first: Peer = await start(0)  # type: ignore[assignment]
        second: Peer = await start(1)  # type: ignore[assignment]
        got = trio.Event()
        ended: list[bool] = []

        async def handler(stream: object) -> None:
            from lpnode.node.network.base import ByteStream

            assert isinstance(stream, ByteStream)
            ended.append(await await_peer_close(stream, 60))
            got.set()

        second.node.network.set_stream_handler("/lpnode/test-linger/1", handler)  # type: ignore[arg-type]
        stream = await first.node.network.open_stream(second.peer_id, "/lpnode/test-linger/1")
        began = trio.current_time()
        sent = 0
        with trio.move_on_after(30), contextlib.suppress(StreamClosed):  # the handler's close ends our sends
            while not got.is_set():
                await stream.send_all(b"x" * 4096)
                sent += 4096
        await got.wait()
        assert ended == [False] and trio.current_time() - began < 30 and sent > MAX_LINGER_BYTES


async def test_a_finished_job_frees_the_workers_stream_at_once(autojump_clock: trio.testing.MockClock) -> None:
    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        assert worker.worker is not None
        await sees_models(requester.node, [worker])
        with pytest.raises(JobFailed, match="deadline"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5)
        # the requester's close on giving up ends the worker's wait long before its linger_s
        given_up = trio.current_time()
        while worker.worker.open_streams:
            await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() - given_up < worker.worker.config.linger_s


async def test_a_stream_that_never_asks_ends_at_the_request_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A requester owed nothing (it sent no QuoteRequest) gets no linger: docs/protocol.md §8.3 says the
    stream ends after request_timeout_s. It took that plus linger_s (~20 s found by the JS peer)."""
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester, worker = await _lingering_pair(start)
        assert worker.worker is not None
        timeout_s = worker.worker.config.request_timeout_s  # the linger (LINGER_S) must not follow it
        stream = await requester.node.network.open_stream(
            worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs()
        )
        began = trio.current_time()
        assert await stream.receive_some(1) == b""  # the worker's close, without a word
        assert trio.current_time() - began == pytest.approx(timeout_s, abs=0.5)
        assert worker.worker.open_streams == 0
