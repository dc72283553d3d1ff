"""Lost connection events no longer leave a node's view of its connections wrong for good.

Review s10, item 2: a node whose 600 connections closed at once lost DISCONNECTED events to full
buffers; its directory kept saying the bootstrap peer was connected, and its bootstrap keeper
waited for good for an event about that peer. Virtual time on a seeded in-memory hub.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import cast

import trio
import trio.testing
from lpnode.node.daemon import serve_node
from lpnode.node.network._memory_model import MemoryHubConfig
from lpnode.node.network.base import ConnectionEvent, Network, PeerId
from lpnode.node.network.memory import MemoryHub, MemoryNetwork, open_memory_hub
from lpnode.node.peering import MAX_BOOTSTRAP_BACKOFF_S, serve_bootstrap

from .test_gossip import config, key_for, static_offer, virtual_wall_clock

PLAIN_PEERS = 400  # their DISCONNECTEDs come in one burst, well past a 256-event buffer


async def _hold_connection(hub: MemoryHub, index: int, to: str, *, task_status: trio.TaskStatus[None]) -> None:
    """A plain peer (no node logic, like an inbound light client) that stays connected."""
    async with hub.open_network(key_for(index)) as net:
        await net.connect(to)
        task_status.started()
        await trio.sleep_forever()


async def _until(net: MemoryNetwork, done: Callable[[], bool]) -> None:
    """Wait on the network's own events (a buffer big enough for every one here) until ``done()``."""
    async with net.connection_events(buffer=4 * PLAIN_PEERS) as events:
        while not done():
            await events.receive()


async def test_the_directory_sees_a_disconnect_whose_event_was_lost_in_a_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_hub(seed=0) as hub,
        hub.open_network(key_for(1)) as b_net,
        hub.open_network(key_for(2)) as x_net,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            functools.partial(serve_node, config(), key_for(1), b_net, static_offer(), wall_clock=virtual_wall_clock)
        )
        for i in range(PLAIN_PEERS):
            await nursery.start(_hold_connection, hub, 1000 + i, x_net.listen_addrs()[0])
        x_config = config(bootstrap=(b_net.listen_addrs()[0],))
        x = await nursery.start(
            functools.partial(serve_node, x_config, key_for(2), x_net, static_offer(), wall_clock=virtual_wall_clock)
        )
        b_peer = key_for(1).peer_id

        def b_connected() -> bool | None:
            record = x.directory.get(b_peer)
            return None if record is None else record.connected

        with trio.fail_after(30):
            while not b_connected():
                await x.directory.wait_changed()
        hub.partition([x.peer_id])  # every connection of X closes at once
        with trio.fail_after(30):
            await _until(x_net, lambda: not x_net.connected_peers())
        assert hub.stats.events_dropped > 0  # the premise: events were lost
        with trio.fail_after(1):  # the lost DISCONNECTED once left it True until the advert expired
            while b_connected():
                await x.directory.wait_changed()
        nursery.cancel_scope.cancel()


class _EventsAllLost:
    """A network whose connection events never arrive: the worst a full buffer could do."""

    def __init__(self, inner: MemoryNetwork) -> None:
        self._inner = inner

    def connected_peers(self) -> frozenset[PeerId]:
        return self._inner.connected_peers()

    async def connect(self, addr: str) -> PeerId:
        return await self._inner.connect(addr)

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        return self._silent()

    @asynccontextmanager
    async def _silent(self) -> AsyncIterator[trio.MemoryReceiveChannel[ConnectionEvent]]:
        send, receive = trio.open_memory_channel[ConnectionEvent](0)
        async with send, receive:
            yield receive


async def test_the_bootstrap_keeper_redials_though_the_disconnect_event_was_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub_config = MemoryHubConfig(partition_timeout_s=2.0)
    async with (
        open_memory_hub(seed=0, config=hub_config) as hub,
        hub.open_network(key_for(1)) as bootstrap,
        hub.open_network(key_for(2)) as net,
        trio.open_nursery() as nursery,
    ):
        deaf = cast(Network, _EventsAllLost(net))
        await nursery.start(serve_bootstrap, deaf, (bootstrap.listen_addrs()[0],))
        with trio.fail_after(5):
            await _until(net, lambda: bootstrap.local_peer in net.connected_peers())
        hub.partition([net.local_peer])
        with trio.fail_after(5):
            await _until(net, lambda: not net.connected_peers())
        hub.heal()
        healed = trio.current_time()
        with trio.move_on_after(10 * MAX_BOOTSTRAP_BACKOFF_S):  # the old keeper waited for good
            await _until(net, lambda: bootstrap.local_peer in net.connected_peers())
        assert bootstrap.local_peer in net.connected_peers()
        assert trio.current_time() - healed <= MAX_BOOTSTRAP_BACKOFF_S + 1  # its next look, then one dial
        nursery.cancel_scope.cancel()
