"""Spare job streams: opened ahead, one per peer, taken by the next job, closed unused at their ttl.

The first tests drive :class:`SpareStreams` alone on the in-memory network in virtual time
(an echo handler stands in for a worker); the last ones run real tiny-sdxl jobs through
``run_job`` with spares (real time: the model runs in the pool's threads).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.job_requester import run_job
from lpnode.node.network.base import ByteStream, Network
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.spare_streams import SpareStreams, open_spare_streams
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, T2I, Peer, no_exploring, peers, sees_models
from .test_gossip import key_for

ECHO = "/lpnode/test-echo/1"


class EchoServer:
    """Echoes each stream's bytes; ``ended`` fires for every stream the far side closed."""

    def __init__(self) -> None:
        self.streams = 0
        self.ended: trio.MemorySendChannel[int]
        self.ended, self.ends = trio.open_memory_channel[int](16)

    async def __call__(self, stream: ByteStream) -> None:
        self.streams += 1
        number = self.streams
        while data := await stream.receive_some():
            await stream.send_all(data)
        await self.ended.send(number)


@asynccontextmanager
async def two_nodes(server: EchoServer) -> AsyncIterator[tuple[Network, Network]]:
    async with (
        open_memory_hub() as hub,
        hub.open_network(key_for(0)) as requester,
        hub.open_network(key_for(1)) as worker,
    ):
        worker.set_stream_handler(ECHO, server)
        await requester.connect(worker.listen_addrs()[0])
        yield requester, worker


async def spare_when_ready(spares: SpareStreams, peer: str) -> ByteStream:
    stream = await spares.take(peer)  # waits for the open in progress
    assert stream is not None
    return stream


async def test_a_spare_is_opened_once_per_peer_and_works_when_taken(autojump_clock: trio.testing.MockClock) -> None:
    server = EchoServer()
    async with two_nodes(server) as (requester, worker), open_spare_streams(requester, ECHO, ttl_s=5) as spares:
        assert await spares.take(worker.local_peer) is None  # nothing opened yet
        spares.replenish(worker.local_peer)
        spares.replenish(worker.local_peer)  # one is already being opened: no second
        stream = await spare_when_ready(spares, worker.local_peer)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        await stream.aclose()
        assert await server.ends.receive() == 1
        assert server.streams == 1
        assert spares.counts == {"opened": 1, "taken": 1}


async def test_an_unused_spare_is_closed_at_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    server = EchoServer()
    async with two_nodes(server) as (requester, worker), open_spare_streams(requester, ECHO, ttl_s=5) as spares:
        started = trio.current_time()
        spares.replenish(worker.local_peer)
        assert await server.ends.receive() == 1  # the worker sees the spare end
        assert trio.current_time() - started >= 5
        assert await spares.take(worker.local_peer) is None
        assert spares.counts == {"opened": 1, "expired": 1}
        spares.replenish(worker.local_peer)  # and a new one can be opened after
        await spare_when_ready(spares, worker.local_peer)


async def test_leaving_the_block_closes_held_spares(autojump_clock: trio.testing.MockClock) -> None:
    server = EchoServer()
    async with two_nodes(server) as (requester, worker):
        async with open_spare_streams(requester, ECHO, ttl_s=60) as spares:
            spares.replenish(worker.local_peer)
            while not spares.held():
                await spares.wait_changed()
        with trio.fail_after(1):  # long before the ttl
            assert await server.ends.receive() == 1


async def test_peers_with_spares_are_bounded_and_failed_opens_leave_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = EchoServer()
    async with two_nodes(server) as (requester, worker), open_spare_streams(requester, ECHO, max_peers=1) as spares:
        stranger = key_for(7).peer_id  # not on the hub: the open fails
        spares.replenish(stranger)
        while spares.counts["open_failed"] == 0:
            await spares.wait_changed()
        assert spares.held() == frozenset()
        spares.replenish(worker.local_peer)
        spares.replenish(key_for(8).peer_id)  # over max_peers while the first is held
        await spare_when_ready(spares, worker.local_peer)
        assert spares.counts["full"] == 1


async def test_bad_settings_are_refused() -> None:
    async with open_memory_hub() as hub, hub.open_network(key_for(0)) as net:
        with pytest.raises(ValueError, match="ttl_s"):
            async with open_spare_streams(net, ECHO, ttl_s=0):
                pass
        with pytest.raises(ValueError, match="max_peers"):
            async with open_spare_streams(net, ECHO, max_peers=0):
                pass


# -- through run_job, with a real worker ----------------------------------------------------------


async def test_the_next_job_to_a_worker_runs_on_the_spare_opened_during_the_first(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with open_spare_streams(requester.node.network, JOB_PROTOCOL, ttl_s=BOUND_S) as spares:
            with trio.fail_after(BOUND_S):
                first = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, spares=spares)
                second = await run_job(
                    requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, rng=no_exploring(), spares=spares
                )
    for outcome in (first, second):
        assert verify_receipt(outcome.receipt_bytes) == outcome.receipt
        assert [a.outcome for a in outcome.attempts] == ["done"]
    assert second.outputs == first.outputs  # same job, same seed, same worker
    assert spares.counts["taken"] == 1 and spares.counts["stale"] == 0


async def test_a_dead_spare_costs_no_attempt_the_job_reopens_to_the_same_worker(pool: ModelPool) -> None:
    streams: list[ByteStream] = []
    workers: list[Peer] = []

    async def first_stream_dies(stream: ByteStream) -> None:
        # What a restarted worker leaves behind: the spare, opened before the job, ends unanswered.
        streams.append(stream)
        if len(streams) == 1:
            await stream.aclose()
            return
        assert workers[0].worker is not None
        await workers[0].worker.handle(stream)

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        workers.append(await start(1, pool=pool, handler=first_stream_dies))  # type: ignore[arg-type]
        await sees_models(requester.node, workers)
        async with open_spare_streams(requester.node.network, JOB_PROTOCOL, ttl_s=BOUND_S) as spares:
            with trio.fail_after(BOUND_S):
                spares.replenish(workers[0].peer_id)
                while not spares.held():
                    await spares.wait_changed()
                outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, spares=spares)
                while not spares.held():
                    await spares.wait_changed()
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(workers[0].peer_id, "done")]
    assert verify_receipt(outcome.receipt_bytes) == outcome.receipt
    assert spares.counts["taken"] == 1 and spares.counts["stale"] == 1
    assert len(streams) == 3  # the dead spare, the job's own stream, the spare opened during the job
