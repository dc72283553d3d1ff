"""Spot-check policy, resolution, verification parsing, scoring and the policy simulation (pure, seeded)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lpnode.protocol.errors import ConfigError
from lpnode.protocol.jobspec import Pipeline
from lpnode.reputation.compare import NearExactThresholds, Thresholds, Verdict
from lpnode.reputation.errors import BadVerification
from lpnode.reputation.policy import (
    Candidate,
    NoVerification,
    PeerHistory,
    PlanContext,
    Redundant,
    SpotCheck,
    SpotCheckConfig,
    SpotCheckPolicy,
    choose_checker,
    parse_verification,
    resolve,
)
from lpnode.reputation.policy_sim import SimConfig, SimPeer, simulate, summarise
from lpnode.reputation.scoring import (
    Evidence,
    ScoringConfig,
    after_check,
    decay,
    log_likelihood_ratio,
    record,
    score,
    should_ban,
    sprt_neutral_rate,
)

CFG = ScoringConfig()
DAY = 86_400.0


def established(agreements: int, jobs: int = 1_000) -> PeerHistory:
    return PeerHistory(jobs=jobs, consecutive_agreements=agreements)


def test_first_jobs_always_checked_then_rate_falls_to_the_floor() -> None:
    policy = SpotCheckPolicy()
    rng = random.Random(1)
    history = PeerHistory()
    for _ in range(policy.config.initial_checks):
        assert policy.should_duplicate(history, Pipeline.TEXT_TO_IMAGE, rng)
        history = history.after_job().after_agreement()
    rates = [policy.probability(established(a), Pipeline.TEXT_TO_IMAGE) for a in (20, 40, 80, 1_000, 100_000)]
    assert rates == sorted(rates, reverse=True) and rates[-1] == policy.config.floor_rate
    assert policy.probability(established(100_000), Pipeline.IMAGE_TO_VIDEO) == policy.config.video_floor_rate
    hits = sum(policy.should_duplicate(established(100_000), Pipeline.TEXT_TO_IMAGE, rng) for _ in range(20_000))
    assert 0.04 < hits / 20_000 < 0.06


def test_blame_duplicates_everything_for_a_while() -> None:
    policy = SpotCheckPolicy(SpotCheckConfig(post_blame_jobs=5))
    history = established(100_000).after_blame()
    for _ in range(5):
        assert policy.probability(history, Pipeline.TEXT_TO_IMAGE) == 1.0
        history = history.after_job()
    assert policy.probability(history, Pipeline.TEXT_TO_IMAGE) == 1.0  # agreements were reset too
    for _ in range(1_000):
        history = history.after_agreement()
    assert policy.probability(history, Pipeline.TEXT_TO_IMAGE) == policy.config.floor_rate


def test_a_newcomer_blamed_on_probation_is_checked_until_probation_ends() -> None:
    policy = SpotCheckPolicy(SpotCheckConfig(initial_checks=10, post_blame_jobs=5, probation_jobs=100))
    history = PeerHistory(jobs=10).after_blame()
    for _ in range(200):
        history = history.after_job().after_agreement()
        expected = 1.0 if history.jobs < 100 else None
        rate = policy.probability(history, Pipeline.TEXT_TO_IMAGE)
        assert rate == expected or (expected is None and rate < 0.1)
    # Blamed once established, after probation: only the post-blame window, then the falloff.
    late = established(1_000).after_blame()
    assert policy.probability(late, Pipeline.TEXT_TO_IMAGE) == 1.0
    for _ in range(5):
        late = late.after_job()
    late = replace(late, consecutive_agreements=100)
    assert policy.probability(late, Pipeline.TEXT_TO_IMAGE) == policy.config.floor_rate


def test_odd_one_out_is_blamed() -> None:
    ab = frozenset(("a", "b"))
    assert resolve(("a", "b"), {ab: Verdict.AGREE}).credited == ("a", "b")
    assert resolve(("a", "b"), {ab: Verdict.DISAGREE}).need_more
    three = {ab: Verdict.DISAGREE, frozenset(("a", "c")): Verdict.AGREE, frozenset(("b", "c")): Verdict.INCONCLUSIVE}
    outcome = resolve(("a", "b", "c"), three)
    assert outcome.blamed == ("b",) and set(outcome.credited) == {"a", "c"}
    nobody = {k: Verdict.DISAGREE for k in three}
    assert resolve(("a", "b", "c"), nobody).blamed == ()


def test_checker_is_never_the_first_and_prefers_unrelated_good_peers() -> None:
    first = Candidate("first", 0.9, addr_prefix="10.0.0")
    same_owner = Candidate("sibling", 0.95, addr_prefix="10.0.0")
    other = Candidate("other", 0.8, addr_prefix="10.9.9")
    shady = Candidate("new", 0.1, addr_prefix="10.7.7")
    rng = random.Random(0)
    assert choose_checker([first, same_owner, other, shady], "first", rng) == other
    assert choose_checker([first, same_owner], "first", rng) == same_owner
    assert choose_checker([first], "first", rng) is None


def test_verification_parsing() -> None:
    assert isinstance(parse_verification("none"), NoVerification)
    assert isinstance(parse_verification("spot"), SpotCheck)
    method = parse_verification("redundant:3")
    assert isinstance(method, Redundant) and method.name == "redundant:3"
    peers = [Candidate(f"p{i}", 0.9, addr_prefix=f"10.{i}") for i in range(5)]
    plan = method.plan(PlanContext("p0", PeerHistory(), Pipeline.TEXT_TO_IMAGE, peers), random.Random(0))
    assert plan.copies == 2 and len(set(plan.peers)) == 2 and "p0" not in plan.peers
    for bad in ("redundant:1", "redundant:6", "redundant:x", "always"):
        with pytest.raises(BadVerification):
            parse_verification(bad)


def test_thresholds_from_config() -> None:
    t = Thresholds.from_config({"upscale": {"psnr_agree": 45}, "text-to-image": {"phash_agree": 6}, "max_frames": 9})
    assert t.upscale == NearExactThresholds(45.0, 30.0) and t.text_to_image.phash_agree == 6 and t.max_frames == 9
    assert Thresholds.from_config(t.to_config()) == t
    for bad in ({"nope": {}}, {"upscale": {"ssim_agree": 1}}, {"upscale": {"psnr_agree": 10}}):
        with pytest.raises(ConfigError):
            Thresholds.from_config(bad)


def test_new_peer_scores_between_proven_good_and_proven_bad() -> None:
    new = score(Evidence(), 0.0, CFG)
    good = score(Evidence(good=50), 0.0, CFG)
    bad = score(Evidence(good=2, bad=20), 0.0, CFG)  # mostly blamed
    assert bad < new < good


def test_good_evidence_fades_faster_than_bad() -> None:
    later = decay(Evidence(good=10, bad=10, at=0.0), 30 * DAY, CFG)
    assert later.good < later.bad < 10


@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 1e8))
def test_score_is_a_probability_and_more_good_never_lowers_it(good: float, bad: float, now: float) -> None:
    ev = Evidence(good, bad, 0.0)
    s = score(ev, now, CFG)
    assert 0.0 <= s <= 1.0
    assert score(record(ev, now, CFG, good=1.0), now, CFG) >= s - 1e-12
    assert score(record(ev, now, CFG, bad=1.0), now, CFG) <= s + 1e-12


def counts(good: float, bad: float) -> Evidence:
    """Evidence with the same counts for the score and the ban test."""
    return Evidence(good, bad, 0.0, ban_good=good, ban_bad=bad)


def checks(pattern: str) -> tuple[Evidence, int | None]:
    """Feed checks one a minute ('x' blamed, '.' passed) through the store's step; the check that banned, if any."""
    evidence = Evidence()
    for n, mark in enumerate(pattern):
        evidence, ban = after_check(evidence, 60.0 * n, CFG, blamed=mark == "x")
        if ban:
            return evidence, n
    return evidence, None


