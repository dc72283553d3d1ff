"""Beta reputation with time decay, ranked by a lower confidence bound; ban rules.

Per (peer, model family) the store keeps two decayed counts: ``good`` (checks
the peer passed) and ``bad`` (checks it was blamed for). Good evidence fades
faster than bad (two half-lives): a peer cannot bank a long honest past and
then cheat on credit, while an old blame still weighs after weeks.

The score is the lower bound of a Wilson interval on the Beta posterior's
mean, with a weak prior (one good, one bad): a new peer scores low enough that
proven peers come first, yet well above a proven cheater, so exploration (the
peer choice's job) keeps newcomers reachable.

Failed tries that were the peer's doing (:func:`after_failure`) lower the score too: a *cheat* (it signed a
result that is not the job's) counts as a blame, in the ban test as well; a protocol violation or an unproven
failure (vanished, silent) goes to a third count, ``failed``, weighted below a blame, that only the score reads.

A ban is Wald's sequential probability ratio test (SPRT) between two failure
rates per check: ``ban_honest_rate`` (p0, what honest hardware differences may
explain) and ``ban_cheat_rate`` (p1, the cheater the network must catch). Each
blame adds ``ln(p1/p0)`` to the log-likelihood ratio and each passed check adds
``ln((1-p1)/(1-p0))`` (negative); the peer is banned once the ratio reaches
``ban_log_ratio`` and it has at least ``ban_min_bad`` blames. Under p0 the
likelihood ratio is a martingale, so by Ville's inequality an honest peer
failing at most p0 of its checks is *ever* banned with probability at most
``exp(-ban_log_ratio)``, however long it serves; a cheater failing p1 drifts up
by the Kullback-Leibler divergence per check and is caught in the fewest checks
on average (Wald-Wolfowitz). A fixed blame count cannot do both: it is either
slow for cheaters or, over a long honest life, sure to ban someone. Two
conflicting receipts signed by one worker for one job id (:func:`equivocation`)
are proof and ban at once.

The test reads counts of its own (``ban_good`` / ``ban_bad``), both faded with
one half-life (``ban_half_life_s``): the score's counts fade good evidence
faster than bad on purpose, which would bias the test towards a ban as a peer
ages (an honest peer's apparent failure rate would drift towards
``bad_half_life / good_half_life`` times its true one over months). With one
half-life the ratio of the counts estimates the recent failure rate without
bias, and the test forgets a past older than a few half-lives, so a long honest
past buys no lasting credit either. Ville's bound is exact for an undecayed
test; with the decay it holds over spans short against the half-life (the
simulation's 10,000 jobs span 7 days of a 14-day half-life); docs/verification.md
measures 120-day lives.

Pure functions over an explicit ``now`` (unix seconds); nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from lpnode.protocol.errors import ConfigError
from lpnode.protocol.receipts import Receipt, conflicting

__all__ = [
    "FAILURE_CLASSES",
    "Evidence",
    "ScoringConfig",
    "after_check",
    "after_failure",
    "as_of",
    "ban_until",
    "decay",
    "equivocation",
    "expected_trust",
    "fail_rate_lower_bound",
    "log_likelihood_ratio",
    "record",
    "score",
    "should_ban",
    "sprt_neutral_rate",
    "wilson_lower_bound",
    "withdraw_blame",
]

_DAY = 86_400.0
# Blames decay from the moment they are recorded, so three blames seconds apart sum to 2.99999...:
# a blame that faded by less than this still counts whole towards ban_min_bad (~1 day at 90 days' half-life).
BAN_COUNT_SLACK = 0.02


@dataclass(frozen=True)
class ScoringConfig:
    prior_good: float = 1.0  # pseudo-counts a new peer starts with
    prior_bad: float = 1.0
    good_half_life_s: float = 14 * _DAY  # seconds; good evidence fades faster ...
    bad_half_life_s: float = 90 * _DAY  # ... than bad
    z: float = 1.645  # one-sided 95 % for the score's lower bound
    ban_z: float = 2.326  # one-sided 99 % for fail_rate_lower_bound (display)
    ban_min_bad: float = 2.0  # blames (the slow-fading `bad` count) before any ban: one odd output is never enough
    # SPRT p0: confirmed blames per check (checker and tie-breaker agree against the peer) that honest hardware may
    # cause. Calibration saw none: 0 of 60 honest CPU variants, 0 of 20 CUDA vs CPU fp32, 40 of 40 fp16 vs fp32
    # agree, all far inside the agree bounds; 0.2 % is the policy simulation's honest floor (docs/verification.md).
    ban_honest_rate: float = 0.002
    ban_cheat_rate: float = 0.10  # SPRT p1: the failure rate of the cheater the targets name
    # SPRT bound ln(A): an honest peer failing <= p0 of its checks is ever banned with chance <= e**-5 ~ 0.7 %.
    # A blame adds ln 50 = 3.9, a passed check -0.10: 2 blames ban with at most 27 passed checks between them,
    # 3 with at most ~65. Higher is safer for honest peers and slower for cheaters: the sweep is in
    # docs/verification.md (python -m lpnode.reputation.calibrate --sweep).
    ban_log_ratio: float = 5.0
    # Both ban counts fade with this one half-life, so the test reads an unbiased recent failure rate (the score's
    # counts fade good faster than bad on purpose, which would push an ageing honest peer towards a ban).
    ban_half_life_s: float = 14 * _DAY
    ban_duration_s: float = 30 * _DAY  # seconds a ban lasts (doubled per earlier ban by the store)
    # A failed try that was the worker's doing (node.job_try's fault classes) lowers the score. A cheat (it signed
    # a result that is not the job's) is a blame in the ban test (two ban, as two blames do) and weighs
    # cheat_weight blames in the score: unlike a blame, which a majority decides and honest hardware may earn (p0),
    # it is certain, and one must outweigh a queue (one job queued doubles a peer's expected time; a single blame's
    # weight, 0.12 -> 0.078, did not in the JS-worker run, docs/verification.md). A protocol violation weighs a
    # blame in the score alone (a stale advert or another version can explain some); a failure nobody can prove (it
    # took the job, then vanished or fell silent: a network can look the same) weighs half of one.
    cheat_weight: float = 3.0
    violation_weight: float = 1.0
    unproven_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.prior_good <= 0 or self.prior_bad <= 0:
            raise ConfigError("scoring priors must be positive")
        if not 0 < self.good_half_life_s <= self.bad_half_life_s:
            raise ConfigError("need 0 < good_half_life_s <= bad_half_life_s (good evidence fades faster)")
        if self.z <= 0 or self.ban_z <= 0 or self.ban_min_bad < 1 or self.ban_log_ratio <= 0:
            raise ConfigError(f"invalid ban or confidence settings: {self}")
        if not 0 < self.ban_honest_rate < self.ban_cheat_rate < 1:
            raise ConfigError(f"need 0 < ban_honest_rate < ban_cheat_rate < 1, got {self}")
        if self.ban_duration_s <= 0 or self.ban_half_life_s <= 0:
            raise ConfigError("ban_duration_s and ban_half_life_s must be positive")
        if not (0 <= self.unproven_weight <= self.violation_weight <= 1 <= self.cheat_weight):
            raise ConfigError("need 0 <= unproven_weight <= violation_weight <= 1 <= cheat_weight (a blame weighs 1)")


@dataclass(frozen=True)
class Evidence:
    """Decayed counts for one (peer, model family) as of ``at`` (unix seconds).

    ``good`` / ``bad`` feed the score (good fades faster); ``ban_good`` / ``ban_bad`` count the same checks faded
    with one half-life and feed the ban test (:func:`should_ban`). ``failed`` (:func:`after_failure`) feeds the
    score only.
    """

    good: float = 0.0
    bad: float = 0.0
    at: float = 0.0
    ban_good: float = 0.0
    ban_bad: float = 0.0
    # failed tries that prove no cheating (protocol violations, unproven failures), weighted: in the score beside
    # `bad`, faded like it, never in the ban test (cheats are in `bad` and `ban_bad`, as blames are)
    failed: float = 0.0


def _fade(value: float, elapsed: float, half_life: float) -> float:
    return value * math.pow(0.5, max(0.0, elapsed) / half_life)


def decay(evidence: Evidence, now: float, config: ScoringConfig) -> Evidence:
    """The counts as they stand at ``now``. A ``now`` before ``at`` (clock went back) decays nothing."""
    elapsed = now - evidence.at
    if elapsed <= 0:
        return evidence
    return Evidence(
        good=_fade(evidence.good, elapsed, config.good_half_life_s),
        bad=_fade(evidence.bad, elapsed, config.bad_half_life_s),
        at=now,
        ban_good=_fade(evidence.ban_good, elapsed, config.ban_half_life_s),
        ban_bad=_fade(evidence.ban_bad, elapsed, config.ban_half_life_s),
        failed=_fade(evidence.failed, elapsed, config.bad_half_life_s),
    )


def as_of(evidence: Evidence, then: float, config: ScoringConfig) -> Evidence:
    """The counts scaled back to an earlier moment ``then`` (decay run backwards): what a test at ``then`` read,
    had nothing been recorded since. The store asks the ban test again as of a ban's time with this."""
    elapsed = evidence.at - then
    if elapsed <= 0:
        return evidence
    return Evidence(
        good=evidence.good * math.pow(2.0, elapsed / config.good_half_life_s),
        bad=evidence.bad * math.pow(2.0, elapsed / config.bad_half_life_s),
        at=then,
        ban_good=evidence.ban_good * math.pow(2.0, elapsed / config.ban_half_life_s),
        ban_bad=evidence.ban_bad * math.pow(2.0, elapsed / config.ban_half_life_s),
        failed=evidence.failed * math.pow(2.0, elapsed / config.bad_half_life_s),
    )


