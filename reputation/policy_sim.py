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

Both model **suspect probes** as ``spot_check.SpotChecker`` runs them: a check of
another peer's job, with its third seat free, takes a suspect chosen by
:func:`~lpnode.reputation.policy.choose_suspect` beside the checker, the three
outputs settle through ``resolve`` and every peer named takes ``after_check``.
``SpotCheckConfig(suspect_probes=0)`` turns them off (:func:`without_probes`).
In the network the probes arise from the simulated checks themselves; a single
subject has no network around it, so :class:`SimConfig` assumes one (see
``other_jobs_per_job``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from lpnode.protocol.jobspec import Pipeline

from .compare import Verdict
from .policy import (
    Candidate,
    PeerHistory,
    Resolution,
    SpotCheckConfig,
    SpotCheckPolicy,
    choose_checker,
    choose_suspect,
    resolve,
)
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
    "without_probes",
]

SUBJECT, CHECKER, THIRD = "subject", "checker", "third"
OTHER = "other"  # the worker of another peer's job, on which the subject is probed
MAX_PROBES_PER_JOB = 1_000  # bound on the opportunities drawn between two of the subject's jobs


@dataclass(frozen=True)
class SimPeer:
    name: str
    cheat_rate: float = 0.0  # share of its jobs it cheats on
    off_rate: float | None = None  # share of honest outputs that agree with nobody; None: SimConfig.honest_off_rate
    # Once blamed, the requester gives it no more jobs of its own (its score ranks it last): only probes can
    # settle anything about it then. The time slots of its jobs still pass.
    starved_after_blame: bool = False


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
    # Suspect probes need checks of *other* peers' jobs, which one subject alone does not have. Assumed: the network
    # of simulate_network (20 peers sharing the requester's jobs alike), so the requester hands the 19 others this
    # many jobs per job of the subject, and they, established, are checked at the floor rate. Probe opportunities
    # arrive as a Poisson stream of mean other_jobs_per_job * other_check_rate (0.95) per job slot of the subject.
    # A network of newcomers checks far more (every one of a peer's first 50 jobs), so this is the slow case.
    other_jobs_per_job: float = 19.0
    other_check_rate: float = 0.05

    def __post_init__(self) -> None:
        if self.other_jobs_per_job < 0 or not 0.0 <= self.other_check_rate <= 1.0:
            raise ValueError("other_jobs_per_job must be non-negative and other_check_rate in [0, 1]")
        if self.other_jobs_per_job * self.other_check_rate > 100:
            raise ValueError("more than 100 probe opportunities per job: not a network this models")


@dataclass(frozen=True)
class PeerOutcome:
    peer: SimPeer
    jobs: int  # jobs the subject ran (up to and including the one that got it banned)
    banned_at: int | None  # job number (1-based) after which it was banned; None: never
    blames: int
    agreements: int
    checks: int  # jobs duplicated
    extra_runs: int  # checker and tie-breaker runs
    established_jobs: int  # its own jobs after SimConfig.established_after (job slots)
    established_extra_runs: int  # extra runs spent on those jobs (probes of the subject included)
    slots: int = 0  # job slots (minutes) passed, its own jobs given or not (a starved peer is given none)
    probes: int = 0  # copies of other peers' checked jobs the subject ran as a suspect (also in extra_runs)
    probe_blames: int = 0  # of them, blamed (also in blames)
    probe_passes: int = 0  # of them, passed (also in agreements)