def test_ban_rule_two_close_blames_or_three_within_sixty_checks() -> None:
    """The defaults: p0 0.2 %, p1 10 %, ln A 5. A blame adds ln 50 = 3.91, a passed check -0.103."""
    assert checks("x" + "." * 500)[1] is None  # one blame never bans
    assert checks("xx")[1] == 1  # two in a row: 7.8 >= 5
    assert checks("x" + "." * 27 + "x")[1] == 28  # 7.82 - 27 * 0.1034 = 5.03
    assert checks("x" + "." * 28 + "x")[1] is None  # 4.93: a second blame this far off waits for a third
    assert checks("x" + "." * 28 + "x" + "." * 36 + "x")[1] == 66  # 11.74 - 64 * 0.1034 = 5.12
    assert checks("x" + "." * 28 + "x" + "." * 38 + "x")[1] is None
    assert not should_ban(counts(1_000, 5), 0.0, CFG)  # 0.5 % of many checks: below the neutral rate (2.6 %)
    assert should_ban(counts(950, 50), 0.0, CFG)  # 5 % of many checks: above it
    assert not should_ban(counts(0, 2), 0.0, ScoringConfig(ban_log_ratio=1.0, ban_min_bad=3.0))
    assert not should_ban(Evidence(good=0, bad=3), 0.0, CFG)  # the score's counts alone do not ban
    assert CFG.ban_honest_rate < sprt_neutral_rate(CFG) < CFG.ban_cheat_rate