def withdraw_blame(evidence: Evidence, blamed_at: float, now: float, config: ScoringConfig) -> Evidence:
    """The counts at ``now`` without one blame recorded at ``blamed_at``: the blame as it has faded since, taken
    off both bad counts (never below zero: rounding, or a count migrated from before v2)."""
    current = decay(evidence, now, config)
    age = max(0.0, current.at - blamed_at)
    return replace(
        current,
        bad=max(0.0, current.bad - _fade(1.0, age, config.bad_half_life_s)),
        ban_bad=max(0.0, current.ban_bad - _fade(1.0, age, config.ban_half_life_s)),
    )


def record(evidence: Evidence, now: float, config: ScoringConfig, *, good: float = 0.0, bad: float = 0.0) -> Evidence:
    """Add evidence at ``now`` (after decaying what was there)."""
    if good < 0 or bad < 0:
        raise ValueError("evidence weights are non-negative")
    current = decay(evidence, now, config)
    return replace(
        current,
        good=current.good + good,
        bad=current.bad + bad,
        at=max(now, current.at),
        ban_good=current.ban_good + good,
        ban_bad=current.ban_bad + bad,
    )


def wilson_lower_bound(successes: float, trials: float, z: float) -> float:
    """Lower end of the Wilson score interval for a success rate (real-valued counts allowed)."""
    if trials <= 0:
        return 0.0
    p = min(1.0, max(0.0, successes / trials))
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


