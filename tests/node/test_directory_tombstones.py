"""A departed peer's tombstone guards against replays only until the advert it remembers expires.

Review s10, item 3: ``check`` ignored a tombstone's time, and tombstones were pruned only when
some other peer left; in a quiet network a peer that came back with lower seqs (a reset clock,
a lost seq file) stayed out for good. Pure logic, no event loop.
"""

from __future__ import annotations

import pytest
from lpnode.protocol import AdvertRejected

from .test_directory import PEER, T0, advert, directory


def test_a_tombstone_past_its_time_no_longer_refuses_lower_seqs() -> None:
    d = directory()
    d.admit(advert(seq=100, ttl_ms=30_000), now_ms=T0, received_from=PEER.peer_id)
    d.mark_connected(PEER.peer_id)
    d.mark_disconnected(PEER.peer_id, now_ms=T0 + 1_000)
    assert d.expire(now_ms=T0 + 6_000) == [PEER.peer_id]  # gone after the grace; seq 100 remembered
    back = advert(seq=50, issued_at_ms=T0 + 20_000)
    with pytest.raises(AdvertRejected, match="replayed"):  # while seq 100's advert could still be replayed
        d.admit(back, now_ms=T0 + 20_000, received_from=PEER.peer_id)
    # nobody else left since, so nothing pruned the tombstone: its time alone decides
    later = advert(seq=51, issued_at_ms=T0 + 30_000)
    record = d.admit(later, now_ms=T0 + 30_000, received_from=PEER.peer_id)
    assert record.advert.seq == 51
