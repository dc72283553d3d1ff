"""Which jobs to check, on whom, and who is to blame: the spot-check policy and verification methods.

Adaptive duplication after BOINC's adaptive replication: a peer's first jobs
per model family are always duplicated; after that the probability falls as
consecutive agreements grow (``(falloff_scale / agreements) ** 2``), down to a floor
(~5 %, higher for video, whose checks catch less per job); after any blame every
job is duplicated again for ``post_blame_jobs`` jobs, and a peer blamed while
still new (before ``probation_jobs``) is duplicated throughout. A duplicate goes to a peer
in good standing, unrelated to the first where possible, and looks like any
other job to both. When two disagree (or cannot tell), a third peer decides and
the odd one out is blamed (:func:`resolve`).

Verification is a per-job choice behind one interface (:class:`VerificationMethod`):
``none``, ``spot`` (the default) and ``redundant:K`` (every job to K peers,
majority wins); :func:`parse_verification` reads the RPC field.

Pure: randomness comes in as ``random.Random``; histories are immutable values.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import Protocol

from lpnode.protocol.errors import ConfigError
from lpnode.protocol.jobspec import Pipeline

from .compare import Verdict
from .errors import BadVerification

__all__ = [
    "MAX_REDUNDANCY",
    "Candidate",
    "NoVerification",
    "PeerHistory",
    "PlanContext",
    "Redundant",
    "Resolution",
    "SpotCheck",
    "SpotCheckConfig",
    "SpotCheckPolicy",
    "VerificationMethod",
    "VerificationPlan",
    "blame_stands",
    "choose_checker",
    "choose_suspect",
    "parse_verification",
    "resolve",
]

MAX_REDUNDANCY = 5  # redundant:K allows 1 < K <= 5 peers per job
_VIDEO = frozenset({Pipeline.IMAGE_TO_VIDEO, Pipeline.FRAME_INTERPOLATION})


@dataclass(frozen=True)
class SpotCheckConfig:
    # A peer's first jobs per model family: always duplicated. 50 so that every one of a new cheater's first 50
    # jobs can count against it (the "banned within 50 jobs" target); an unchecked cheat is evidence lost.
    initial_checks: int = 50
    floor_rate: float = 0.05  # never check less often than this once established
    # Video pipelines: one check covers fewer, costlier jobs, so a point stricter; not more, so that checks stay
    # under 7 % of a video requester's compute once its peers are established (6.0-6.4 % simulated; 10.1-10.6 %
    # at the 10 % this was, docs/verification.md). Detection within a cheater's first 50 jobs does not depend on
    # the floor: initial_checks checks every one of them.
    video_floor_rate: float = 0.06
    # After a blame, duplicate this many of the peer's next jobs. Each honest blame costs this many checks, so it
    # sets the overhead at a high honest false-output rate (20: ~6.8 % at 1 %, docs/verification.md); a cheater's
    # blames also reset its agreements, which keeps it checked far longer than this window.
    post_blame_jobs: int = 20
    # A peer blamed before its probation_jobs-th job stays fully checked until then: nearly every cheater is blamed
    # early, and checking it all the way keeps evidence coming (the slow tail of jobs-to-ban shrinks), while an
    # honest newcomer pays only with early checks, not with established overhead.
    probation_jobs: int = 200
    falloff_scale: float = 10.0  # probability (falloff_scale / agreements) ** power once past initial_checks
    falloff_power: float = 2.0  # 2 with scale 10 reaches the 5 % floor after ~45 consecutive agreements
    min_checker_score: float = 0.3  # a checker needs this score (scoring.score) unless none has it
    # A blamed, unbanned peer (a suspect) runs a copy of other peers' checked jobs beside the usual checker until
    # it has passed this many checks since its blame. The ranking gives a suspect little work, so without these
    # probes the evidence that would ban a cheater, or clear an honest peer blamed by bad luck, never comes.
    # Costs at most this many extra runs per blame (one per check, while a suspect serves the model).
    suspect_probes: int = 10

    def __post_init__(self) -> None:
        if min(self.initial_checks, self.post_blame_jobs, self.probation_jobs, self.suspect_probes) < 0:
            raise ConfigError("initial_checks, post_blame_jobs, probation_jobs and suspect_probes must be non-negative")
        if self.falloff_scale <= 0:
            raise ConfigError("falloff_scale must be positive")
        for name in ("floor_rate", "video_floor_rate", "min_checker_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class PeerHistory:
    """What the policy knows about one peer for one model family (the store keeps it)."""

    jobs: int = 0  # jobs given to this peer
    consecutive_agreements: int = 0  # checks passed since the last blame
    jobs_since_blame: int | None = None  # None: never blamed

    def after_job(self) -> PeerHistory:
        since = None if self.jobs_since_blame is None else self.jobs_since_blame + 1
        return replace(self, jobs=self.jobs + 1, jobs_since_blame=since)

    def after_agreement(self) -> PeerHistory:
        return replace(self, consecutive_agreements=self.consecutive_agreements + 1)

    def after_blame(self) -> PeerHistory:
        return replace(self, consecutive_agreements=0, jobs_since_blame=0)

    def after_check(self, *, blamed: bool) -> PeerHistory:
        return self.after_blame() if blamed else self.after_agreement()


class SpotCheckPolicy:
    """Decides, per job, whether to duplicate it unannounced."""

    def __init__(self, config: SpotCheckConfig | None = None) -> None:
        self.config = config or SpotCheckConfig()

    def floor(self, pipeline: Pipeline | str) -> float:
        return self.config.video_floor_rate if Pipeline(pipeline) in _VIDEO else self.config.floor_rate

    def probability(self, history: PeerHistory, pipeline: Pipeline | str) -> float:
        """The chance this peer's next job is duplicated."""
        c = self.config
        if history.jobs < c.initial_checks:
            return 1.0
        if history.jobs_since_blame is not None and history.jobs_since_blame < c.post_blame_jobs:
            return 1.0
        if history.jobs_since_blame is not None and history.jobs < c.probation_jobs:
            return 1.0
        agreements = max(1, history.consecutive_agreements)
        return min(1.0, max(self.floor(pipeline), math.pow(c.falloff_scale / agreements, c.falloff_power)))

    def should_duplicate(self, history: PeerHistory, pipeline: Pipeline | str, rng: random.Random) -> bool:
        p = self.probability(history, pipeline)
        return p >= 1.0 or rng.random() < p