def score(evidence: Evidence, now: float, config: ScoringConfig) -> float:
    """Trust in [0, 1]: the lower confidence bound of the Beta posterior's mean. New peer (prior only): ~0.12."""
    current = decay(evidence, now, config)
    alpha = config.prior_good + current.good
    beta = config.prior_bad + current.bad + current.failed
    return wilson_lower_bound(alpha, alpha + beta, config.z)


def expected_trust(evidence: Evidence, now: float, config: ScoringConfig) -> float:
    """The Beta posterior's mean (for display beside the score)."""
    current = decay(evidence, now, config)
    alpha = config.prior_good + current.good
    return alpha / (alpha + config.prior_bad + current.bad + current.failed)


def fail_rate_lower_bound(evidence: Evidence, now: float, config: ScoringConfig) -> float:
    """How often, at least (99 % one-sided), this peer fails its checks (the ban counts). No prior."""
    current = decay(evidence, now, config)
    return wilson_lower_bound(current.ban_bad, current.ban_good + current.ban_bad, config.ban_z)


def log_likelihood_ratio(evidence: Evidence, now: float, config: ScoringConfig) -> float:
    """ln P(evidence | fails ban_cheat_rate) / P(evidence | fails ban_honest_rate), on the ban counts."""
    current = decay(evidence, now, config)
    p0, p1 = config.ban_honest_rate, config.ban_cheat_rate
    return current.ban_bad * math.log(p1 / p0) + current.ban_good * math.log((1 - p1) / (1 - p0))


