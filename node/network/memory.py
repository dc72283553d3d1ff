"""An in-process :class:`~lpnode.node.network.base.Network` in trio time.

Many nodes share one :class:`MemoryHub`; each node is a :class:`MemoryNetwork`
opened with ``hub.open_network(key)``. Run it under
``trio.testing.MockClock(autojump_threshold=0)`` and a thousand nodes with
realistic latency run in virtual time, deterministically for a given seed
and a given order of calls (trio itself shuffles runnable tasks, so the
order of concurrent app calls may vary; everything the hub decides does not).

What travels, and how:

* Topology is real. Gossip moves only over connections made with
  ``connect()`` (or implicitly by ``open_stream``), like a gossipsub mesh in
  which every connected subscriber is a mesh peer: a node forwards a message
  it sees for the first time, once, to its connected peers subscribed to the
  topic, except the one it came from and the origin, and only after its
  validator accepted it. A bounded seen cache per node drops the copies.
* Every gossip hop and every subscription announcement is one entry in the
  hub's heap of timed deliveries, run by one scheduler task: a million hops
  are a million tuples, not a million tasks. Ties break by insertion order.
  With a jittery latency model those deliveries land on a 1 ms grid
  (``MemoryHubConfig.time_quantum_s``) so that they share scheduler wake-ups.
* Injected loss drops gossip copies per hop. Subscription announcements and
  stream bytes are never lost: they ride a reliable stream in libp2p too.
* ``partition(*groups)`` cuts links between groups: gossip across is dropped
  (and counted), subscription announcements wait for ``heal()``, streams stall
  (see ``_memory_link``), dials into the partition time out. A connection cut
  for longer than ``MemoryHubConfig.partition_timeout_s`` is closed on both
  sides (DISCONNECTED, streams reset); ``heal()`` does not redial it, the node
  must, as it would have to with libp2p.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

import trio
from lpnode.protocol.errors import PeerUnreachable
from lpnode.protocol.signing import NodeKey

from ._memory_link import Connection, MemoryStream, Partitions
from ._memory_model import (
    ZERO_LATENCY,
    HubStats,
    LatencyModel,
    MemoryHubConfig,
    format_address,
    parse_address,
)
from ._memory_node import MemoryNetwork

__all__ = [
    "HubStats",
    "LatencyModel",
    "MemoryHub",
    "MemoryHubConfig",
    "MemoryNetwork",
    "MemoryStream",
    "open_memory_hub",
]

logger = logging.getLogger(__name__)

# TCP connect, Noise XX and muxer negotiation, pipelined: about two round trips
_DIAL_ROUND_TRIPS = 2
# deliveries run between checkpoints, so subscribers drain while the heap is busy
_BATCH = 256

_Callback = Callable[[float, Any], None]


class MemoryHub:
    """The medium every node of one simulation shares. Made by :func:`open_memory_hub`."""

    def __init__(self, *, latency: LatencyModel, loss: float, seed: int, config: MemoryHubConfig) -> None:
        self.latency = latency
        self.config = config
        self._seed = seed
        self._rng = random.Random(seed)
        self._quantum = config.quantum_for(latency)
        self._loss = 0.0
        self.set_loss(loss)
        self._stats = HubStats()
        self._partitions = Partitions()
        self._nodes: dict[str, MemoryNetwork] = {}
        self._by_port: dict[int, MemoryNetwork] = {}
        self._next_port = 0
        self._links: dict[tuple[str, str], Connection] = {}
        self._link_delay_overrides: dict[tuple[str, str], float] = {}
        self._deferred: list[tuple[_Callback, Any]] = []  # control messages held by a partition
        self._next_message_id = 0
        self._in_flight = 0  # gossip and announcements on the heap (not timers): what wait_idle waits out
        self._heap: list[tuple[float, int, _Callback, Any]] = []
        self._seq = 0
        self._wake: trio.CancelScope | None = None
        self._idle = trio.lowlevel.ParkingLot()
        self._closed = False

    # -- public knobs ---------------------------------------------------

    @property
    def stats(self) -> HubStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def set_loss(self, rate: float) -> None:
        """Drop this share of gossip copies, per hop, from now on (0 ≤ rate ≤ 1)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("loss rate must be within [0, 1]")
        self._loss = rate

    def set_link_delay(self, a: str, b: str, delay_s: float) -> None:
        """Fix the one-way delay between ``a`` and ``b`` (seconds), now and for later connections."""
        if delay_s < 0:
            raise ValueError("delay must not be negative")
        key = _pair_key(a, b)
        self._link_delay_overrides[key] = delay_s
        if (conn := self._links.get(key)) is not None:
            conn.delay_s = delay_s

    def link_delay(self, a: str, b: str) -> float:
        """The base one-way delay between two peers, connected or not (seconds)."""
        key = _pair_key(a, b)
        if (conn := self._links.get(key)) is not None:
            return conn.delay_s
        if (fixed := self._link_delay_overrides.get(key)) is not None:
            return fixed
        # string seeds hash with SHA-512: stable across processes, unlike hash()
        return self.latency.link_delay(random.Random(f"{self._seed}/{key[0]}/{key[1]}"))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups; peers named nowhere form one more group.

        Replaces any earlier partition.
        """
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for peer in group:
                if peer in group_of:
                    raise ValueError(f"peer {peer} is in two groups")
                group_of[peer] = index
        parts = self._partitions
        parts.group_of = group_of
        parts.since = trio.current_time()
        parts.epoch += 1
        deadline = parts.since + self.config.partition_timeout_s
        for conn in self._links.values():
            if conn.blocked():
                self._at(deadline, self._partition_expired, (conn, parts.epoch))
        parts.heal_lot.unpark_all()  # waiters on a link this partition no longer cuts

    def heal(self) -> None:
        """Remove the partition: stalled streams and held announcements move again."""
        parts = self._partitions
        parts.group_of = None
        parts.since = math.inf
        parts.epoch += 1
        parts.heal_lot.unpark_all()
        now = trio.current_time()
        deferred, self._deferred = self._deferred, []
        for callback, arg in deferred:
            self._in_flight += 1
            self._at(now, callback, arg)

    async def wait_idle(self) -> None:
        """Return once no gossip or announcement is in flight (stream bytes are not counted).

        Lets a test assert that something did *not* arrive without sleeping.
        """
        await trio.lowlevel.checkpoint()
        while self._in_flight:
            await self._idle.park()

    def open_network(self, key: NodeKey) -> AbstractAsyncContextManager[MemoryNetwork]:
        """Join the hub as the node owning ``key``; leaving the context closes it."""
        return self._run_network(key)

    # -- scheduler --------------------------------------------------------

    def _at(self, due: float, callback: _Callback, arg: Any) -> None:
        if quantum := self._quantum:
            # the small slack keeps times already on the grid (up to float error) where they are
            due = math.ceil(due / quantum - 1e-6) * quantum
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, callback, arg))
        wake = self._wake
        if wake is not None and due < wake.deadline:
            wake.deadline = due  # cut the scheduler's sleep short; no task, no event

    async def _run_scheduler(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        task_status.started()
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as wake:
                self._wake = wake
                await trio.sleep_forever()
            self._wake = None
            now = trio.current_time()
            for _ in range(_BATCH):
                if not heap or heap[0][0] > now:
                    break
                due, _seq, callback, arg = heapq.heappop(heap)
                # the entry's own due time, not `now`: hops sum exactly even on a real clock
                callback(due, arg)
            if not self._in_flight:
                self._idle.unpark_all()

    # -- what nodes call ----------------------------------------------------

    def _new_message_id(self) -> int:
        self._next_message_id += 1
        return self._next_message_id

    def _gossip(self, conn: Connection, src: str, deliver: _Callback, now: float, message: Any) -> None:
        """Put one gossip copy on a link. The hot path of a big run: keep it flat."""
        if self._partitions.group_of is not None and conn.blocked():
            self._stats.dropped_partition += 1
            return
        if self._loss and self._rng.random() < self._loss:
            self._stats.dropped_loss += 1
            return
        self._stats.sent += 1
        self._in_flight += 1
        self._at(now + conn.one_way_delay(), deliver, (conn, src, message))

    def _announce(self, conn: Connection, src: MemoryNetwork, dst: MemoryNetwork, now: float, changes: Any) -> None:
        self._in_flight += 1
        self._at(now + conn.one_way_delay(), dst._on_control, (conn, src.local_peer, changes))

    def _defer(self, callback: _Callback, arg: Any) -> None:
        self._deferred.append((callback, arg))

    def _partition_expired(self, _due: float, arg: tuple[Connection, int]) -> None:
        conn, epoch = arg
        if epoch == self._partitions.epoch and not conn.closed and conn.blocked():
            logger.debug("partition outlasted the timeout: closing %s <-> %s", conn.a, conn.b)
            self._disconnect(conn)

    def _disconnect(self, conn: Connection) -> None:
        key = _pair_key(conn.a, conn.b)
        if self._links.get(key) is conn:
            del self._links[key]
        conn.close()
        for here, there in ((conn.a, conn.b), (conn.b, conn.a)):
            if (node := self._nodes.get(here)) is not None:
                node._drop_neighbour(there, conn)

    async def _dial(self, local: MemoryNetwork, addr: str) -> str:
        port, peer = parse_address(addr)
        if peer == local.local_peer:
            raise PeerUnreachable("a node cannot dial itself")
        if peer in local._neighbours:
            await trio.lowlevel.checkpoint()
            return peer
        remote = self._by_port.get(port)
        if remote is None or remote.local_peer != peer or remote.closed:
            await trio.lowlevel.checkpoint()
            raise PeerUnreachable(f"nothing listens at {addr}")  # refused at once, like a closed port
        parts = self._partitions
        if parts.blocked(local.local_peer, peer):
            with trio.move_on_after(self.config.dial_timeout_s):
                while parts.blocked(local.local_peer, peer):
                    await parts.heal_lot.park()
            if parts.blocked(local.local_peer, peer):
                raise PeerUnreachable(f"dial to {addr} timed out (partitioned)")
        delay = self.link_delay(local.local_peer, peer)
        await trio.sleep(_DIAL_ROUND_TRIPS * 2 * delay)
        if local.closed:
            raise trio.ClosedResourceError("network closed while dialing")
        if remote.closed:
            raise PeerUnreachable(f"{peer} left while we dialed it")
        key = _pair_key(local.local_peer, peer)
        if key in self._links:
            return peer  # the other side (or a concurrent dial of ours) got there first
        conn = Connection(
            key[0],
            key[1],
            delay_s=delay,
            jitter_s=self.latency.jitter_s,
            bandwidth=self.latency.bandwidth_bytes_per_s,
            rng=self._rng,
            partitions=parts,
        )
        self._links[key] = conn
        now = trio.current_time()
        local._add_neighbour(remote, conn, now)
        remote._add_neighbour(local, conn, now)
        return peer

    # -- lifecycles -----------------------------------------------------------

    @asynccontextmanager
    async def _run_network(self, key: NodeKey) -> AsyncIterator[MemoryNetwork]:
        if self._closed:
            raise trio.ClosedResourceError("the hub is closed")
        peer = key.peer_id
        if peer in self._nodes:
            raise ValueError(f"{peer} is already on this hub")
        async with trio.open_nursery() as nursery:
            # handlers live in a nursery of their own: aclose() cancels it, and
            # must not cancel the caller's code inside this context
            handlers: trio.Nursery = await nursery.start(_host_handlers)
            self._next_port += 1
            net = MemoryNetwork(self, peer, format_address(self._next_port, peer), handlers)
            self._nodes[peer] = net
            self._by_port[self._next_port] = net
            try:
                yield net
            finally:
                await net.aclose()

    def _unregister(self, net: MemoryNetwork) -> None:
        port, peer = parse_address(net.listen_addrs()[0])
        if self._nodes.get(peer) is net:
            del self._nodes[peer]
        if self._by_port.get(port) is net:
            del self._by_port[port]


async def _host_handlers(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


@asynccontextmanager
async def open_memory_hub(
    *,
    latency: LatencyModel | None = None,
    loss: float = 0.0,
    seed: int = 0,
    config: MemoryHubConfig | None = None,
) -> AsyncIterator[MemoryHub]:
    """Open a hub: ``latency`` (default zero), per-hop gossip ``loss`` rate, RNG ``seed``.

    Leaving the context closes any node still open on it.
    """
    hub = MemoryHub(latency=latency or ZERO_LATENCY, loss=loss, seed=seed, config=config or MemoryHubConfig())
    async with trio.open_nursery() as nursery:
        await nursery.start(hub._run_scheduler)
        try:
            yield hub
        finally:
            hub._closed = True
            for net in list(hub._nodes.values()):
                await net.aclose()
            nursery.cancel_scope.cancel()
