"""Backends for the network conformance suite.

``open_group(n, links)`` yields ``n`` started networks connected along
``links`` (pairs of indices; default: everyone dials node 0). Each backend
returns only once every link is up and every node's topic subscriptions have
been seen by its direct neighbours (``wait_subscribed``), so tests never sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import pytest
import trio
from lpnode.node.network.base import ConnectionEventKind, Network
from lpnode.protocol.signing import NodeKey

Links = Sequence[tuple[int, int]]
GroupOpener = Callable[[int, Links | None], AbstractAsyncContextManager[list[Network]]]


def deterministic_key(index: int) -> NodeKey:
    return NodeKey(bytes([index + 1]) * 32)


def star(n: int) -> list[tuple[int, int]]:
    return [(i, 0) for i in range(1, n)]


@asynccontextmanager
async def _memory_group(n: int, links: Links | None) -> AsyncIterator[list[Network]]:
    from lpnode.node.network.memory import open_memory_hub

    async with open_memory_hub(seed=0) as hub, AsyncExitStack() as stack:
        nets: list[Network] = [
            await stack.enter_async_context(hub.open_network(deterministic_key(i))) for i in range(n)
        ]
        for a, b in links if links is not None else star(n):
            await nets[a].connect(nets[b].listen_addrs()[0])
        yield nets


@asynccontextmanager
async def _libp2p_group(n: int, links: Links | None) -> AsyncIterator[list[Network]]:
    from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network

    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    async with AsyncExitStack() as stack:
        nets: list[Network] = [
            await stack.enter_async_context(open_libp2p_network(deterministic_key(i), config)) for i in range(n)
        ]
        for a, b in links if links is not None else star(n):
            await nets[a].connect(nets[b].listen_addrs()[0])
        yield nets


@pytest.fixture(params=["memory", "libp2p"])
def open_group(request: pytest.FixtureRequest) -> GroupOpener:
    return _memory_group if request.param == "memory" else _libp2p_group  # type: ignore[return-value]


@pytest.fixture
def backend_name(open_group: GroupOpener) -> str:
    return "memory" if open_group is _memory_group else "libp2p"


async def wait_subscribed(net: Network, topic: str, peers: set[str]) -> None:
    """Return once ``net`` knows every one of ``peers`` is subscribed to ``topic``."""
    async with net.connection_events() as events:
        while not peers <= net.topic_peers(topic):
            async for event in events:
                if event.kind is ConnectionEventKind.SUBSCRIBED and event.topic == topic:
                    break


async def receive_one(channel: trio.MemoryReceiveChannel[object]) -> object:
    return await channel.receive()
