"""Capability gossip: publish our advert, admit others' into the directory.

``serve_gossip`` runs four small loops in one nursery:

- publish our signed advert at start, every ``advert_interval_s``, and soon
  after any change (coalesced: ``advert_settle_s`` after the first change of a
  burst, and never more often than ``advert_min_gap_s``, since gossipsub
  silently drops floods);
- receive adverts the validator already admitted and enter them in the directory;
- track direct connections (the directory uses them to notice dead peers fast)
  and re-advertise when a new neighbour joins the topic, so it learns of us at once;
- expire peers exactly when their advert or disconnect grace runs out.

The validator runs inside the network before delivery *and* before
forwarding, so a bad advert is counted, dropped, and never passed on.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.directory import DIRECTORY_FULL, PeerDirectory
from lpnode.node.network.base import ConnectionEvent, ConnectionEventKind, GossipMessage, Network
from lpnode.protocol.advert import CapabilityAdvert, GpuInfo, ModelOffer, sign_advert, verify_advert
from lpnode.protocol.codec import PROTOCOL_VERSION
from lpnode.protocol.errors import AdvertRejected
from lpnode.protocol.jobs import JOB_FEATURES
from lpnode.protocol.names import ADVERT_TOPIC, SOFTWARE_VERSION
from lpnode.protocol.signing import NodeKey

log = logging.getLogger(__name__)

_VERIFIED_CACHE = 1024  # entries; more than a subscription's buffer, so delivered ones are found

WallClock = Callable[[], float]  # unix seconds; injected so simulations can run in virtual time


@dataclass(frozen=True)
class Offer:
    """What the node offers right now (the changing part of its advert)."""

    gpus: tuple[GpuInfo, ...]
    models: tuple[ModelOffer, ...]
    queue_depth: int
    queue_capacity: int


AdvertObserver = Callable[[CapabilityAdvert], None]


@dataclass
class GossipStats:
    published: int = 0
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    expired_peers: int = 0
    # called with every advert admitted into the directory, as it is admitted; for
    # measurements (bench/gossip.py, simnet) that need the moment of arrival
    observers: list[AdvertObserver] = field(default_factory=list)


ADVERT_SEQ_FILE = "advert-seq"  # in the data dir: the highest advert seq this node may have issued
# Seqs follow the wall clock in ms, so this much headroom is one file write a minute. A crash
# loses the unused rest: the next run's seqs start up to this far ahead of its clock, harmlessly.
SEQ_HEADROOM_MS = 60_000
_MAX_STORED_SEQ = 2**62  # far above any clock in ms; more is a damaged file, and would overflow seq


class AdvertSeqFile:
    """The highest advert seq a node may have issued, on disk across restarts.

    A restarted node must go on above its old seqs, or peers drop its new adverts as replays
    until its clock passes them: after the clock was stepped back, up to ``max_clock_skew_s``
    and longer (review s10). The clock alone cannot tell, so the bound is kept here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        """The stored bound; None if there is none to trust (missing, unreadable or damaged)."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read advert seq file %s (%s); seeding seqs from the clock", self.path, exc)
            return None
        try:
            value = int(text.strip())
        except ValueError:
            value = -1
        if not 0 <= value <= _MAX_STORED_SEQ:
            log.warning("advert seq file %s is damaged (%r); seeding seqs from the clock", self.path, text[:32])
            return None
        return value

    def store(self, value: int) -> None:
        """Replace the bound atomically and durably: a crash leaves the old file or the new one."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="ascii") as file:
            file.write(f"{value}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power loss too
        finally:
            os.close(dir_fd)


class AdvertPublisher:
    """Builds and signs our adverts; ``poke()`` asks for an early one.

    Seqs increase over the node's whole life, restarts included: ``seq_file`` keeps a bound
    above every seq issued, written before a seq past it goes out. With no bound on record (no
    data dir, a first start, a lost or damaged file) seqs start ``max_clock_skew_s`` ahead of the
    clock: that beats the seqs of a previous run that followed its clock (in a run, after its
    first ``max_clock_skew_s``), since peers refused adverts issued further ahead of their clocks.
    """

    def __init__(
        self,
        *,
        key: NodeKey,
        network: Network,
        offer: Callable[[], Offer],
        config: NodeConfig,
        wall_clock: WallClock,
        seq_file: AdvertSeqFile | None = None,
    ) -> None:
        self._key = key
        self._network = network
        self._offer = offer
        self._config = config
        self._wall_clock = wall_clock
        self._seq_file = seq_file
        stored = seq_file.load() if seq_file is not None else None
        if stored is None:  # best effort; see the class docstring
            stored = int(wall_clock() * 1000) + int(config.max_clock_skew_s * 1000)
        self._seq = stored  # the last seq issued, or a bound above all of them
        self._reserved = stored  # seqs up to this one need no new write
        self._poked = trio.Event()
        self.last: CapabilityAdvert | None = None

    def poke(self) -> None:
        self._poked.set()

    def build(self) -> CapabilityAdvert:
        now_ms = int(self._wall_clock() * 1000)
        # from the clock when it is ahead, so seqs say roughly when; never below the last one
        self._seq = max(self._seq + 1, now_ms)
        if self._seq > self._reserved:
            self._reserve(self._seq + SEQ_HEADROOM_MS)
        offer = self._offer()
        return CapabilityAdvert(
            peer_id=self._key.peer_id,
            seq=self._seq,
            issued_at_ms=now_ms,
            expires_at_ms=now_ms + int(self._config.advert_ttl_s * 1000),
            listen_addrs=tuple(self._network.listen_addrs()[:16]),
            software_version=SOFTWARE_VERSION,
            protocol_version=PROTOCOL_VERSION,
            gpus=offer.gpus,
            models=offer.models,
            queue_depth=offer.queue_depth,
            queue_capacity=offer.queue_capacity,
            job_features=JOB_FEATURES,
        )

    def _reserve(self, bound: int) -> None:
        self._reserved = bound  # also after a failed write: one warning per headroom, not per advert
        if self._seq_file is None:
            return
        # On the event loop: a few bytes and an fsync about once a minute, and build() stays sync.
        try:
            self._seq_file.store(bound)
        except OSError as exc:
            log.warning(
                "cannot write advert seq file %s (%s); a restart may look like a replay", self._seq_file.path, exc
            )

    def _store_last(self) -> None:
        """On a clean stop: keep the exact last seq, so the next start does not skip the headroom."""
        if self._seq_file is not None and self._reserved > self._seq:
            self._reserve(self._seq)

    async def run(self, stats: GossipStats) -> None:
        try:
            await self._publish_forever(stats)
        finally:
            self._store_last()

    async def _publish_forever(self, stats: GossipStats) -> None:
        last_publish = -float("inf")
        while True:
            wait_gap = last_publish + self._config.advert_min_gap_s - trio.current_time()
            if wait_gap > 0:
                await trio.sleep(wait_gap)
            self._poked = trio.Event()  # pokes from here on ask for the *next* advert
            advert = self.build()
            await self._network.publish(ADVERT_TOPIC, sign_advert(self._key, advert))
            self.last = advert
            stats.published += 1
            last_publish = trio.current_time()
            with trio.move_on_after(self._config.advert_interval_s):
                await self._poked.wait()
                # Changes come in bursts: a job queued, started and done are pool changes milliseconds
                # apart, each on that job's critical path. Waiting for the burst to settle puts them in
                # one advert, and its signing and gossip (a few ms of this thread) after the job's own
                # messages rather than between them (docs/benchmarks.md, "Adverts off the job's path").
                await trio.sleep(self._config.advert_settle_s)


class AdvertGate:
    """The topic validator: full admission check, counting every drop by reason."""

    def __init__(
        self,
        *,
        local_peer: str,
        directory: PeerDirectory,
        stats: GossipStats,
        config: NodeConfig,
        wall_clock: WallClock,
    ) -> None:
        self._directory = directory
        self._local_peer = local_peer
        self._stats = stats
        self._max_skew_ms = int(config.max_clock_skew_s * 1000)
        self._wall_clock = wall_clock
        # adverts the validator verified, awaiting delivery: saves a second signature check
        self._verified: dict[bytes, CapabilityAdvert] = {}

    def admit(self, msg: GossipMessage) -> CapabilityAdvert:
        """Verify ``msg`` against the signature, clocks and directory; raise AdvertRejected."""
        now_ms = self.now_ms()
        advert = verify_advert(msg.data, origin=msg.origin, now_ms=now_ms, max_clock_skew_ms=self._max_skew_ms)
        self._directory.check(advert, now_ms=now_ms)
        return advert

    def __call__(self, msg: GossipMessage) -> bool:
        if msg.origin == self._local_peer:
            # pubsub validates our own publications too (as libp2p does); ours are fine
            return True
        try:
            now_ms = self.now_ms()
            advert = verify_advert(msg.data, origin=msg.origin, now_ms=now_ms, max_clock_skew_ms=self._max_skew_ms)
            self._directory.check(advert, now_ms=now_ms)
        except AdvertRejected as exc:
            if exc.reason != DIRECTORY_FULL:
                self._stats.dropped[exc.reason] += 1
                log.debug("dropped advert from %s (via %s): %s", msg.origin, msg.received_from, exc)
                return False
            # Our directory's room is our limit, not a fault of the advert: it is relayed to peers
            # that may have room, and only not admitted here (counted on delivery). Refused, a node
            # full of (cheap) identities stopped every newcomer's advert from crossing it (review).
        self._verified[msg.data] = advert
        if len(self._verified) > _VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]
        return True

    def admit_delivered(self, msg: GossipMessage) -> CapabilityAdvert:
        """Admission for a message the validator passed: skip the signature check done there."""
        advert = self._verified.pop(msg.data, None)
        if advert is None:
            return self.admit(msg)
        # the directory may have moved on since the validator ran (a newer advert came first)
        self._directory.check(advert, now_ms=self.now_ms())
        return advert

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)


