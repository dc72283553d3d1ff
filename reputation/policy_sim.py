"""Simulate the spot-check policy and scoring against cheaters and honest peers: pure, seeded, no network.

One requester gives a *subject* peer its jobs one after another (one a minute
of virtual time, for the decay). The subject cheats on a share of its jobs;
an honest subject's output is "off" (differs from everyone's, as odd hardware
might) on a small share. Checkers and tie-breakers are honest peers with that
same off rate. Each duplicated job is compared (a cheated or off output agrees
with nothing), a third peer is asked when the two do not agree,
:func:`~lpnode.reputation.policy.resolve` names the odd one out, and
:mod:`~lpnode.reputation.scoring` records the evidence and decides the ban.

    outcomes = simulate(SimConfig(), [SimPeer("cheat-10", cheat_rate=0.10)] * 100)

simnet reuses :func:`simulate_peer` with its own peers; calibration writes the
figures to docs/verification.md. :func:`simulate_network` is the other reading:
one requester's jobs shared by a small network of peers that check each other
(``calibrate --target-runs``, the issue's "10,000 simulated jobs").
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from lpnode.protocol.jobspec import Pipeline

from .compare import Verdict
from .policy import Candidate, PeerHistory, SpotCheckConfig, SpotCheckPolicy, choose_checker, resolve
from .scoring import Evidence, ScoringConfig, after_check, ban_until, score

__all__ = [
    "NetConfig",
    "NetOutcome",
    "PeerOutcome",
    "SimConfig",
    "SimPeer",
    "Summary",
    "simulate",
    "simulate_network",
    "simulate_peer",
    "summarise",
]

SUBJECT, CHECKER, THIRD = "subject", "checker", "third"


@dataclass(frozen=True)
class SimPeer:
    name: str
    cheat_rate: float = 0.0  # share of its jobs it cheats on
    off_rate: float | None = None  # share of honest outputs that agree with nobody; None: SimConfig.honest_off_rate


@dataclass(frozen=True)
class SimConfig:
    jobs_per_peer: int = 10_000
    honest_off_rate: float = 0.002  # per output; calibration measured none on tiny presets (docs/verification.md)
    job_interval_s: float = 60.0  # virtual seconds between the subject's jobs
    established_after: int = 1_000  # jobs; overhead "once established" counts jobs after this
    pipeline: Pipeline = Pipeline.TEXT_TO_IMAGE
    spot: SpotCheckConfig = field(default_factory=SpotCheckConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    seed: int = 0


@dataclass(frozen=True)
class PeerOutcome:
    peer: SimPeer
    jobs: int  # jobs the subject ran (up to and including the one that got it banned)
    banned_at: int | None  # job number (1-based) after which it was banned; None: never
    blames: int
    agreements: int
    checks: int  # jobs duplicated
    extra_runs: int  # checker and tie-breaker runs
    established_jobs: int  # jobs after SimConfig.established_after
    established_extra_runs: int  # extra runs spent on those jobs


def simulate_peer(peer: SimPeer, config: SimConfig, rng: random.Random) -> PeerOutcome:
    policy = SpotCheckPolicy(config.spot)
    off_rate = config.honest_off_rate if peer.off_rate is None else peer.off_rate
    history, evidence = PeerHistory(), Evidence()
    blames = agreements = checks = extra = est_jobs = est_extra = 0
    banned_at: int | None = None
    job = 0
    for job in range(1, config.jobs_per_peer + 1):
        now = job * config.job_interval_s
        established = job > config.established_after
        est_jobs += established
        duplicate = policy.should_duplicate(history, config.pipeline, rng)
        history = history.after_job()
        # Drawn for every job, checked or not: the subject cannot know which ones are checked.
        subject_bad = rng.random() < peer.cheat_rate or rng.random() < off_rate
        if not duplicate:
            continue
        checks += 1
        runs = 1
        checker_bad = rng.random() < config.honest_off_rate
        verdicts = {frozenset((SUBJECT, CHECKER)): _verdict(subject_bad, checker_bad)}
        outcome = resolve((SUBJECT, CHECKER), verdicts)
        if outcome.need_more:
            runs += 1
            third_bad = rng.random() < config.honest_off_rate
            verdicts[frozenset((SUBJECT, THIRD))] = _verdict(subject_bad, third_bad)
            verdicts[frozenset((CHECKER, THIRD))] = _verdict(checker_bad, third_bad)
            outcome = resolve((SUBJECT, CHECKER, THIRD), verdicts)
        extra += runs
        est_extra += runs if established else 0
        if SUBJECT in outcome.blamed or SUBJECT in outcome.credited:
            blamed = SUBJECT in outcome.blamed
            blames += blamed
            agreements += not blamed
            history = history.after_check(blamed=blamed)
            # the store's own step (ReputationStore.record_check): the same counts, the same ban test
            evidence, ban = after_check(evidence, now, config.scoring, blamed=blamed)
            if ban:
                banned_at = job
                break
    return PeerOutcome(peer, job, banned_at, blames, agreements, checks, extra, est_jobs, est_extra)


def _verdict(a_bad: bool, b_bad: bool) -> Verdict:
    # A bad output (cheated or off) is unrelated to every other output, so it agrees with none.
    return Verdict.DISAGREE if a_bad or b_bad else Verdict.AGREE


def simulate(config: SimConfig, peers: Sequence[SimPeer]) -> list[PeerOutcome]:
    """Each peer as its own subject, with its own seeded random stream (order-independent)."""
    return [simulate_peer(p, config, random.Random(f"{config.seed}/{i}/{p.name}")) for i, p in enumerate(peers)]


@dataclass(frozen=True)
class Summary:
    name: str
    cheat_rate: float
    peers: int
    banned: int
    median_jobs_to_ban: float | None  # over banned peers
    p90_jobs_to_ban: float | None
    max_jobs_to_ban: int | None
    banned_within_50: int
    blame_rate: float  # blames per check, over all peers of this kind
    overhead: float  # extra runs per job, over all jobs
    established_overhead: float | None  # extra runs per job after established_after


def summarise(name: str, outcomes: Sequence[PeerOutcome]) -> Summary:
    bans = sorted(o.banned_at for o in outcomes if o.banned_at is not None)
    checks = sum(o.checks for o in outcomes)
    jobs = sum(o.jobs for o in outcomes)
    est_jobs = sum(o.established_jobs for o in outcomes)
    return Summary(
        name=name,
        cheat_rate=outcomes[0].peer.cheat_rate if outcomes else 0.0,
        peers=len(outcomes),
        banned=len(bans),
        median_jobs_to_ban=float(statistics.median(bans)) if bans else None,
        p90_jobs_to_ban=float(bans[min(len(bans) - 1, int(0.9 * len(bans)))]) if bans else None,
        max_jobs_to_ban=bans[-1] if bans else None,
        banned_within_50=sum(b <= 50 for b in bans),
        blame_rate=sum(o.blames for o in outcomes) / checks if checks else 0.0,
        overhead=sum(o.extra_runs for o in outcomes) / jobs if jobs else 0.0,
        established_overhead=sum(o.established_extra_runs for o in outcomes) / est_jobs if est_jobs else None,
    )


# ---------------------------------------------------------------- a small network, one requester


@dataclass(frozen=True)
class NetConfig:
    """One requester hands ``jobs`` user jobs in total to ``peers`` peers (the issue's "10,000 simulated jobs")."""

    peers: int = 20
    jobs: int = 10_000  # user jobs in total, over all peers
    honest_off_rate: float = 0.002  # per output, every peer alike
    job_interval_s: float = 60.0  # virtual seconds between user jobs (network-wide): 10,000 jobs ≈ 6.9 days
    pipeline: Pipeline = Pipeline.TEXT_TO_IMAGE
    spot: SpotCheckConfig = field(default_factory=SpotCheckConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    seed: int = 0


@dataclass(frozen=True)
class NetOutcome:
    bans: tuple[tuple[int, int], ...]  # (peer index, user job number at the ban), first ban of each peer
    checks: int  # user jobs duplicated
    extra_runs: int  # checker and tie-breaker runs
    blames: int  # blames recorded, of any peer (a checker outvoted by the other two is blamed too)
    unsettled: int  # checks with no majority after the third peer (or no peer left to ask): nothing recorded
    skipped: int  # checks wanted with no unbanned checker left


def simulate_network(config: NetConfig, run: int = 0) -> NetOutcome:
    """One seeded network run, the requester's store step for every settled check.

    Differs from :func:`simulate_peer` in what makes it the network the target names: every peer is worker,
    checker and tie-breaker in turn, the checker is the real :func:`choose_checker` pick (best score in good
    standing), and every peer a settled check names is recorded, checkers included, as ``record_check`` does.
    The worker of each job is drawn uniformly among unbanned peers (the node's ranking also weighs price and
    speed, which are alike here). Not modelled: withdrawal of blames decided by a peer banned later (it only
    removes blames and lifts bans, so the bans counted here are at least the store's).
    """
    rng = random.Random(f"net/{config.seed}/{run}")
    policy = SpotCheckPolicy(config.spot)
    names = [f"peer-{i}" for i in range(config.peers)]
    index = {name: i for i, name in enumerate(names)}
    history = {name: PeerHistory() for name in names}
    evidence = {name: Evidence() for name in names}
    banned_until: dict[str, float] = {}
    bans: list[tuple[int, int]] = []
    checks = extra = blames = unsettled = skipped = 0
    off = config.honest_off_rate
    for job in range(1, config.jobs + 1):
        now = job * config.job_interval_s
        active = [n for n in names if banned_until.get(n, -1.0) <= now]
        if len(active) < 1:
            break
        worker = rng.choice(active)
        duplicate = policy.should_duplicate(history[worker], config.pipeline, rng)
        history[worker] = history[worker].after_job()
        bad = {worker: rng.random() < off}  # drawn for every job: the worker cannot know which are checked
        if not duplicate:
            continue
        candidates = [Candidate(n, score(evidence[n], now, config.scoring)) for n in active]
        checker = choose_checker(candidates, worker, rng, min_score=config.spot.min_checker_score)
        if checker is None:
            skipped += 1
            continue
        checks += 1
        peers = [worker, checker.peer_id]
        bad[checker.peer_id] = rng.random() < off
        verdicts = {frozenset(peers): _verdict(bad[worker], bad[checker.peer_id])}
        outcome = resolve(peers, verdicts)
        if outcome.need_more:
            third = choose_checker(
                candidates, worker, rng, exclude=frozenset(peers), min_score=config.spot.min_checker_score
            )
            if third is not None:
                bad[third.peer_id] = rng.random() < off
                verdicts |= {frozenset((p, third.peer_id)): _verdict(bad[p], bad[third.peer_id]) for p in peers}
                peers.append(third.peer_id)
                outcome = resolve(peers, verdicts)
        extra += len(peers) - 1
        if outcome.need_more:
            unsettled += 1
            continue
        # record_check's order: the credited, then the blamed
        for name, blamed in [(n, False) for n in outcome.credited] + [(n, True) for n in outcome.blamed]:
            blames += blamed
            history[name] = history[name].after_check(blamed=blamed)
            evidence[name], ban = after_check(evidence[name], now, config.scoring, blamed=blamed)
            if ban and banned_until.get(name, -1.0) <= now:
                earlier = sum(1 for i, _ in bans if i == index[name])
                banned_until[name] = ban_until(now, earlier, config.scoring)
                if not earlier:
                    bans.append((index[name], job))
    return NetOutcome(tuple(bans), checks, extra, blames, unsettled, skipped)
