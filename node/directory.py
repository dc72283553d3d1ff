"""The peer directory: what this node knows about other peers, from verified adverts only.

Pure bookkeeping, no I/O and no clock of its own: callers pass ``now_ms``
(wall-clock unix milliseconds) so the same code runs in real and virtual time.
Rules:

- only adverts that passed :func:`lpnode.protocol.verify_advert` are offered;
- a higher ``seq`` replaces a lower one; an equal or lower one is a replay;
- a peer leaves when its advert expires, or when it was directly connected,
  disconnected, and sent no newer advert within the grace period;
- after a peer leaves, its last seq is remembered until that advert would
  have expired, so replaying it cannot resurrect the peer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, replace

import trio
from lpnode.protocol.advert import CapabilityAdvert
from lpnode.protocol.errors import AdvertRejected

# The rejection that is about this node, not the advert: gossip relays such an advert (node/gossip.py).
DIRECTORY_FULL = "directory_full"


@dataclass(frozen=True)
class PeerRecord:
    advert: CapabilityAdvert
    received_at_ms: int  # local wall clock when this advert was admitted
    received_from: str  # the neighbour that relayed it (== advert.peer_id on a direct hop)
    connected: bool = False  # a direct connection is open now
    disconnected_at_ms: int | None = None  # set while a once-connected peer is disconnected

    @property
    def peer_id(self) -> str:
        return self.advert.peer_id


@dataclass(frozen=True)
class _Tombstone:
    seq: int
    until_ms: int


class PeerDirectory:
    def __init__(self, *, local_peer: str, max_peers: int, disconnect_grace_ms: int) -> None:
        self._local_peer = local_peer
        self._max_peers = max_peers
        self._grace_ms = disconnect_grace_ms
        self._records: dict[str, PeerRecord] = {}
        self._tombstones: dict[str, _Tombstone] = {}
        self._connected: set[str] = set()
        self._changed = trio.Event()
        # (deadline_ms, peer_id) at which a peer *may* have to go; stale entries (the peer
        # re-advertised or reconnected since) are skipped when popped. Keeps expiry O(log n)
        # per advert instead of a scan of the whole directory on every change.
        self._deadlines: list[tuple[int, str]] = []
        self._earlier_deadline = trio.Event()

    # ------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._records.values()))

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._records.get(peer_id)

    def peer_ids(self) -> frozenset[str]:
        return frozenset(self._records)

    async def wait_changed(self) -> None:
        """Return at the next change of the directory (a peer added, updated or removed)."""
        await self._changed.wait()

    # ------------------------------------------------------------ admission

    def check(self, advert: CapabilityAdvert, *, now_ms: int) -> None:
        """Raise :class:`AdvertRejected` if ``advert`` may not enter (state-dependent checks)."""
        if advert.peer_id == self._local_peer:
            raise AdvertRejected("self", "our own advert came back")
        known = self._records.get(advert.peer_id)
        last_seq = known.advert.seq if known else None
        tomb = self._tombstones.get(advert.peer_id)
        # A tombstone outlives its time until some other peer's expiry prunes it, in a quiet
        # network for good; past its time the advert it remembers is expired, so it guards nothing.
        if last_seq is None and tomb is not None and tomb.until_ms > now_ms:
            last_seq = tomb.seq
        if last_seq is not None and advert.seq <= last_seq:
            raise AdvertRejected("replayed", f"seq {advert.seq} <= known {last_seq}")
        if known is None and len(self._records) >= self._max_peers:
            raise AdvertRejected(DIRECTORY_FULL, f"{self._max_peers} peers known")

    def admit(self, advert: CapabilityAdvert, *, now_ms: int, received_from: str) -> PeerRecord:
        """Enter a verified advert (after :meth:`check`); returns the new record."""
        self.check(advert, now_ms=now_ms)
        connected = advert.peer_id in self._connected
        record = PeerRecord(advert=advert, received_at_ms=now_ms, received_from=received_from, connected=connected)
        self._records[advert.peer_id] = record
        self._tombstones.pop(advert.peer_id, None)
        self._push_deadline(advert.expires_at_ms, advert.peer_id)
        self._notify()
        return record

    # ------------------------------------------------------------ connectivity

    def mark_connected(self, peer_id: str) -> None:
        self._connected.add(peer_id)
        record = self._records.get(peer_id)
        if record is not None:
            self._records[peer_id] = replace(record, connected=True, disconnected_at_ms=None)
            self._notify()

    def mark_disconnected(self, peer_id: str, *, now_ms: int) -> None:
        self._connected.discard(peer_id)
        record = self._records.get(peer_id)
        if record is not None:
            self._records[peer_id] = replace(record, connected=False, disconnected_at_ms=now_ms)
            self._push_deadline(now_ms + self._grace_ms, peer_id)
            self._notify()

    def reconcile_connected(self, connected: frozenset[str], *, now_ms: int) -> None:
        """Make the connection marks match ``connected`` (the network's truth), after lost events."""
        for peer_id in connected - self._connected:
            self.mark_connected(peer_id)
        for peer_id in self._connected - connected:
            self.mark_disconnected(peer_id, now_ms=now_ms)

    # ------------------------------------------------------------ expiry

    def expire(self, *, now_ms: int) -> list[str]:
        """Drop peers whose advert expired or whose disconnect grace ran out; return their ids."""
        gone = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, peer_id = heapq.heappop(self._deadlines)
            record = self._records.get(peer_id)
            if record is None or not self._must_go(record, now_ms):
                continue
            del self._records[peer_id]
            self._tombstones[peer_id] = _Tombstone(record.advert.seq, record.advert.expires_at_ms)
            gone.append(peer_id)
        if gone:
            for peer_id, tomb in list(self._tombstones.items()):
                if tomb.until_ms <= now_ms:
                    del self._tombstones[peer_id]
            while len(self._tombstones) > self._max_peers:  # bounded: forget the oldest first
                del self._tombstones[next(iter(self._tombstones))]
            self._notify()
        return gone

    def _must_go(self, record: PeerRecord, now_ms: int) -> bool:
        if record.advert.expires_at_ms <= now_ms:
            return True
        return (
            record.disconnected_at_ms is not None
            and record.received_at_ms <= record.disconnected_at_ms  # silent since it disconnected
            and now_ms - record.disconnected_at_ms >= self._grace_ms
        )

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which :meth:`expire` may remove someone (may be early, never late)."""
        return self._deadlines[0][0] if self._deadlines else None

    async def wait_earlier_deadline(self) -> None:
        """Return when a deadline earlier than every known one appears."""
        await self._earlier_deadline.wait()

    def _push_deadline(self, deadline_ms: int, peer_id: str) -> None:
        earlier = not self._deadlines or deadline_ms < self._deadlines[0][0]
        heapq.heappush(self._deadlines, (deadline_ms, peer_id))
        if len(self._deadlines) > 8 * self._max_peers + 64:
            self._compact_deadlines()
        if earlier:
            self._earlier_deadline.set()
            self._earlier_deadline = trio.Event()

    def _compact_deadlines(self) -> None:
        """Keep one live deadline per peer: the heap stays bounded however often peers re-advertise."""
        live = {}
        for record in self._records.values():
            deadline = record.advert.expires_at_ms
            if record.disconnected_at_ms is not None and record.received_at_ms <= record.disconnected_at_ms:
                deadline = min(deadline, record.disconnected_at_ms + self._grace_ms)
            live[record.peer_id] = deadline
        self._deadlines = [(deadline, peer) for peer, deadline in live.items()]
        heapq.heapify(self._deadlines)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
