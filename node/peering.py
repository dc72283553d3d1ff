"""Keeping connected: bootstrap peers always, directory peers up to a bound.

Gossip only reaches us over connections, and a direct connection is also how
we notice a dead peer within seconds (instead of at advert expiry). So:

- every ``--bootstrap`` address is dialed at start and redialed with capped
  exponential backoff whenever it is not connected; the cap is short
  (:data:`MAX_BOOTSTRAP_BACKOFF_S`): there are few such peers, the operator named
  them, and a restarted bootstrap node is alone until its peers redial it (with the
  directory's 60 s cap that was up to a minute);
- peers learned from adverts are dialed (a few at a time, with backoff per
  peer after failures) until ``max_connections`` direct connections are open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from lpnode.node.directory import PeerDirectory
from lpnode.node.network.base import ConnectionEvent, ConnectionEventKind, Network
from lpnode.protocol.errors import PeerUnreachable

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
# A handful of configured peers, each a refused connect per try while it is down: cheap to retry often.
MAX_BOOTSTRAP_BACKOFF_S = 8.0
PARALLEL_DIALS = 4
# A dial pass looks at the whole directory; adverts change it many times a second in
# a big network, so passes are spaced out rather than run on every change.
DIAL_PASS_MIN_INTERVAL_S = 1.0


@dataclass
class _Backoff:
    delay_s: float = MIN_BACKOFF_S
    retry_at: float = 0.0  # trio time
    max_delay_s: float = MAX_BACKOFF_S

    def failed(self, now: float) -> None:
        self.retry_at = now + self.delay_s
        self.delay_s = min(self.delay_s * 2, self.max_delay_s)


async def serve_bootstrap(
    network: Network, addrs: tuple[str, ...], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(_keep_connected, network, addr)
        task_status.started()


async def _keep_connected(network: Network, addr: str) -> None:
    backoff = _Backoff(max_delay_s=MAX_BOOTSTRAP_BACKOFF_S)
    peer = addr.rsplit("/p2p/", 1)[-1]
    async with network.connection_events() as events:
        while True:
            if peer not in network.connected_peers():
                try:
                    await network.connect(addr)
                    log.info("connected to bootstrap peer %s", addr)
                    backoff = _Backoff(max_delay_s=MAX_BOOTSTRAP_BACKOFF_S)
                except PeerUnreachable as exc:
                    log.warning("bootstrap peer %s unreachable (%s); retrying in %.0f s", addr, exc, backoff.delay_s)
                    backoff.failed(trio.current_time())
                    with trio.move_on_at(backoff.retry_at):
                        await _drain(events)  # stale events must not fill the channel meanwhile
                    continue
            await _wait_disconnected(network, events, peer)


async def _drain(events: trio.MemoryReceiveChannel[ConnectionEvent]) -> None:
    async for _ in events:
        pass


async def _wait_disconnected(network: Network, events: trio.MemoryReceiveChannel[ConnectionEvent], peer: str) -> None:
    """Return once ``peer`` is not connected.

    Events only say when to look again: the state is read from the network, and at least every
    :data:`MAX_BOOTSTRAP_BACKOFF_S`, so a lost event costs at most that long (it once cost the
    bootstrap link for good: review s10).
    """
    while peer in network.connected_peers():
        with trio.move_on_after(MAX_BOOTSTRAP_BACKOFF_S):
            async for event in events:
                if event.peer == peer or event.kind is ConnectionEventKind.RESYNC:
                    break


class _Wakeup:
    """A flag that stays set until cleared, so a wake-up that comes while nobody waits is not lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def _wake_on_changes(directory: PeerDirectory, wake: _Wakeup) -> None:
    while True:
        await directory.wait_changed()
        wake.set()


async def _wake_on_disconnects(events: trio.MemoryReceiveChannel[ConnectionEvent], wake: _Wakeup) -> None:
    # A closed connection frees room under max_connections, and may be a peer to redial, also
    # one whose record the directory does not hold (so no directory change would follow).
    async for event in events:
        if event.kind in (ConnectionEventKind.DISCONNECTED, ConnectionEventKind.RESYNC):
            wake.set()


async def serve_dialer(
    network: Network,
    directory: PeerDirectory,
    max_connections: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    backoffs: dict[str, _Backoff] = {}
    dialing: set[str] = set()
    limiter = trio.CapacityLimiter(PARALLEL_DIALS)
    # What may make a pass dial someone new: a directory change, a closed connection, or a
    # failed dial (its backoff is new: the parked pass could not plan its retry; it once waited
    # for the next directory change, in a quiet network for good: review s10).
    wake = _Wakeup()

    async def dial(peer: str, addrs: tuple[str, ...]) -> None:
        async with limiter:
            try:
                for addr in addrs:
                    try:
                        await network.connect(addr)
                        backoffs.pop(peer, None)
                        return
                    except PeerUnreachable:
                        continue
                backoffs.setdefault(peer, _Backoff()).failed(trio.current_time())
                wake.set()
                log.debug("could not dial %s at any of %d addresses", peer, len(addrs))
            finally:
                dialing.discard(peer)

    async with network.connection_events() as events, trio.open_nursery() as nursery:
        nursery.start_soon(_wake_on_changes, directory, wake)
        nursery.start_soon(_wake_on_disconnects, events, wake)
        task_status.started()
        while True:
            wake.clear()  # this pass sees everything up to now
            connected = network.connected_peers()
            now = trio.current_time()
            budget = max_connections - len(connected) - len(dialing)
            next_retry = float("inf")
            for record in directory:
                if budget <= 0:
                    break
                peer = record.peer_id
                if peer in connected or peer in dialing or not record.advert.listen_addrs:
                    continue
                backoff = backoffs.get(peer)
                if backoff is not None and backoff.retry_at > now:
                    next_retry = min(next_retry, backoff.retry_at)
                    continue
                dialing.add(peer)
                budget -= 1
                nursery.start_soon(dial, peer, record.advert.listen_addrs)
            for gone in set(backoffs) - directory.peer_ids():
                del backoffs[gone]
            with trio.move_on_at(next_retry):
                await wake.wait()
            await trio.sleep(DIAL_PASS_MIN_INTERVAL_S)