def simulate_peer(
    peer: SimPeer, config: SimConfig, rng: random.Random, probe_rng: random.Random | None = None
) -> PeerOutcome:
    """``peer`` as the subject of one requester. ``probe_rng`` draws everything about probes (default: one seeded
    from ``rng``'s state, drawing nothing from it), so with probes off the own jobs draw exactly what they did."""
    policy = SpotCheckPolicy(config.spot)
    off_rate = config.honest_off_rate if peer.off_rate is None else peer.off_rate
    probe_rng = probe_rng or random.Random(repr(rng.getstate()))
    probe_mean = config.other_jobs_per_job * config.other_check_rate
    history, evidence = PeerHistory(), Evidence()
    blames = agreements = checks = extra = est_jobs = est_extra = 0
    probes = probe_blames = probe_passes = 0
    banned_at: int | None = None
    job = slot = 0
    for slot in range(1, config.jobs_per_peer + 1):
        now = slot * config.job_interval_s
        established = slot > config.established_after
        if not (peer.starved_after_blame and history.jobs_since_blame is not None):
            job += 1
            est_jobs += established
            settled, history, evidence, runs = _own_job(peer, config, policy, off_rate, history, evidence, now, rng)
            checks += runs > 0
            extra += runs
            est_extra += runs if established else 0
            if settled is not None:
                blamed, banned = settled
                blames += blamed
                agreements += not blamed
                if banned:
                    banned_at = job
                    break
        # Other peers' checked jobs until the next slot; only a suspect can be probed, so draw only then.
        if not _may_be_suspect(history, config.spot.suspect_probes):
            continue
        for _ in range(_poisson(probe_mean, probe_rng)):
            probe = _probe(peer, config, off_rate, history, probe_rng)
            if probe is None:
                continue
            probes += 1
            extra += 1
            est_extra += established
            if probe.need_more:
                continue  # no majority of three: nothing recorded (record_check names nobody)
            blamed = SUBJECT in probe.blamed
            blames += blamed
            agreements += not blamed
            probe_blames += blamed
            probe_passes += not blamed
            history = history.after_check(blamed=blamed)
            evidence, banned = after_check(evidence, now, config.scoring, blamed=blamed)
            if banned:
                banned_at = job
                break
        if banned_at is not None:
            break
    return PeerOutcome(
        peer,
        job,
        banned_at,
        blames,
        agreements,
        checks,
        extra,
        est_jobs,
        est_extra,
        slot,
        probes,
        probe_blames,
        probe_passes,
    )


_Settled = tuple[bool, bool]  # (blamed, banned) of the subject in one check that named it


def _own_job(
    peer: SimPeer,
    config: SimConfig,
    policy: SpotCheckPolicy,
    off_rate: float,
    history: PeerHistory,
    evidence: Evidence,
    now: float,
    rng: random.Random,
) -> tuple[_Settled | None, PeerHistory, Evidence, int]:
    """One job of the subject: whether a check settled about it (and how), its new state, the extra runs spent."""
    duplicate = policy.should_duplicate(history, config.pipeline, rng)
    history = history.after_job()
    # Drawn for every job, checked or not: the subject cannot know which ones are checked.
    subject_bad = rng.random() < peer.cheat_rate or rng.random() < off_rate
    if not duplicate:
        return None, history, evidence, 0
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
    if SUBJECT not in outcome.blamed and SUBJECT not in outcome.credited:
        return None, history, evidence, runs
    blamed = SUBJECT in outcome.blamed
    history = history.after_check(blamed=blamed)
    # the store's own step (ReputationStore.record_check): the same counts, the same ban test
    evidence, ban = after_check(evidence, now, config.scoring, blamed=blamed)
    return (blamed, ban), history, evidence, runs


def _may_be_suspect(history: PeerHistory, probes: int) -> bool:
    # choose_suspect's own test, asked first only to skip drawing opportunities that could not probe anyone
    return history.jobs_since_blame is not None and history.consecutive_agreements < probes


def _probe(
    peer: SimPeer, config: SimConfig, off_rate: float, history: PeerHistory, rng: random.Random
) -> Resolution | None:
    """One check of another (honest) peer's job: the subject runs a copy beside the checker if choose_suspect picks
    it (the only suspect around); the three outputs settle as SpotChecker settles them (no fourth peer: 3 seats)."""
    candidates = [(Candidate(SUBJECT, 0.0), history)]
    if choose_suspect(candidates, rng, exclude=frozenset((OTHER, CHECKER)), probes=config.spot.suspect_probes) is None:
        return None
    # a copy looks like any job to the subject: it cheats on it as on its own
    bad = {
        OTHER: rng.random() < config.honest_off_rate,
        CHECKER: rng.random() < config.honest_off_rate,
        SUBJECT: rng.random() < peer.cheat_rate or rng.random() < off_rate,
    }
    peers = (OTHER, CHECKER, SUBJECT)
    verdicts = {frozenset((a, b)): _verdict(bad[a], bad[b]) for i, a in enumerate(peers) for b in peers[i + 1 :]}
    return resolve(peers, verdicts)


def _poisson(mean: float, rng: random.Random) -> int:
    """A Poisson draw (Knuth's product of uniforms: the means here are ~1), bounded by MAX_PROBES_PER_JOB."""
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit and count < MAX_PROBES_PER_JOB:
        count += 1
        product *= rng.random()
    return count