def sprt_neutral_rate(config: ScoringConfig) -> float:
    """The failure rate at which the log-likelihood ratio has no drift: below it an honest peer's falls."""
    p0, p1 = config.ban_honest_rate, config.ban_cheat_rate
    up, down = math.log(p1 / p0), math.log((1 - p0) / (1 - p1))
    return down / (up + down)


def after_check(evidence: Evidence, now: float, config: ScoringConfig, *, blamed: bool) -> tuple[Evidence, bool]:
    """One settled check of a peer: its evidence with the check recorded, and whether the ban test now says
    "cheater" (only a blame can tip it). The store and the policy simulation both take this step."""
    if not blamed:
        return record(evidence, now, config, good=1.0), False
    new = record(evidence, now, config, bad=1.0)
    return new, should_ban(new, now, config)


FAILURE_CLASSES = ("cheat", "violation", "unproven")  # node.job_try's FAULT_* values, most serious first


def after_failure(evidence: Evidence, now: float, config: ScoringConfig, *, fault: str) -> tuple[Evidence, bool]:
    """One failed try that was the peer's doing (``fault``, one of :data:`FAILURE_CLASSES`): its evidence with the
    failure recorded, and whether the ban test now says "cheater".

    A cheat is a blame in every count (score and ban test), and weighs ``cheat_weight`` blames in the score: an
    honest worker never signs a receipt for bytes it did not send, or an output that is not the job's, so it needs
    no checker to decide it. The other classes lower the score only: they waste a try, but prove no cheating (see
    :class:`ScoringConfig` for the weights).
    """
    if fault == "cheat":
        new = record(evidence, now, config, bad=1.0)
        new = replace(new, failed=new.failed + config.cheat_weight - 1.0)  # the rest of its weight: the score's alone
        return new, should_ban(new, now, config)
    weights = {"violation": config.violation_weight, "unproven": config.unproven_weight}
    if fault not in weights:
        raise ValueError(f"not a failure class: {fault!r}")
    current = decay(evidence, now, config)
    return replace(current, failed=current.failed + weights[fault], at=max(now, current.at)), False


def should_ban(evidence: Evidence, now: float, config: ScoringConfig) -> bool:
    """Wald's SPRT says "cheater" (the ratio reached ban_log_ratio) on at least ban_min_bad blames."""
    current = decay(evidence, now, config)
    enough = current.bad >= config.ban_min_bad - BAN_COUNT_SLACK
    return enough and log_likelihood_ratio(current, now, config) >= config.ban_log_ratio


def ban_until(now: float, earlier_bans: int, config: ScoringConfig) -> float:
    """When a ban issued at ``now`` ends: the base duration doubled per earlier ban (capped at 2**6)."""
    if earlier_bans < 0:
        raise ValueError("earlier_bans is a count")
    return now + config.ban_duration_s * float(2 ** min(earlier_bans, 6))


def equivocation(a: Receipt, b: Receipt) -> bool:
    """Proof of cheating: one worker signed two receipts for one run (job id and quote id) with different outputs.

    Pass only receipts that passed ``verify_receipt``; the pair is the evidence to keep.
    """
    return conflicting(a, b)