# ---------------------------------------------------------------- checkers and blame


@dataclass(frozen=True)
class Candidate:
    """A peer that could check a job (it serves the model), as the directory and the store know it."""

    peer_id: str
    score: float  # scoring.score for the job's model family
    addr_prefix: str = ""  # e.g. the /24 or /48 of its public address: same prefix, maybe same owner
    gpu: str = ""  # advertised GPU name


def _unrelated(a: Candidate, first: Candidate | None) -> bool:
    if first is None:
        return True
    return not (a.addr_prefix and a.addr_prefix == first.addr_prefix)


def choose_checker(
    candidates: Sequence[Candidate],
    first_peer: str,
    rng: random.Random,
    *,
    exclude: frozenset[str] = frozenset(),
    min_score: float = SpotCheckConfig.min_checker_score,
) -> Candidate | None:
    """A checker for a job ``first_peer`` ran: never that peer (or ``exclude``d ones), good standing first,
    unrelated to it (other address prefix) where possible; the best score wins, ties broken by ``rng``."""
    first = next((c for c in candidates if c.peer_id == first_peer), None)
    pool = [c for c in candidates if c.peer_id != first_peer and c.peer_id not in exclude]
    if not pool:
        return None
    # Tiers, best first: good standing and unrelated; good standing; unrelated; anyone.
    tiers = (
        [c for c in pool if c.score >= min_score and _unrelated(c, first)],
        [c for c in pool if c.score >= min_score],
        [c for c in pool if _unrelated(c, first)],
        pool,
    )
    tier = next(t for t in tiers if t)
    best = max(c.score for c in tier)
    top = sorted((c for c in tier if c.score == best), key=lambda c: c.peer_id)
    return rng.choice(top)


def choose_suspect(
    candidates: Sequence[tuple[Candidate, PeerHistory]],
    rng: random.Random,
    *,
    exclude: frozenset[str] = frozenset(),
    probes: int = SpotCheckConfig.suspect_probes,
) -> Candidate | None:
    """A suspect to run a copy of a checked job beside its checker: blamed, with fewer than ``probes``
    checks passed since, not ``exclude``d (the job's own peers). The least cleared first, ties by ``rng``."""
    suspects = [
        (history.consecutive_agreements, candidate.peer_id, candidate)
        for candidate, history in candidates
        if candidate.peer_id not in exclude
        and history.jobs_since_blame is not None
        and history.consecutive_agreements < probes
    ]
    if not suspects:
        return None
    least = min(agreements for agreements, _, _ in suspects)
    return rng.choice(sorted((peer, c) for agreements, peer, c in suspects if agreements == least))[1]


@dataclass(frozen=True)
class Resolution:
    blamed: tuple[str, ...]  # peers outside the agreeing majority
    credited: tuple[str, ...]  # peers in it
    need_more: bool  # no majority yet: ask another peer (a third, for a spot check)