def _verdict(a_bad: bool, b_bad: bool) -> Verdict:
    # A bad output (cheated or off) is unrelated to every other output, so it agrees with none.
    return Verdict.DISAGREE if a_bad or b_bad else Verdict.AGREE


def simulate(config: SimConfig, peers: Sequence[SimPeer]) -> list[PeerOutcome]:
    """Each peer as its own subject, with its own seeded random stream (order-independent)."""
    return [
        simulate_peer(
            p, config, random.Random(f"{config.seed}/{i}/{p.name}"), random.Random(f"{config.seed}/{i}/probes")
        )
        for i, p in enumerate(peers)
    ]


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
    blame_rate: float  # blames per check (its own jobs' checks and its probes), over all peers of this kind
    overhead: float  # extra runs per job (probes included), over all jobs
    established_overhead: float | None  # extra runs per job after established_after
    probes: int = 0  # suspect probes run, over all peers of this kind


def summarise(name: str, outcomes: Sequence[PeerOutcome]) -> Summary:
    bans = sorted(o.banned_at for o in outcomes if o.banned_at is not None)
    checks = sum(o.checks + o.probes for o in outcomes)  # settled about the peer: its own jobs' and probes
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
        probes=sum(o.probes for o in outcomes),
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


_Config = TypeVar("_Config", SimConfig, NetConfig)


def without_probes(config: _Config) -> _Config:
    """The same configuration with suspect probes off (``suspect_probes = 0``: no peer is ever a suspect)."""
    return replace(config, spot=replace(config.spot, suspect_probes=0))


@dataclass(frozen=True)
class NetOutcome:
    bans: tuple[tuple[int, int], ...]  # (peer index, user job number at the ban), first ban of each peer
    checks: int  # user jobs duplicated
    extra_runs: int  # checker and tie-breaker runs
    blames: int  # blames recorded, of any peer (a checker outvoted by the other two is blamed too)
    unsettled: int  # checks with no majority after the third peer (or no peer left to ask): nothing recorded
    skipped: int  # checks wanted with no unbanned checker left
    probes: int = 0  # checks a suspect ran a copy in (also in extra_runs)
    probe_blames: int = 0  # of them, the suspect blamed (also in blames)


def simulate_network(config: NetConfig, run: int = 0) -> NetOutcome:
    """One seeded network run, the requester's store step for every settled check.

    Differs from :func:`simulate_peer` in what makes it the network the target names: every peer is worker,
    checker and tie-breaker in turn, the checker is the real :func:`choose_checker` pick (best score in good
    standing), and every peer a settled check names is recorded, checkers included, as ``record_check`` does.
    The worker of each job is drawn uniformly among unbanned peers (the node's ranking also weighs price and
    speed, which are alike here). Suspect probes as ``SpotChecker`` runs them: every check with a checker takes
    the least-cleared suspect among the other unbanned peers (:func:`choose_suspect`) as its third seat, so a
    check with a suspect never asks a further peer. Not modelled: withdrawal of blames decided by a peer banned
    later (it only removes blames and lifts bans, so the bans counted here are at least the store's).
    """
    rng = random.Random(f"net/{config.seed}/{run}")
    policy = SpotCheckPolicy(config.spot)
    names = [f"peer-{i}" for i in range(config.peers)]
    index = {name: i for i, name in enumerate(names)}
    history = {name: PeerHistory() for name in names}
    evidence = {name: Evidence() for name in names}
    banned_until: dict[str, float] = {}
    bans: list[tuple[int, int]] = []
    checks = extra = blames = unsettled = skipped = probes = probe_blames = 0
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
        # SpotChecker._suspect: a suspect runs a copy beside the checker (picked before either runs)
        suspects = [(c, history[c.peer_id]) for c in candidates]
        suspect = choose_suspect(suspects, rng, exclude=frozenset(peers), probes=config.spot.suspect_probes)
        if suspect is not None:
            probes += 1
            peers.append(suspect.peer_id)
        for name in peers[1:]:
            bad[name] = rng.random() < off
        verdicts = {frozenset((a, b)): _verdict(bad[a], bad[b]) for i, a in enumerate(peers) for b in peers[i + 1 :]}
        outcome = resolve(peers, verdicts)
        if suspect is not None:
            probe_blames += suspect.peer_id in outcome.blamed
        elif outcome.need_more:  # three seats: with a suspect in the third, nobody more is asked
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
    return NetOutcome(tuple(bans), checks, extra, blames, unsettled, skipped, probes, probe_blames)
