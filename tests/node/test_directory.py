"""Peer directory rules, as pure logic (no event loop needed for most)."""

from __future__ import annotations

import dataclasses

import pytest
from lpnode.node.directory import PeerDirectory
from lpnode.protocol import AdvertRejected, CapabilityAdvert, NodeKey
from lpnode.protocol.codec import PROTOCOL_VERSION

LOCAL = NodeKey(b"\x01" * 32)
PEER = NodeKey(b"\x02" * 32)
T0 = 1_800_000_000_000


def advert(key: NodeKey = PEER, seq: int = 1, issued_at_ms: int = T0, ttl_ms: int = 30_000) -> CapabilityAdvert:
    return CapabilityAdvert(
        peer_id=key.peer_id,
        seq=seq,
        issued_at_ms=issued_at_ms,
        expires_at_ms=issued_at_ms + ttl_ms,
        listen_addrs=(),
        software_version="0.1.0",
        protocol_version=PROTOCOL_VERSION,
        gpus=(),
        models=(),
        queue_depth=0,
        queue_capacity=1,
    )


def directory(max_peers: int = 10) -> PeerDirectory:
    return PeerDirectory(local_peer=LOCAL.peer_id, max_peers=max_peers, disconnect_grace_ms=5_000)


def rejection(d: PeerDirectory, a: CapabilityAdvert) -> str:
    with pytest.raises(AdvertRejected) as info:
        d.admit(a, now_ms=T0, received_from=a.peer_id)
    return info.value.reason


def test_higher_seq_replaces_lower_and_replays_are_refused() -> None:
    d = directory()
    d.admit(advert(seq=5), now_ms=T0, received_from=PEER.peer_id)
    assert rejection(d, advert(seq=5)) == "replayed"
    assert rejection(d, advert(seq=4)) == "replayed"
    d.admit(advert(seq=6), now_ms=T0 + 1, received_from="relay")
    record = d.get(PEER.peer_id)
    assert record is not None and record.advert.seq == 6 and record.received_from == "relay"


def test_own_advert_is_never_admitted() -> None:
    assert rejection(directory(), advert(key=LOCAL)) == "self"


def test_capacity_is_bounded_but_known_peers_still_update() -> None:
    d = directory(max_peers=1)
    d.admit(advert(), now_ms=T0, received_from=PEER.peer_id)
    assert rejection(d, advert(key=NodeKey(b"\x03" * 32))) == "directory_full"
    d.admit(advert(seq=2), now_ms=T0, received_from=PEER.peer_id)


def test_expiry_removes_and_remembers_seq_until_the_advert_would_expire() -> None:
    d = directory()
    d.admit(advert(seq=3, ttl_ms=10_000), now_ms=T0, received_from=PEER.peer_id)
    assert d.next_deadline_ms() == T0 + 10_000
    assert d.expire(now_ms=T0 + 9_999) == []
    assert d.expire(now_ms=T0 + 10_000) == [PEER.peer_id]
    assert len(d) == 0
    # a fresh advert with a higher seq brings it back
    d.admit(advert(seq=4, issued_at_ms=T0 + 10_000), now_ms=T0 + 10_000, received_from=PEER.peer_id)
    assert len(d) == 1


def test_disconnected_peer_leaves_after_grace_unless_it_speaks_again() -> None:
    d = directory()
    d.admit(advert(seq=1), now_ms=T0, received_from=PEER.peer_id)
    d.mark_connected(PEER.peer_id)
    assert d.get(PEER.peer_id).connected  # type: ignore[union-attr]
    d.mark_disconnected(PEER.peer_id, now_ms=T0 + 1_000)
    assert d.next_deadline_ms() == T0 + 6_000
    assert d.expire(now_ms=T0 + 5_999) == []
    assert d.expire(now_ms=T0 + 6_000) == [PEER.peer_id]
    # the same advert replayed later cannot resurrect it
    assert rejection(d, advert(seq=1)) == "replayed"


def test_newer_advert_after_disconnect_keeps_the_peer() -> None:
    d = directory()
    d.admit(advert(seq=1), now_ms=T0, received_from=PEER.peer_id)
    d.mark_connected(PEER.peer_id)
    d.mark_disconnected(PEER.peer_id, now_ms=T0 + 1_000)
    d.admit(advert(seq=2, issued_at_ms=T0 + 2_000), now_ms=T0 + 2_000, received_from="relay")
    assert d.expire(now_ms=T0 + 10_000) == []
    record = d.get(PEER.peer_id)
    assert record is not None and not record.connected
    # no busy loop: every deadline left is in the future
    deadline = d.next_deadline_ms()
    assert deadline is not None and deadline > T0 + 10_000


async def test_wait_changed_wakes_on_admission() -> None:
    import trio

    d = directory()
    woke = trio.Event()

    async def waiter() -> None:
        await d.wait_changed()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        d.admit(advert(), now_ms=T0, received_from=PEER.peer_id)
        await woke.wait()


def test_records_are_immutable_snapshots() -> None:
    d = directory()
    record = d.admit(advert(), now_ms=T0, received_from=PEER.peer_id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.connected = True  # type: ignore[misc]
