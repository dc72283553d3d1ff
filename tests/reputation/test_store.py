"""The reputation store on real SQLite files: checks, scores, bans, equivocation proof, reload, kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.store import open_store
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.compare import Verdict
from lpnode.reputation.errors import ReputationError
from lpnode.reputation.scoring import Evidence, ScoringConfig, after_check
from lpnode.reputation.store import (
    REPUTATION_MIGRATIONS,
    CheckEvidence,
    NotEquivocation,
    model_family,
    open_reputation,
)

from tests.reputation.receipt_factory import KEYS, signed
from tests.reputation.stores import Clock, opened

A, B, C = (k.peer_id for k in KEYS[:3])
ROOT = Path(__file__).resolve().parents[2]


def check(n: int, blamed: tuple[str, ...] = (C,)) -> CheckEvidence:
    """A, B and C ran one job; the peers in ``blamed`` returned something else."""
    receipts = [signed(k, b"bad%d" % n if k.peer_id in blamed else b"good%d" % n) for k in KEYS[:3]]
    spec = verify_receipt(receipts[0]).spec
    credited = tuple(p for p in (A, B, C) if p not in blamed)
    return CheckEvidence(
        spec=spec,
        model_family=model_family(spec.model_id),
        verdict=Verdict.DISAGREE if blamed else Verdict.AGREE,
        receipts=receipts,
        blamed=blamed,
        credited=credited,
        detail=[{"peers": [A, C], "verdict": "disagree", "reason": "ssim"}],
    )


async def test_blames_lower_a_score_and_two_in_a_row_ban(tmp_path: Path) -> None:
    clock = Clock()
    family = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        new = rep.score(A, family)
        assert 0.05 < new < 0.2  # a newcomer: neither trusted nor shut out
        await rep.record_check(check(0))
        assert not rep.is_banned(C)  # one blame never bans
        await rep.record_check(check(1))
        assert rep.is_banned(C) and not rep.is_banned(A) and not rep.is_banned(B)
        ban = rep.ban(C)
        assert ban is not None and ban.reason == "failed checks" and ban.until > clock.now
        assert rep.score(A, family) > new > rep.score(C, family)
        assert rep.state(C, family).blames == 2 and rep.state(A, family).checks == 2
        assert rep.history(C, family).consecutive_agreements == 0
        assert rep.history(A, family).consecutive_agreements == 2
        evidence = await rep.evidence(peer_id=C)
        assert [e["verdict"] for e in evidence] == ["disagree"] * 2
        assert all(len(e["receipts"]) == 3 and e["blamed"] == [C] for e in evidence)
        assert await rep.evidence_count(C) == 2
        described = rep.describe(C)
        assert described["banned"] and described["families"][0]["blames"] == 2
        assert described["families"][0]["ban_log_ratio"] >= ScoringConfig().ban_log_ratio
        clock.now = ban.until + 1  # the ban ends on its own
        assert not rep.is_banned(C)
        await rep.record_check(check(2))  # blamed again: banned again, for twice as long
        again = rep.ban(C)
        assert again is not None and again.bans == 2
        assert again.until - again.at == pytest.approx(2 * (ban.until - ban.at))
        scores = {p: rep.score(p, family) for p in (A, B, C)}
    # everything comes back from the file
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        assert {p: rep.score(p, family) for p in (A, B, C)} == scores
        assert rep.is_banned(C) and rep.ban(C) == again
        assert rep.counters()["checks"] == 3


async def test_the_store_takes_the_simulations_step_for_the_ban(tmp_path: Path) -> None:
    """Blame, passed checks, blame: the store's evidence and ban are scoring.after_check's, which policy_sim takes.
    With the defaults two blames ban when at most 27 passed checks lie between them (2 ln 50 - 27 * 0.103 >= 5)."""
    config = ScoringConfig()
    family = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)
    for passes, banned in ((27, True), (28, False)):
        clock = Clock()
        expected = Evidence()
        async with opened(tmp_path / f"{passes}.db", clock, config) as rep:
            for n in range(passes + 2):
                blamed = n in (0, passes + 1)
                clock.now += 60.0
                await rep.record_check(check(n, blamed=(C,) if blamed else ()))
                expected, ban = after_check(expected, clock.now, config, blamed=blamed)
                assert rep.state(C, family).evidence == expected and rep.is_banned(C) == ban
            assert rep.is_banned(C) is banned


async def test_a_database_from_before_the_ban_counts_migrates(tmp_path: Path) -> None:
    """Version 1 rows get ban counts equal to the counts the ban test read until then: no decision changes."""
    clock = Clock()
    family = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)
    path = tmp_path / "lpnode.db"
    async with open_store(path, [*JOB_MIGRATIONS, REPUTATION_MIGRATIONS[0]]) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO rep_peers (peer_id, model_family, good, bad, at, jobs, consecutive, since_blame, checks,"
            " blames) VALUES (?, ?, 30.0, 1.0, ?, 40, 30, 31, 31, 1)",
            (C, family, clock.now),
        )
    async with opened(path, clock) as rep:
        row = await rep.db.fetch_one("SELECT version FROM schema_versions WHERE component = 'reputation'")
        assert row is not None and row["version"] == len(REPUTATION_MIGRATIONS)
        state = rep.state(C, family)
        assert state.evidence == Evidence(30.0, 1.0, clock.now, ban_good=30.0, ban_bad=1.0)
        assert state.history.jobs == 40 and state.blames == 1
        await rep.record_check(check(0))  # a second blame after 30 passed checks: not enough
        assert not rep.is_banned(C)
        await rep.record_check(check(1))  # a third, right after: the ratio reaches 3 ln 50 - 30 * 0.103 >= 5
        assert rep.is_banned(C)
        saved = rep.state(C, family).evidence
    async with opened(path, clock) as rep:  # the new columns are written and read back
        assert rep.state(C, family).evidence == saved and saved.ban_bad == pytest.approx(3.0)


async def test_honest_agreement_raises_both_scores(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        family = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)
        for n in range(10):
            await rep.record_check(check(n, blamed=()))
        assert all(rep.score(p, family) > 0.6 for p in (A, B, C))  # 11 good of 12 with the prior
        assert not any(rep.is_banned(p) for p in (A, B, C))
        history = await rep.note_job(A, family, 2.5)
        assert history.jobs == 1 and rep.counters()["job_mpx_steps"] == 2.5
        await rep.note_check_compute(1, 0.5)
        assert rep.overhead() == pytest.approx(0.2)


async def test_jobs_noted_in_a_batch_count_as_one_by_one_and_survive_a_restart(tmp_path: Path) -> None:
    path, clock = tmp_path / "lpnode.db", Clock()
    async with opened(path, clock) as rep:
        await rep.note_jobs([(A, "sdxl", 1.0), (A, "sdxl", 2.0), (B, "sdxl", 0.5), (A, "svd", 4.0)], skipped=2)
        await rep.note_jobs([])  # nothing to write
        assert (rep.history(A, "sdxl").jobs, rep.history(B, "sdxl").jobs, rep.history(A, "svd").jobs) == (2, 1, 1)
        assert rep.counters()["jobs"] == 4 and rep.counters()["job_mpx_steps"] == 7.5
        assert rep.counters()["checks_skipped"] == 2
    async with opened(path, clock) as rep:
        assert rep.history(A, "sdxl").jobs == 2 and rep.counters()["checks_skipped"] == 2


async def test_two_conflicting_receipts_for_one_job_id_ban_at_once(tmp_path: Path) -> None:
    nonce = b"\x01" * 16
    first, second = signed(KEYS[3], b"one", nonce=nonce), signed(KEYS[3], b"two", nonce=nonce)
    async with opened(tmp_path / "lpnode.db", Clock()) as rep:
        with pytest.raises(NotEquivocation):
            await rep.record_equivocation(first, signed(KEYS[3], b"one", nonce=b"\x02" * 16))
        with pytest.raises(ReputationError):  # a receipt that does not verify is no evidence
            await rep.record_equivocation(first, second[:-1] + bytes([second[-1] ^ 1]))
        evidence_id = await rep.record_equivocation(first, second)
        ban = rep.ban(KEYS[3].peer_id)
        assert rep.is_banned(KEYS[3].peer_id) and ban is not None and ban.reason == "equivocation"
        (row,) = await rep.evidence(peer_id=KEYS[3].peer_id)
        assert row["id"] == evidence_id and row["kind"] == "equivocation"
        assert [r["receipt"] for r in row["receipts"]] == [first, second]


async def test_a_check_receipt_conflicting_with_a_stored_one_is_proof(tmp_path: Path) -> None:
    nonce = b"\x07" * 16
    honest = [signed(KEYS[0], b"same"), signed(KEYS[1], b"same")]
    async with opened(tmp_path / "lpnode.db", Clock()) as rep:
        spec = verify_receipt(honest[0]).spec
        base = CheckEvidence(spec, model_family(spec.model_id), Verdict.AGREE, [], (), (A, B, KEYS[4].peer_id), [])
        await rep.record_check(
            CheckEvidence(**{**base.__dict__, "receipts": [*honest, signed(KEYS[4], b"same", nonce=nonce)]})
        )
        assert not rep.is_banned(KEYS[4].peer_id)
        # the same worker, the same job id, another output: the two receipts convict it
        await rep.record_check(
            CheckEvidence(
                **{
                    **base.__dict__,
                    "credited": (A, B),
                    "receipts": [*honest, signed(KEYS[4], b"other", nonce=nonce)],
                }
            )
        )
        ban = rep.ban(KEYS[4].peer_id)
        assert ban is not None and ban.reason == "equivocation"


async def test_a_check_needs_two_receipts_of_one_spec(tmp_path: Path) -> None:
    async with opened(tmp_path / "lpnode.db", Clock()) as rep:
        good = check(0)
        with pytest.raises(ReputationError):
            await rep.record_check(CheckEvidence(**{**good.__dict__, "receipts": good.receipts[:1]}))
        assert await rep.evidence() == [] and rep.counters()["checks"] == 0


@pytest.mark.slow
async def test_committed_verdicts_survive_kill_9_mid_write(tmp_path: Path) -> None:
    """A real child process records checks in a loop; SIGKILL lands mid-write; nothing it reported is lost."""
    path = tmp_path / "lpnode.db"
    reported: list[int] = []
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.reputation.reputation_kill_writer", str(path)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None
        buffered = b""
        try:
            while len(reported) < 40:
                chunk = await process.stdout.receive_some()
                assert chunk, f"writer exited early with {await process.wait()}"
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                reported.extend(int(line.split()[1]) for line in lines)
        finally:
            process.kill()  # SIGKILL: no cleanup, no final COMMIT, no WAL checkpoint
            assert await process.wait() == -signal.SIGKILL
            await process.stdout.aclose()

    async with open_store(path, [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as store:
        assert await store.integrity_check() == "ok"
        rep = await open_reputation(store)
        rows = await store.fetch_all("SELECT id FROM rep_evidence", max_rows=100_000)
        ids = {row["id"] for row in rows}
        assert set(reported) <= ids  # every reported verdict committed
        receipts = await store.fetch_all(
            "SELECT evidence_id, count(*) AS n FROM rep_receipts GROUP BY evidence_id", max_rows=100_000
        )
        assert {row["evidence_id"]: row["n"] for row in receipts} == dict.fromkeys(ids, 3)  # transactions whole
        family = model_family(verify_receipt(signed(KEYS[0], b"x")).model_id)
        # the aggregates moved in the same transactions as the evidence
        assert rep.state(C, family).blames == len(ids) == rep.state(A, family).checks
        assert rep.counters()["checks"] == len(ids)
