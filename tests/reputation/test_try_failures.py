"""Failed tries count against the worker whose doing they were: classes, scores, the store, the ranking.

A try that fails because the worker signed a wrong result (a *cheat*), broke the protocol (a *violation*) or took
the job and dropped it (*unproven*) lowers its score, so the ranking puts it behind an honest peer of the same price
and speed; two cheats ban it, as two check blames do. A try that failed by nobody's fault (busy, refused,
unreachable before any answer) changes nothing. The last test runs it on the in-memory network with real tiny-sdxl
runs: a worker tampering with its signed outputs is asked first once, then never again first, and is banned.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from lpnode.models.pool import PoolConfig, open_model_pool
from lpnode.node.job_requester import JobRequest
from lpnode.node.job_runner import requester_runner
from lpnode.node.job_try import FAULT_CHEAT, FAULT_UNPROVEN, FAULT_VIOLATION, CandidateTry
from lpnode.node.job_worker import WorkerHooks
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.peer_choice import Priority, rank_candidates
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.protocol.jobs import Progress
from lpnode.protocol.jobspec import Pipeline, TextToImageParams
from lpnode.reputation.scoring import Evidence, ScoringConfig, after_failure, score, should_ban
from lpnode.reputation.spot_check import open_spot_checker
from lpnode.reputation.store import REPUTATION_MIGRATIONS, TryFailure, open_reputation
from lpnode.reputation.store_schema import REPUTATION_MIGRATIONS as MIGRATIONS

from tests.node.job_fixtures import BOUND_S, MODEL, Peer, peers, sees_models
from tests.node.test_peer_choice import advert, offer, spec
from tests.reputation.receipt_factory import KEYS, signed
from tests.reputation.stores import Clock, opened

CFG = ScoringConfig()
NEWCOMER = score(Evidence(), 0.0, CFG)


# ------------------------------------------------------------------ which outcomes are whose doing


def fault(outcome: str, *, quoted: bool) -> str:
    """``CandidateTry.fault`` for a try whose machine had (or had not) received a quote."""
    try_ = CandidateTry.__new__(CandidateTry)
    try_.machine = SimpleNamespace(quote=object() if quoted else None)  # type: ignore[assignment]
    return try_.fault(outcome)


@pytest.mark.parametrize(
    ("outcome", "quoted", "expected"),
    [
        ("done", True, ""),
        # signed for a wrong result: proof
        ("output_mismatch", True, FAULT_CHEAT),
        ("violation:bad_output", True, FAULT_CHEAT),
        ("violation:receipt_mismatch", True, FAULT_CHEAT),
        ("violation:bad_receipt", True, FAULT_CHEAT),
        # broke the protocol on its own stream, no result claimed
        ("garbage", False, FAULT_VIOLATION),
        ("violation:over_price", False, FAULT_VIOLATION),
        ("violation:quote_above_advert", True, FAULT_VIOLATION),
        ("violation:wrong_job", True, FAULT_VIOLATION),
        # took the job, then dropped it; or silent on an open stream
        ("disconnected", True, FAULT_UNPROVEN),
        ("deadline", True, FAULT_UNPROVEN),
        ("timeout", False, FAULT_UNPROVEN),
        ("error:out_of_memory", True, FAULT_UNPROVEN),
        # not its doing
        ("disconnected", False, ""),  # lost before it answered: a network, a restart
        ("deadline", False, ""),  # our deadline, before it quoted
        ("unreachable", False, ""),
        ("refused:busy", False, ""),
        ("refused:price", False, ""),
        ("error:invalid_input", True, ""),  # the request's doing
        ("error:quote_expired", True, ""),  # ours: the accept came late
        ("quote_expired", True, ""),
        ("cancelled_by_requester", True, ""),
    ],
)
def test_whose_doing_a_failed_try_was(outcome: str, quoted: bool, expected: str) -> None:
    assert fault(outcome, quoted=quoted) == expected


# ------------------------------------------------------------------ scoring


def test_a_failure_scores_below_a_newcomer_and_a_cheat_lowest() -> None:
    scores = {
        kind: score(after_failure(Evidence(), 0.0, CFG, fault=kind)[0], 0.0, CFG)
        for kind in ("cheat", "violation", "unproven")
    }
    assert scores["cheat"] < scores["violation"] < scores["unproven"] < NEWCOMER
    # a cheat outweighs a one-job queue (it doubles the expected time): the JS-worker run's case
    assert NEWCOMER / scores["cheat"] > 2
    with pytest.raises(ValueError, match="failure class"):
        after_failure(Evidence(), 0.0, CFG, fault="busy")


def test_two_cheats_ban_and_no_number_of_other_failures_does() -> None:
    evidence, banned = after_failure(Evidence(), 0.0, CFG, fault="cheat")
    assert not banned  # one is never enough, as one blame is not
    _, banned = after_failure(evidence, 60.0, CFG, fault="cheat")
    assert banned
    evidence = Evidence()
    for n in range(20):
        for kind in ("violation", "unproven"):
            evidence, banned = after_failure(evidence, float(n), CFG, fault=kind)
            assert not banned
    assert not should_ban(evidence, 20.0, CFG) and evidence.ban_bad == 0 and evidence.bad == 0
    assert score(evidence, 20.0, CFG) < 0.05


def test_failures_fade_like_blames() -> None:
    evidence, _ = after_failure(Evidence(), 0.0, CFG, fault="violation")
    later = 90 * 86_400.0  # one bad half-life
    assert score(evidence, 0.0, CFG) < score(evidence, later, CFG) < NEWCOMER


# ------------------------------------------------------------------ the store


def failure(peer: str, kind: str, outcome: str = "violation:bad_output", receipt: bytes = b"") -> TryFailure:
    return TryFailure(peer, MODEL, "ab" * 32, outcome, kind, f"{outcome} for a test", receipt)


async def test_the_store_records_failures_keeps_a_cheats_own_receipt_and_bans_on_two(tmp_path: Path) -> None:
    clock = Clock()
    cheat, other = KEYS[0].peer_id, KEYS[1].peer_id
    own, foreign = signed(KEYS[0], b"half-width png"), signed(KEYS[1], b"someone else's")
    path = tmp_path / "lpnode.db"
    async with opened(path, clock) as rep:
        [first] = await rep.record_failures([failure(cheat, "cheat", receipt=own)])
        assert not rep.is_banned(cheat) and rep.score(cheat, MODEL) < NEWCOMER
        state = rep.state(cheat, MODEL)
        assert (state.failed_tries, state.cheats, state.blames) == (1, 1, 0)
        assert state.history.jobs_since_blame == 0  # checked on every job again, and probed as a suspect
        clock.now += 60
        [second] = await rep.record_failures([failure(cheat, "cheat", receipt=foreign)])
        ban = rep.ban(cheat)
        assert rep.is_banned(cheat) and ban is not None
        assert (ban.reason, ban.failure_id, ban.evidence_id) == ("signed wrong results", second, None)
        rows = await rep.failures(peer_id=cheat)
        assert [(r["id"], r["fault"], r["receipt"]) for r in rows] == [(first, "cheat", own), (second, "cheat", None)]
        await rep.record_failures([failure(other, "unproven", "disconnected"), failure(other, "violation", "garbage")])
        assert not rep.is_banned(other) and rep.state(other, MODEL).failed_tries == 2
        assert await rep.failure_count(other) == 2 and await rep.evidence_count(other) == 0
        described = rep.describe(other)["families"][0]
        assert (described["failed_tries"], described["cheats"], described["failed"]) == (2, 0, 1.5)
        assert rep.peers() == sorted([cheat, other])
    async with opened(path, clock) as rep:  # read back from the database
        assert rep.is_banned(cheat) and rep.ban(cheat).failure_id == second  # type: ignore[union-attr]
        assert rep.state(cheat, MODEL).cheats == 2 and rep.state(other, MODEL).evidence.failed == 1.5
        with pytest.raises(Exception, match="failure class"):
            await rep.record_failures([failure(other, "busy")])


async def test_a_version_3_database_migrates(tmp_path: Path) -> None:
    from lpnode.node.job_records import JOB_MIGRATIONS
    from lpnode.node.store import open_store

    assert [m.version for m in MIGRATIONS if m.component == "reputation"] == [1, 2, 3, 4]
    path = tmp_path / "lpnode.db"
    async with open_store(path, [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS[:3]]) as store, store.transaction() as tx:
        await tx.execute(
            "INSERT INTO rep_peers (peer_id, model_family, good, bad, at, ban_good, ban_bad, jobs, consecutive,"
            " since_blame, checks, blames) VALUES ('p', ?, 3.0, 0.0, 0.0, 3.0, 0.0, 5, 3, NULL, 3, 0)",
            (MODEL,),
        )
    async with opened(path, Clock()) as rep:
        state = rep.state("p", MODEL)
        assert (state.failed_tries, state.cheats, state.evidence.failed, state.checks) == (0, 0, 0.0, 3)
        await rep.record_failures([failure("p", "unproven", "timeout")])
        assert rep.state("p", MODEL).failed_tries == 1


# ------------------------------------------------------------------ the ranking


async def test_the_ranking_puts_a_failed_peer_behind_a_newcomer_of_the_same_price_and_speed(tmp_path: Path) -> None:
    clock = Clock()
    adverts = [advert("a-sorts-first", offer(MODEL)), advert("b-honest", offer(MODEL))]
    job = spec(MODEL)
    async with opened(tmp_path / "lpnode.db", clock) as rep:

        def order(priority: Priority, **kw: object) -> list[str]:
            candidates = rank_candidates(
                adverts,
                job,
                max_price=10**9,
                rng=random.Random(0),
                explore_share=0.0,
                reputation=rep,
                priority=priority,
            )
            return [c.peer_id for c in candidates]

        for priority in Priority:  # no record either: the tie goes to the lower id
            assert order(priority) == ["a-sorts-first", "b-honest"]
        await rep.record_failures([failure("a-sorts-first", "unproven", "disconnected")])
        for priority in Priority:  # even the lightest failure puts it behind
            assert order(priority) == ["b-honest", "a-sorts-first"], priority
        # a cheat outweighs a queue of one on the honest peer (twice its expected time)
        queued = [adverts[0], advert("b-honest", offer(MODEL), depth=1)]
        await rep.record_failures([failure("a-sorts-first", "cheat")])
        candidates = rank_candidates(
            queued, job, max_price=10**9, rng=random.Random(0), explore_share=0.0, reputation=rep
        )
        assert [c.peer_id for c in candidates] == ["b-honest", "a-sorts-first"]
        await rep.record_failures([failure("a-sorts-first", "cheat")])
        assert order(Priority.SPEED) == ["b-honest"]  # banned: never a candidate


# ------------------------------------------------------------------ in process: a tampering worker


def no_progress(peer_id: str, message: Progress) -> None:
    pass


async def test_a_worker_that_tampers_with_signed_outputs_is_asked_first_once_then_banned(tmp_path: Path) -> None:
    """Two workers with one tiny-sdxl pool; the one whose id sorts first flips a byte of each output after signing
    it. The first job tries it first (no records, a tie) and moves on; from then on the honest one is first, and
    the tamperer's next failure (a spot check's copy of the honest worker's job) bans it."""
    tampering: dict[str, bool] = {}

    def tamper(index: int, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if tampering[f"w{index}"] else data

    from lpnode.node.job_records import JOB_MIGRATIONS
    from lpnode.node.store import open_store

    job = JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("a lighthouse", 64, 64, 2, 0.0, ""), MODEL, seed=1)
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        open_memory_hub() as hub,
        peers(hub) as start,
        open_store(tmp_path / "lpnode.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db,
    ):
        requester: Peer = await start(0)  # type: ignore[assignment]
        workers: list[Peer] = [
            await start(i, pool=pool, hooks=WorkerHooks(tamper_output=functools.partial(tamper, i)))  # type: ignore[misc]
            for i in (1, 2)
        ]
        cheat, honest = sorted(workers, key=lambda w: w.peer_id)
        for index, worker in zip((1, 2), workers, strict=True):
            tampering[f"w{index}"] = worker is cheat
        await sees_models(requester.node, workers)
        reputation = await open_reputation(db)
        runner = requester_runner(requester.node, reputation=reputation, rng=random.Random(0))  # no exploring draw
        options = JobOptions.model_validate({"max_price": 10_000, "deadline": BOUND_S})
        async with open_spot_checker(requester.node, runner, reputation, rng=random.Random(0)) as checker:
            tried = []
            for seed in range(3):
                with trio.fail_after(BOUND_S):
                    outcome = await checker(JobRequest(job.pipeline, job.params, MODEL, seed), {}, options, no_progress)
                    await checker.wait_idle()
                assert outcome.worker_peer_id == honest.peer_id
                tried.append([(a.peer_id, a.outcome, a.fault) for a in outcome.attempts])
    assert tried[0] == [(cheat.peer_id, "output_mismatch", FAULT_CHEAT), (honest.peer_id, "done", "")]
    assert tried[1:] == [[(honest.peer_id, "done", "")]] * 2  # never first again
    ban = reputation.ban(cheat.peer_id)
    assert reputation.is_banned(cheat.peer_id) and ban is not None and ban.reason == "signed wrong results"
    assert not reputation.is_banned(honest.peer_id) and reputation.state(honest.peer_id, MODEL).failed_tries == 0
