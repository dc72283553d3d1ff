"""What only the in-memory network promises: time, loss, partitions, scale.

Every test runs under an autojump MockClock, so ``trio.current_time()`` is
virtual and exact: a 50 ms link shows up as exactly 50 ms.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing
from lpnode.node.network.base import ByteStream, ConnectionEventKind, Network
from lpnode.node.network.memory import (
    LatencyModel,
    MemoryHub,
    MemoryHubConfig,
    MemoryNetwork,
    open_memory_hub,
)
from lpnode.protocol.errors import PeerUnreachable, StreamClosed
from lpnode.protocol.signing import NodeKey

from .conftest import wait_subscribed

TOPIC = "lpnode/test/1"
ECHO = "/lpnode/test-echo/1"


async def _echo(stream: ByteStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


def _key(index: int) -> NodeKey:
    # conftest's deterministic_key stops at 255 nodes
    return NodeKey(hashlib.sha256(b"memory-node-%d" % index).digest())


@asynccontextmanager
async def _nodes(hub: MemoryHub, n: int, links: Sequence[tuple[int, int]]) -> AsyncIterator[list[MemoryNetwork]]:
    async with AsyncExitStack() as stack:
        nets = [await stack.enter_async_context(hub.open_network(_key(i))) for i in range(n)]
        for a, b in links:
            await nets[a].connect(nets[b].listen_addrs()[0])
        yield nets


async def _settle_subscriptions(nets: Sequence[MemoryNetwork], topic: str) -> None:
    """Wait until every node knows all its neighbours are subscribed."""
    async with trio.open_nursery() as nursery:
        for net in nets:
            nursery.start_soon(wait_subscribed, net, topic, set(net.connected_peers()))


async def test_gossip_arrives_after_the_link_delay(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_memory_hub(latency=LatencyModel.constant(0.050)) as hub,
        _nodes(hub, 2, [(1, 0)]) as (a, b),
        a.subscribe(TOPIC),
        b.subscribe(TOPIC) as at_b,
    ):
        await _settle_subscriptions([a, b], TOPIC)
        start = trio.current_time()
        await a.publish(TOPIC, b"hi")
        msg = await at_b.receive()
        assert msg.data == b"hi"
        assert trio.current_time() - start == pytest.approx(0.050)


async def test_dial_and_stream_take_round_trips(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub(latency=LatencyModel.constant(0.050)) as hub, _nodes(hub, 2, []) as (a, b):
        assert isinstance(a, Network)
        b.set_stream_handler(ECHO, _echo)
        start = trio.current_time()
        await a.connect(b.listen_addrs()[0])
        assert trio.current_time() - start == pytest.approx(0.2)  # two round trips to dial
        start = trio.current_time()
        stream = await a.open_stream(b.local_peer, ECHO)
        assert isinstance(stream, ByteStream)
        assert trio.current_time() - start == pytest.approx(0.1)  # one round trip to negotiate
        start = trio.current_time()
        await stream.send_all(b"ping")
        assert trio.current_time() == start  # latency never blocks the sender
        assert await stream.receive_some() == b"ping"
        assert trio.current_time() - start == pytest.approx(0.1)  # there and back
        await stream.aclose()


async def test_stream_bandwidth_and_window(autojump_clock: trio.testing.MockClock) -> None:
    model = LatencyModel(median_s=0.010, bandwidth_bytes_per_s=1_000_000)
    async with open_memory_hub(latency=model) as hub, _nodes(hub, 2, [(0, 1)]) as (a, b):
        got = trio.Event()
        received = bytearray()

        async def sink(stream: ByteStream) -> None:
            while data := await stream.receive_some():
                received.extend(data)
            got.set()

        b.set_stream_handler("/sink/1", sink)
        stream = await a.open_stream(b.local_peer, "/sink/1")
        start = trio.current_time()
        await stream.send_all(b"x" * 2_000_000)
        await stream.aclose()
        await got.wait()
        assert len(received) == 2_000_000
        # 2 MB at 1 MB/s plus one link delay
        assert trio.current_time() - start == pytest.approx(2.010)


async def test_message_crosses_hops_with_summed_latency(autojump_clock: trio.testing.MockClock) -> None:
    delays = [0.010, 0.040, 0.025]  # a line 0 - 1 - 2 - 3 with a different delay on each link
    async with open_memory_hub() as hub, _nodes(hub, 4, []) as nets:
        for i, delay in enumerate(delays):
            hub.set_link_delay(nets[i].local_peer, nets[i + 1].local_peer, delay)
            await nets[i].connect(nets[i + 1].listen_addrs()[0])
        async with AsyncExitStack() as stack:
            channels = [await stack.enter_async_context(net.subscribe(TOPIC)) for net in nets]
            await _settle_subscriptions(nets, TOPIC)
            start = trio.current_time()
            await nets[0].publish(TOPIC, b"far")
            msg = await channels[3].receive()
            assert trio.current_time() - start == pytest.approx(sum(delays))
            assert (msg.origin, msg.received_from) == (nets[0].local_peer, nets[2].local_peer)
            for channel in channels[1:3]:
                assert (await channel.receive()).data == b"far"
            await hub.wait_idle()
            assert hub.stats.delivered == 3
            assert hub.stats.sent == 3  # nothing travels back towards the origin


async def test_loss_drops_the_configured_share(autojump_clock: trio.testing.MockClock) -> None:
    count = 2000
    async with (
        open_memory_hub(loss=0.25, seed=7) as hub,
        _nodes(hub, 2, [(0, 1)]) as (a, b),
        b.subscribe(TOPIC, buffer=count) as at_b,
    ):
        await _settle_subscriptions([a], TOPIC)
        for i in range(count):
            await a.publish(TOPIC, i.to_bytes(2, "big"))
        await hub.wait_idle()
        stats = hub.stats
        assert stats.dropped_loss + stats.delivered == count
        assert 0.22 < stats.dropped_loss / count < 0.28  # binomial sd is ~1 point
        arrived = 0
        while True:
            try:
                at_b.receive_nowait()
            except trio.WouldBlock:
                break
            arrived += 1
        assert arrived == stats.delivered


async def test_same_seed_same_losses(autojump_clock: trio.testing.MockClock) -> None:
    async def run(seed: int) -> list[bytes]:
        async with (
            open_memory_hub(loss=0.5, seed=seed) as hub,
            _nodes(hub, 2, [(0, 1)]) as (a, b),
            b.subscribe(TOPIC) as at_b,
        ):
            await _settle_subscriptions([a], TOPIC)
            for i in range(100):
                await a.publish(TOPIC, bytes([i]))
            await hub.wait_idle()
            return [m.data for m in [at_b.receive_nowait() for _ in range(hub.stats.delivered)]]

    assert await run(1) == await run(1)
    assert await run(1) != await run(2)


async def test_partition_blocks_gossip_and_heal_restores_it(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_memory_hub(latency=LatencyModel.constant(0.020)) as hub,
        _nodes(hub, 3, [(1, 0), (2, 0)]) as (a, b, c),
        a.subscribe(TOPIC) as at_a,
        b.subscribe(TOPIC) as at_b,
        c.subscribe(TOPIC) as at_c,
    ):
        await _settle_subscriptions([a, b, c], TOPIC)
        hub.partition([a.local_peer, c.local_peer], [b.local_peer])
        await b.publish(TOPIC, b"from the island")
        await a.publish(TOPIC, b"from the mainland")
        assert (await at_c.receive()).data == b"from the mainland"
        await hub.wait_idle()
        with pytest.raises(trio.WouldBlock):
            at_a.receive_nowait()
        with pytest.raises(trio.WouldBlock):
            at_b.receive_nowait()
        assert hub.stats.dropped_partition == 2  # b -> a, and a -> b
        hub.heal()  # well before the partition timeout: the connection survived
        assert b.local_peer in a.connected_peers()
        await b.publish(TOPIC, b"back")
        assert (await at_a.receive()).data == b"back"
        assert (await at_c.receive()).data == b"back"


async def test_partition_stalls_streams_then_times_out(autojump_clock: trio.testing.MockClock) -> None:
    config = MemoryHubConfig(partition_timeout_s=5.0, dial_timeout_s=3.0)
    async with (
        open_memory_hub(latency=LatencyModel.constant(0.010), config=config) as hub,
        _nodes(hub, 2, [(0, 1)]) as (a, b),
    ):
        b.set_stream_handler(ECHO, _echo)
        stream = await a.open_stream(b.local_peer, ECHO)
        await stream.send_all(b"before")
        assert await stream.receive_some() == b"before"

        # a short partition: bytes wait, then flow on heal, the stream survives
        hub.partition([a.local_peer])
        split = trio.current_time()
        await stream.send_all(b"during")

        async def heal_later() -> None:
            await trio.sleep(1.0)
            hub.heal()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal_later)
            assert await stream.receive_some() == b"during"
        assert trio.current_time() - split == pytest.approx(1.0 + 0.010)  # echoed on heal, one hop back

        # a long partition: the connection is dropped, the stream reads as ended
        async with a.connection_events() as events:
            hub.partition([a.local_peer])
            await stream.send_all(b"lost")
            assert await stream.receive_some() == b""
            event = await events.receive()
            assert (event.kind, event.peer) == (ConnectionEventKind.DISCONNECTED, b.local_peer)
        with pytest.raises(StreamClosed):
            await stream.send_all(b"more")
        assert b.local_peer not in a.connected_peers()
        with pytest.raises(PeerUnreachable):
            await a.connect(b.listen_addrs()[0])  # dialing into the partition times out
        hub.heal()
        await a.connect(b.listen_addrs()[0])  # the node redials, as it must with libp2p
        again = await a.open_stream(b.local_peer, ECHO)
        await again.send_all(b"after")
        assert await again.receive_some() == b"after"


async def test_full_subscription_buffer_drops_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_memory_hub() as hub,
        _nodes(hub, 2, [(0, 1)]) as (a, b),
        b.subscribe(TOPIC, buffer=4),
    ):
        await _settle_subscriptions([a], TOPIC)
        for i in range(10):
            await a.publish(TOPIC, bytes([i]))
        await hub.wait_idle()
        assert (hub.stats.delivered, hub.stats.dropped_full) == (4, 6)


async def test_inbound_streams_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def hold(stream: ByteStream) -> None:
        await release.wait()

    config = MemoryHubConfig(max_inbound_streams=2)
    async with open_memory_hub(config=config) as hub, _nodes(hub, 2, [(0, 1)]) as (a, b):
        b.set_stream_handler("/hold/1", hold)
        held = [await a.open_stream(b.local_peer, "/hold/1") for _ in range(2)]
        with pytest.raises(PeerUnreachable):
            await a.open_stream(b.local_peer, "/hold/1")
        release.set()
        for stream in held:
            assert await stream.receive_some() == b""  # the handler returned: closed for it
        await a.open_stream(b.local_peer, "/hold/1")


async def test_open_stream_dials_known_or_hinted_peers(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, _nodes(hub, 2, []) as (a, b):
        b.set_stream_handler(ECHO, _echo)
        with pytest.raises(PeerUnreachable):
            await a.open_stream(b.local_peer, ECHO)  # never heard of it: no address
        stream = await a.open_stream(b.local_peer, ECHO, b.listen_addrs())
        assert b.local_peer in a.connected_peers()
        await stream.aclose()


async def test_leaving_is_seen_and_aclose_is_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, _nodes(hub, 2, [(0, 1)]) as (a, b), a.connection_events() as events:
        await b.aclose()
        await b.aclose()
        event = await events.receive()
        assert (event.kind, event.peer) == (ConnectionEventKind.DISCONNECTED, b.local_peer)
        assert a.connected_peers() == frozenset()
        with pytest.raises(PeerUnreachable):
            await a.connect(b.listen_addrs()[0])


async def test_subscribed_event_for_peers_already_subscribed(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_hub() as hub, _nodes(hub, 2, []) as (a, b), b.subscribe(TOPIC):
        async with a.connection_events() as events:
            await a.connect(b.listen_addrs()[0])
            kinds = [(await events.receive()).kind for _ in range(2)]
        assert kinds == [ConnectionEventKind.CONNECTED, ConnectionEventKind.SUBSCRIBED]
        assert a.topic_peers(TOPIC) == {b.local_peer}


def _random_graph(n: int, extra: int, rng: random.Random) -> list[tuple[int, int]]:
    """A ring (so it is connected) plus ``extra`` random chords per node: degree about 2 + 2*extra."""
    links = {(i, (i + 1) % n) for i in range(n)}
    for i in range(n):
        for j in rng.sample(range(n), extra):
            if j != i and (j, i) not in links:
                links.add((i, j))
    return sorted(links)


@pytest.mark.parametrize("n", [200])
async def test_scale_every_node_hears_every_message(autojump_clock: trio.testing.MockClock, n: int) -> None:
    wall_start = time.perf_counter()
    links = _random_graph(n, 1, random.Random(0))  # ring + 1 chord each: ~4 neighbours per node
    async with (
        open_memory_hub(latency=LatencyModel.home_internet(), seed=0) as hub,
        _nodes(hub, n, links) as nets,
        AsyncExitStack() as stack,
    ):
        channels = [await stack.enter_async_context(net.subscribe(TOPIC, buffer=n)) for net in nets]
        await _settle_subscriptions(nets, TOPIC)
        virtual_start = trio.current_time()
        for i, net in enumerate(nets):
            await net.publish(TOPIC, i.to_bytes(2, "big"))
        heard = [set[int]() for _ in nets]

        async def drain(index: int) -> None:
            while len(heard[index]) < n - 1:
                heard[index].add(int.from_bytes((await channels[index].receive()).data, "big"))

        async with trio.open_nursery() as nursery:
            for index in range(n):
                nursery.start_soon(drain, index)
        virtual = trio.current_time() - virtual_start
        stats = hub.stats
    wall = time.perf_counter() - wall_start
    assert all(len(h) == n - 1 for h in heard)
    assert stats.delivered == n * (n - 1)
    print(
        f"\n{n} nodes, {len(links)} links: {stats.sent} hops, {stats.duplicates} duplicates, "
        f"spread in {virtual * 1000:.0f} ms virtual, {wall:.2f} s wall"
    )
    assert wall < 30  # generous for a loaded CI box; ~1 s here
