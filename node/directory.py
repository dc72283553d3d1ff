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

from collections.abc import Iterator
from dataclasses import dataclass, replace

import trio
from lpnode.protocol.advert import CapabilityAdvert
from lpnode.protocol.errors import AdvertRejected


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

    def check(self, advert: CapabilityAdvert) -> None:
        """Raise :class:`AdvertRejected` if ``advert`` may not enter (state-dependent checks)."""
        if advert.peer_id == self._local_peer:
            raise AdvertRejected("self", "our own advert came back")
        known = self._records.get(advert.peer_id)
        last_seq = known.advert.seq if known else None
        if last_seq is None and advert.peer_id in self._tombstones:
            last_seq = self._tombstones[advert.peer_id].seq
        if last_seq is not None and advert.seq <= last_seq:
            raise AdvertRejected("replayed", f"seq {advert.seq} <= known {last_seq}")
        if known is None and len(self._records) >= self._max_peers:
            raise AdvertRejected("directory_full", f"{self._max_peers} peers known")

    def admit(self, advert: CapabilityAdvert, *, now_ms: int, received_from: str) -> PeerRecord:
        """Enter a verified advert (after :meth:`check`); returns the new record."""
        self.check(advert)
        connected = advert.peer_id in self._connected
        record = PeerRecord(advert=advert, received_at_ms=now_ms, received_from=received_from, connected=connected)
        self._records[advert.peer_id] = record
        self._tombstones.pop(advert.peer_id, None)
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
            self._notify()

    # ------------------------------------------------------------ expiry

    def expire(self, *, now_ms: int) -> list[str]:
        """Drop peers whose advert expired or whose disconnect grace ran out; return their ids."""
        gone = []
        for peer_id, record in list(self._records.items()):
            expired = record.advert.expires_at_ms <= now_ms
            silent_since_disconnect = (
                record.disconnected_at_ms is not None
                and record.received_at_ms <= record.disconnected_at_ms
                and now_ms - record.disconnected_at_ms >= self._grace_ms
            )
            if expired or silent_since_disconnect:
                del self._records[peer_id]
                self._tombstones[peer_id] = _Tombstone(record.advert.seq, record.advert.expires_at_ms)
                gone.append(peer_id)
        while len(self._tombstones) > self._max_peers:  # bounded: forget the oldest first
            del self._tombstones[next(iter(self._tombstones))]
        for peer_id, tomb in list(self._tombstones.items()):
            if tomb.until_ms <= now_ms:
                del self._tombstones[peer_id]
        if gone:
            self._notify()
        return gone

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which :meth:`expire` could remove someone."""
        deadlines = [r.advert.expires_at_ms for r in self._records.values()]
        deadlines += [
            r.disconnected_at_ms + self._grace_ms
            for r in self._records.values()
            if r.disconnected_at_ms is not None and r.received_at_ms <= r.disconnected_at_ms
        ]
        deadlines += [t.until_ms for t in self._tombstones.values()]
        return min(deadlines, default=None)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