def test_the_ban_test_reads_an_unbiased_failure_rate_however_old_the_evidence() -> None:
    """An honest peer failing 1 % of its checks (100 a day) for 180 days. The score's counts fade good evidence
    faster, so their failure rate drifts up (to ~5 %, past the SPRT's neutral 2.6 %): read by the ban test they
    would ban it. The ban counts fade alike and keep reading 1 %: it is never banned."""
    evidence = Evidence()
    now = 0.0
    for k in range(180 * 100):
        now = k * DAY / 100
        evidence, ban = after_check(evidence, now, CFG, blamed=k % 100 == 0)
        assert not ban, k
    current = decay(evidence, now, CFG)
    assert current.ban_bad / (current.ban_good + current.ban_bad) == pytest.approx(0.01, rel=0.05)
    assert current.bad / (current.good + current.bad) > 0.04 > sprt_neutral_rate(CFG)
    assert log_likelihood_ratio(current, now, CFG) < -CFG.ban_log_ratio
    as_before = replace(current, ban_good=current.good, ban_bad=current.bad)  # the old rule read these
    assert should_ban(as_before, now, CFG)
    with pytest.raises(ConfigError):
        ScoringConfig(ban_half_life_s=0.0)


def test_sprt_drifts_down_for_honest_peers_and_up_for_cheaters() -> None:
    neutral = sprt_neutral_rate(CFG)
    assert CFG.ban_honest_rate < neutral < CFG.ban_cheat_rate
    for rate, sign in ((CFG.ban_honest_rate, -1), (CFG.ban_cheat_rate, 1)):
        llr = log_likelihood_ratio(counts(1_000 * (1 - rate), 1_000 * rate), 0.0, CFG)
        assert llr * sign > 0
    with pytest.raises(ConfigError):
        ScoringConfig(ban_honest_rate=0.2, ban_cheat_rate=0.1)


def test_an_honest_peer_at_the_honest_rate_is_rarely_ever_banned() -> None:
    """Ville's inequality: under p0 the chance of *ever* crossing ln A is at most 1/A, however long the peer serves."""
    rng = random.Random(7)
    peers, checks, banned = 400, 400, 0
    for _ in range(peers):
        ev = Evidence()
        for k in range(checks):
            blamed = rng.random() < CFG.ban_honest_rate
            ev = record(ev, float(k), CFG, good=0.0 if blamed else 1.0, bad=1.0 if blamed else 0.0)
            if should_ban(ev, float(k), CFG):
                banned += 1
                break
    bound = peers * math.exp(-CFG.ban_log_ratio)  # 2.7 of 400
    assert banned <= 2 * bound


def test_policy_simulation_meets_the_targets() -> None:
    """The measured figures of docs/verification.md, on fewer peers (seeded). "Within 50 jobs" cannot reach 99 %:
    a 10 % cheater cheats at most once in its first 50 jobs 3.4 % of the time; two blames ban only when close
    together (else honest peers would be), which gives ~91 % (the ceiling of any rule banning on 2 blames is 96.6 %)."""
    config = SimConfig(jobs_per_peer=2_000, established_after=500)
    cheaters = summarise("cheat-10", simulate(config, [SimPeer("cheat-10", 0.10)] * 200))
    assert cheaters.banned == 200
    assert cheaters.median_jobs_to_ban is not None and cheaters.median_jobs_to_ban <= 25
    assert cheaters.banned_within_50 >= 0.88 * 200
    always = summarise("cheat-100", simulate(config, [SimPeer("cheat-100", 1.0)] * 20))
    assert always.max_jobs_to_ban is not None and always.max_jobs_to_ban <= 3
    # honest peers at the 0.2 % floor are banned, if ever, early (two blames close together): ~0.2 % of them
    early = summarise("honest", simulate(replace(config, jobs_per_peer=300), [SimPeer("honest")] * 500))
    assert early.banned <= 3
    for off in (0.002, 0.01):  # the assumed honest false-output rate and a pessimistic one
        honest = summarise("honest", simulate(SimConfig(honest_off_rate=off), [SimPeer("honest")] * 3))
        assert honest.banned == 0
        assert honest.established_overhead is not None and honest.established_overhead <= 0.07
