"""Evidence from a peer that is later banned is withdrawn: blames it decided are voided, bans resting on them lifted.

Real SQLite files; the colluders are two peers that return the same wrong output, so an honest peer checked by one
and tie-broken by the other is the odd one out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.store import Store, open_store
from lpnode.protocol import NodeKey
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.compare import Verdict
from lpnode.reputation.policy import blame_stands
from lpnode.reputation.store import (
    REPUTATION_MIGRATIONS,
    CheckEvidence,
    ReputationStore,
    model_family,
)

from tests.reputation.receipt_factory import KEYS, signed
from tests.reputation.stores import Clock, opened

HONEST, X1, X2, A, B, OTHER = KEYS
H = HONEST.peer_id
FAMILY = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)


def check(n: int, keys: Sequence[NodeKey], blamed: NodeKey) -> CheckEvidence:
    """``keys`` ran one job; ``blamed`` returned something else than the rest (who agree)."""
    receipts = [signed(k, b"odd%d" % n if k is blamed else b"same%d" % n) for k in keys]
    spec = verify_receipt(receipts[0]).spec
    return CheckEvidence(
        spec=spec,
        model_family=model_family(spec.model_id),
        verdict=Verdict.DISAGREE,
        receipts=receipts,
        blamed=(blamed.peer_id,),
        credited=tuple(k.peer_id for k in keys if k is not blamed),
        detail=[{"peers": [keys[0].peer_id, keys[1].peer_id], "verdict": "disagree", "reason": "ssim"}],
    )


async def framed_then_colluder_banned(rep: ReputationStore, clock: Clock) -> None:
    """Two colluders outvote H twice (H is banned), then honest A and B catch X1 twice (X1 is banned)."""
    for n in range(2):
        await rep.record_check(check(n, [HONEST, X1, X2], blamed=HONEST))
        clock.now += 60
    assert rep.is_banned(H) and rep.state(H, FAMILY).blames == 2
    for n in range(2, 4):
        await rep.record_check(check(n, [X1, A, B], blamed=X1))
        clock.now += 60


async def test_an_honest_peer_framed_by_colluders_is_unblamed_and_unbanned(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "lpnode.db"
    async with opened(path, clock) as rep:
        await framed_then_colluder_banned(rep, clock)
        assert rep.is_banned(X1.peer_id)
        state = rep.state(H, FAMILY)
        assert state.blames == 0 and state.voided == 2 and state.checks == 2  # neutral: no pass given back
        assert state.evidence.bad == pytest.approx(0.0, abs=1e-9)
        assert state.evidence.ban_bad == pytest.approx(0.0, abs=1e-9)
        assert state.evidence.good == 0.0
        assert not rep.is_banned(H)
        ban = rep.ban(H)
        assert ban is not None and ban.bans == 1 and ban.lifted == 1 and ban.lifted_at == ban.until
        described = rep.describe(H)
        assert described["banned"] is False and described["ban"]["lifted"] == 1
        assert described["families"][0]["voided_blames"] == 2 and described["families"][0]["blames"] == 0
        # the colluders' own standing is not touched by voiding: they were credited, not blamed
        assert rep.state(X2.peer_id, FAMILY).blames == 0
    async with opened(path, clock) as rep:  # all of it committed and read back
        assert not rep.is_banned(H) and rep.state(H, FAMILY).voided == 2 and rep.is_banned(X1.peer_id)


async def test_a_voided_blame_stays_in_the_evidence_marked_voided(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        await framed_then_colluder_banned(rep, clock)
        rows = await rep.evidence(peer_id=H)
        assert len(rows) == 2 and all(row["blamed"] == [H] for row in rows)  # kept, as it was signed
        for row in rows:
            assert row["voided"] is not None and X1.peer_id in row["voided"]["reason"]
        standing = await rep.evidence(peer_id=A.peer_id)  # X1's blames, decided by honest A and B, stand
        assert [row["voided"] for row in standing] == [None, None]


async def test_an_equivocation_ban_voids_too(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        await rep.record_check(check(0, [HONEST, X1, X2], blamed=HONEST))
        assert rep.state(H, FAMILY).blames == 1
        nonce = b"\x05" * 16
        await rep.record_equivocation(signed(X2, b"one", nonce=nonce), signed(X2, b"two", nonce=nonce))
        assert rep.is_banned(X2.peer_id)
        state = rep.state(H, FAMILY)
        assert state.blames == 0 and state.voided == 1 and state.evidence.bad == pytest.approx(0.0, abs=1e-9)
        (row,) = await rep.evidence(peer_id=H)
        assert row["voided"] is not None and X2.peer_id in row["voided"]["reason"]


async def test_a_blame_settling_after_a_deciders_ban_is_void_from_the_start(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        for n in range(2):
            await rep.record_check(check(n, [X1, A, B], blamed=X1))
        assert rep.is_banned(X1.peer_id)
        await rep.record_check(check(5, [HONEST, X1, X2], blamed=HONEST))  # was in flight at the ban
        state = rep.state(H, FAMILY)
        assert state.blames == 0 and state.voided == 1 and state.checks == 1 and state.evidence.bad == 0.0
        (row,) = await rep.evidence(peer_id=H)
        assert row["voided"] is not None


async def test_a_ban_resting_on_standing_blames_is_not_lifted(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        # OTHER is blamed once by the colluders and twice by honest peers: banned on standing evidence
        await rep.record_check(check(0, [OTHER, X1, X2], blamed=OTHER))
        for n in range(1, 3):
            await rep.record_check(check(n, [OTHER, A, B], blamed=OTHER))
        assert rep.is_banned(OTHER.peer_id)
        for n in range(3, 5):
            await rep.record_check(check(n, [X1, A, B], blamed=X1))
        assert rep.is_banned(X1.peer_id)
        state = rep.state(OTHER.peer_id, FAMILY)
        assert state.blames == 2 and state.voided == 1
        ban = rep.ban(OTHER.peer_id)
        assert rep.is_banned(OTHER.peer_id) and ban is not None and ban.lifted == 0


def test_a_blame_stands_while_the_majority_without_banned_peers_holds() -> None:
    assert blame_stands(["a", "b"], ["y"], set())
    assert not blame_stands(["a", "b"], ["y"], {"a"})
    assert blame_stands(["a", "b", "c", "d"], ["y"], {"a"})  # three of four still outvote y
    assert not blame_stands(["a", "b", "c"], ["y", "w"], {"a"})  # two of four is no majority
    assert blame_stands(["a", "b"], ["y"], {"y"})  # the blamed peer's own ban changes nothing


async def test_a_version_2_database_migrates(tmp_path: Path) -> None:
    """Rows from before get nothing voided or lifted; the new columns are written and read back."""
    clock = Clock()
    path = tmp_path / "lpnode.db"
    async with opened_at(path, 2) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO rep_peers (peer_id, model_family, good, bad, at, ban_good, ban_bad, jobs, consecutive,"
            " since_blame, checks, blames) VALUES (?, ?, 3.0, 2.0, ?, 3.0, 2.0, 5, 0, 0, 5, 2)",
            (H, FAMILY, clock.now),
        )
        await tx.execute(
            "INSERT INTO rep_bans (peer_id, until, reason, at, bans, evidence_id) VALUES (?, ?, 'failed checks', ?,"
            " 1, NULL)",
            (H, clock.now + 1000, clock.now),
        )
    async with opened(path, clock) as rep:
        row = await rep.db.fetch_one("SELECT version FROM schema_versions WHERE component = 'reputation'")
        assert row is not None and row["version"] == len(REPUTATION_MIGRATIONS) == 4
        assert rep.state(H, FAMILY).voided == 0 and rep.state(H, FAMILY).blames == 2
        ban = rep.ban(H)
        assert ban is not None and ban.lifted == 0 and ban.lifted_at is None and rep.is_banned(H)
        await rep.record_check(check(0, [HONEST, X1, X2], blamed=HONEST))
        await rep.record_check(check(1, [X2, A, B], blamed=X2))
        await rep.record_check(check(2, [X2, A, B], blamed=X2))  # X2 banned: H's blame from it is voided
        assert rep.state(H, FAMILY).voided == 1 and rep.is_banned(H)  # the migrated blames still ban
    async with opened(path, clock) as rep:
        assert rep.state(H, FAMILY).voided == 1 and rep.state(H, FAMILY).blames == 2


@asynccontextmanager
async def opened_at(path: Path, version: int) -> AsyncIterator[Store]:
    async with open_store(path, [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS[:version]]) as store:
        yield store


async def test_a_lifted_ban_does_not_lengthen_the_next(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        await framed_then_colluder_banned(rep, clock)
        assert not rep.is_banned(H)
        for n in range(10, 12):  # now honest peers outvote H: a ban on standing evidence
            await rep.record_check(check(n, [HONEST, A, B], blamed=HONEST))
        ban = rep.ban(H)
        assert ban is not None and rep.is_banned(H) and ban.bans == 2 and ban.lifted == 1 and ban.lifted_at is None
        assert ban.until - ban.at == rep.config.ban_duration_s  # the first, lifted, ban does not double it