async def serve_gossip(
    *,
    network: Network,
    directory: PeerDirectory,
    publisher: AdvertPublisher,
    stats: GossipStats,
    config: NodeConfig,
    wall_clock: WallClock,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    gate = AdvertGate(
        local_peer=network.local_peer, directory=directory, stats=stats, config=config, wall_clock=wall_clock
    )
    async with (
        network.connection_events() as events,
        network.subscribe(ADVERT_TOPIC, gate) as adverts,
        trio.open_nursery() as nursery,
    ):
        for peer in network.connected_peers():
            directory.mark_connected(peer)
        nursery.start_soon(_receive_adverts, adverts, gate, directory, stats)
        nursery.start_soon(_track_connections, events, network, directory, publisher, gate)
        nursery.start_soon(_expire_peers, directory, stats, gate)
        nursery.start_soon(publisher.run, stats)
        task_status.started()


async def _receive_adverts(
    adverts: trio.MemoryReceiveChannel[GossipMessage],
    gate: AdvertGate,
    directory: PeerDirectory,
    stats: GossipStats,
) -> None:
    async for msg in adverts:
        try:
            advert = gate.admit_delivered(msg)
        except AdvertRejected as exc:
            stats.dropped[exc.reason] += 1
            continue
        is_new = directory.get(advert.peer_id) is None
        directory.admit(advert, now_ms=gate.now_ms(), received_from=msg.received_from)
        stats.accepted += 1
        for observe in stats.observers:
            observe(advert)
        if is_new:
            log.info("peer %s joined (%d models, %d devices)", advert.peer_id, len(advert.models), len(advert.gpus))


async def _track_connections(
    events: trio.MemoryReceiveChannel[ConnectionEvent],
    network: Network,
    directory: PeerDirectory,
    publisher: AdvertPublisher,
    gate: AdvertGate,
) -> None:
    async for event in events:
        if event.kind is ConnectionEventKind.CONNECTED:
            directory.mark_connected(event.peer)
        elif event.kind is ConnectionEventKind.DISCONNECTED:
            directory.mark_disconnected(event.peer, now_ms=gate.now_ms())
        elif event.kind is ConnectionEventKind.RESYNC:
            # Events were lost: a lost DISCONNECTED left a peer "connected" here for good (review s10)
            directory.reconcile_connected(network.connected_peers(), now_ms=gate.now_ms())
            if any(directory.get(peer) is None for peer in network.topic_peers(ADVERT_TOPIC)):
                publisher.poke()  # maybe a lost SUBSCRIBED of a newcomer, as below
        elif (
            event.kind is ConnectionEventKind.SUBSCRIBED
            and event.topic == ADVERT_TOPIC
            and directory.get(event.peer) is None
        ):
            # A newcomer learns of us at once rather than at our next periodic advert.
            # Only for peers we have not heard from: a reconnecting neighbour already has
            # our advert, and re-advertising to the whole network on every reconnect
            # turned connection churn into advert storms (bench/gossip.py, N = 20).
            publisher.poke()


async def _expire_peers(directory: PeerDirectory, stats: GossipStats, gate: AdvertGate) -> None:
    while True:
        for peer_id in directory.expire(now_ms=gate.now_ms()):
            stats.expired_peers += 1
            log.info("peer %s left (advert expired or disconnected)", peer_id)
        deadline_ms = directory.next_deadline_ms()
        # +1 ms: a deadline is inclusive, and the wall and trio clocks may round apart
        delay_s = (deadline_ms - gate.now_ms() + 1) / 1000 if deadline_ms is not None else math.inf
        with trio.move_on_after(max(0.0, delay_s)):
            await directory.wait_earlier_deadline()