def resolve(peers: Sequence[str], verdicts: Mapping[frozenset[str], Verdict]) -> Resolution:
    """Who is blamed, from pairwise verdicts among the peers that ran one job.

    The largest group of peers that all agree pairwise is credited when it holds
    more than half of them, and everyone else is blamed. So two peers that agree
    settle a spot check; two that do not (disagree or inconclusive) need a third,
    and the odd one out of three is blamed. No strict majority: nobody is blamed
    and ``need_more`` is set.
    """
    unique = list(dict.fromkeys(peers))
    if len(unique) < 2:
        raise ValueError("resolve needs at least two peers")

    def agree(a: str, b: str) -> bool:
        return verdicts.get(frozenset((a, b))) is Verdict.AGREE

    best: list[str] = []
    # At most MAX_REDUNDANCY + 1 peers: trying every subset is cheap and exact.
    n = len(unique)
    for mask in range(1, 1 << n):
        group = [unique[i] for i in range(n) if mask >> i & 1]
        if len(group) > len(best) and all(agree(a, b) for i, a in enumerate(group) for b in group[i + 1 :]):
            best = group
    if 2 * len(best) > n and len(best) >= 2:
        return Resolution(tuple(p for p in unique if p not in best), tuple(best), need_more=False)
    return Resolution((), (), need_more=True)


def blame_stands(credited: Sequence[str], blamed: Sequence[str], discredited: Set[str]) -> bool:
    """Whether a settled blame still holds once the word of ``discredited`` (banned) peers no longer counts.

    The majority that outvoted ``blamed`` is taken again without its discredited members, by :func:`resolve`'s
    rule (a group of at least two holding more than half of the peers left). Only the majority side is thinned:
    a blamed peer's own ban says nothing about who outvoted it, so it stays in the count.
    """
    left = [peer for peer in dict.fromkeys(credited) if peer not in discredited]
    return len(left) >= 2 and 2 * len(left) > len(left) + len(set(blamed) - set(left))


# ---------------------------------------------------------------- verification methods


@dataclass(frozen=True)
class VerificationPlan:
    copies: int  # extra runs of the job beyond the first
    peers: tuple[str, ...]  # who runs them (may be fewer than copies when too few candidates)


@dataclass(frozen=True)
class PlanContext:
    """What every verification method plans from, once the job's first peer is chosen."""

    first_peer: str  # who ran the job
    history: PeerHistory  # that peer's history for the job's model family, before this job
    pipeline: Pipeline | str
    candidates: Sequence[Candidate]  # peers that could run a copy (the first one included)


class VerificationMethod(Protocol):
    """One way to verify a job. ``plan`` is called once the first peer is chosen."""

    @property
    def name(self) -> str: ...

    def plan(self, job: PlanContext, rng: random.Random) -> VerificationPlan: ...


class NoVerification:
    name = "none"

    def plan(self, job: PlanContext, rng: random.Random) -> VerificationPlan:
        return VerificationPlan(0, ())


class SpotCheck:
    name = "spot"

    def __init__(self, policy: SpotCheckPolicy | None = None) -> None:
        self.policy = policy or SpotCheckPolicy()

    def plan(self, job: PlanContext, rng: random.Random) -> VerificationPlan:
        if not self.policy.should_duplicate(job.history, job.pipeline, rng):
            return VerificationPlan(0, ())
        checker = choose_checker(job.candidates, job.first_peer, rng, min_score=self.policy.config.min_checker_score)
        return VerificationPlan(1, (checker.peer_id,) if checker else ())


class Redundant:
    """Every job to ``k`` peers in all; the majority of :func:`resolve` wins."""

    def __init__(self, k: int) -> None:
        if not 1 < k <= MAX_REDUNDANCY:
            raise BadVerification(f"redundant:K needs 1 < K <= {MAX_REDUNDANCY}, got {k}")
        self.k = k

    @property
    def name(self) -> str:
        return f"redundant:{self.k}"

    def plan(self, job: PlanContext, rng: random.Random) -> VerificationPlan:
        chosen: list[str] = []
        for _ in range(self.k - 1):
            pick = choose_checker(job.candidates, job.first_peer, rng, exclude=frozenset(chosen))
            if pick is None:
                break
            chosen.append(pick.peer_id)
        return VerificationPlan(self.k - 1, tuple(chosen))


def parse_verification(text: str, policy: SpotCheckPolicy | None = None) -> VerificationMethod:
    """``none`` | ``spot`` | ``redundant:K`` (1 < K <= 5), as the RPC field and CLI flag spell it."""
    value = text.strip().lower()
    if value == "none":
        return NoVerification()
    if value == "spot":
        return SpotCheck(policy)
    prefix, sep, count = value.partition(":")
    if prefix == "redundant" and sep and count.isdigit():
        return Redundant(int(count))
    raise BadVerification(f"verification must be none, spot or redundant:K (1 < K <= {MAX_REDUNDANCY}), got {text!r}")
