"""A reader that falls behind its connection-event buffer is told so (RESYNC), and the buffer stays bounded.

Review s10, item 2: events beyond the buffer were dropped silently, so a view kept from them
(the directory's connected marks, the bootstrap keeper) could stay wrong for good.
In-memory network in virtual time; the fan-out is shared by both backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing
from lpnode.node.network.base import ConnectionEvent, ConnectionEventKind
from lpnode.node.network.memory import MemoryHub, MemoryNetwork, open_memory_hub
from lpnode.protocol.signing import NodeKey

BUFFER = 4


def _key(index: int) -> NodeKey:
    return NodeKey(index.to_bytes(4, "big") * 8)


@asynccontextmanager
async def _peers(hub: MemoryHub, first: int, count: int) -> AsyncIterator[list[MemoryNetwork]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(hub.open_network(_key(first + i))) for i in range(count)]


def _queued(events: trio.MemoryReceiveChannel[ConnectionEvent]) -> list[ConnectionEvent]:
    out = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_a_reader_that_fell_behind_gets_one_resync_after_its_losses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_hub(seed=0) as hub,
        hub.open_network(_key(0)) as me,
        _peers(hub, 1, 10) as first,
        _peers(hub, 11, 3) as later,
        me.connection_events(buffer=BUFFER) as events,
    ):
        for peer in first:
            await me.connect(peer.listen_addrs()[0])  # nobody reads meanwhile: 10 events into 4 slots
        queued = _queued(events)
        assert [event.kind for event in queued] == [ConnectionEventKind.CONNECTED] * BUFFER + [
            ConnectionEventKind.RESYNC
        ]
        assert hub.stats.events_dropped == 10 - BUFFER
        # the reader caught up: events flow again, and a second overflow is reported again
        for peer in later:
            await me.connect(peer.listen_addrs()[0])
        assert [event.peer for event in _queued(events)] == [peer.local_peer for peer in later]
        for peer in first:
            await peer.aclose()
        kinds = [event.kind for event in _queued(events)]
        assert kinds == [ConnectionEventKind.DISCONNECTED] * BUFFER + [ConnectionEventKind.RESYNC]
        assert me.connected_peers() == {peer.local_peer for peer in later}


async def test_losses_while_the_resync_still_waits_need_no_second_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_hub(seed=0) as hub,
        hub.open_network(_key(0)) as me,
        _peers(hub, 1, 8) as peers,
        me.connection_events(buffer=BUFFER) as events,
    ):
        for peer in peers[:6]:
            await me.connect(peer.listen_addrs()[0])
        assert (await events.receive()).kind is ConnectionEventKind.CONNECTED  # one slot freed, RESYNC still queued
        for peer in peers[6:]:
            await me.connect(peer.listen_addrs()[0])
        # still BUFFER waiting (the marker holds the freed slot), and reading the marker covers these too
        kinds = [event.kind for event in _queued(events)]
        assert kinds == [ConnectionEventKind.CONNECTED] * (BUFFER - 1) + [ConnectionEventKind.RESYNC]
        assert hub.stats.events_dropped == 8 - BUFFER
