"""The large-sample calibration: exact bounds, the tie-break count, the network simulation, a tiny honest sample."""

from __future__ import annotations

import math

import pytest
from lpnode.protocol.jobspec import Pipeline
from lpnode.reputation.calibrate_honest import _tie_break, honest_sample, honest_tables
from lpnode.reputation.calibrate_stats import (
    binomial_cdf,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from lpnode.reputation.calibrate_target import target_row
from lpnode.reputation.compare import Verdict
from lpnode.reputation.policy_sim import NetConfig, simulate_network

# ---------------------------------------------------------------- Clopper–Pearson


def test_upper_bound_of_zero_is_the_closed_form() -> None:
    assert clopper_pearson_upper(0, 1500) == pytest.approx(1 - 0.05 ** (1 / 1500))
    assert clopper_pearson_upper(0, 1500) < 0.002 < clopper_pearson_upper(0, 1400)


def test_bounds_match_the_beta_quantiles() -> None:
    # scipy.stats.beta.ppf(0.95, 2, 99), .ppf(0.025, 3, 998), .ppf(0.975, 4, 997)
    assert clopper_pearson_upper(1, 100) == pytest.approx(0.0465598114535389, rel=1e-9)
    low, high = clopper_pearson_interval(3, 1000)
    assert low == pytest.approx(0.0006190999316495713, rel=1e-9)
    assert high == pytest.approx(0.008742023238478303, rel=1e-9)


def test_bounds_at_the_edges() -> None:
    assert clopper_pearson_upper(5, 5) == 1.0
    assert clopper_pearson_lower(0, 5) == 0.0
    assert clopper_pearson_lower(5, 5) == pytest.approx(0.05 ** (1 / 5))
    assert binomial_cdf(-1, 10, 0.5) == 0.0 and binomial_cdf(10, 10, 0.5) == 1.0
    assert binomial_cdf(0, 10, 0.5) == pytest.approx(0.5**10)
    with pytest.raises(ValueError):
        clopper_pearson_upper(3, 2)
    with pytest.raises(ValueError):
        clopper_pearson_upper(0, 10, alpha=1.0)


# ---------------------------------------------------------------- the tie-break count


def test_one_odd_output_is_blamed_whenever_it_is_worker_or_checker() -> None:
    names = ["a", "b", "c", "d", "e"]
    verdicts = {
        frozenset((x, y)): Verdict.INCONCLUSIVE if "a" in (x, y) else Verdict.AGREE
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    }
    triples, needed, blamed = _tie_break(names, verdicts)
    # 60 ordered triples; "a" first or second in 24 of them, and then it is the odd one out of three
    assert (triples, needed, blamed) == (60, 24, 24)
    all_agree = dict.fromkeys(verdicts, Verdict.AGREE)
    assert _tie_break(names, all_agree) == (60, 0, 0)


# ---------------------------------------------------------------- the network simulation


def test_honest_network_without_off_outputs_never_blames() -> None:
    config = NetConfig(peers=5, jobs=400, honest_off_rate=0.0)
    outcome = simulate_network(config, run=0)
    assert outcome.bans == () and outcome.blames == 0 and outcome.unsettled == 0
    # every peer's first 50 jobs are checked: 250 of the first 250-odd jobs at least
    assert outcome.checks >= 5 * 50
    assert outcome.extra_runs == outcome.checks  # agreement settles with the checker alone


def test_network_runs_are_seeded_and_independent() -> None:
    config = NetConfig(peers=5, jobs=300, honest_off_rate=0.05)
    assert simulate_network(config, 3) == simulate_network(config, 3)
    assert simulate_network(config, 3) != simulate_network(config, 4)


def test_a_high_off_rate_bans_honest_peers_and_counts_checker_blames() -> None:
    outcome = simulate_network(NetConfig(peers=6, jobs=600, honest_off_rate=0.2), run=0)
    assert outcome.bans
    assert all(0 <= peer < 6 and 1 <= job <= 600 for peer, job in outcome.bans)
    assert len({peer for peer, _ in outcome.bans}) == len(outcome.bans)  # first ban of each peer only
    assert outcome.blames > 0 and outcome.extra_runs > outcome.checks  # thirds were asked


def test_target_row_reports_both_readings() -> None:
    row = target_row(0.2, 4, config=NetConfig(peers=4, jobs=200), stress_peers=3, processes=1)
    assert row.runs == 4 and 0 <= row.runs_with_ban <= 4 and row.honest_bans >= row.runs_with_ban
    low, high = row.interval
    assert 0.0 <= low <= row.runs_with_ban / 4 <= high <= 1.0
    assert row.stress_peers == 3 and 0 <= row.stress_banned <= 3
    assert math.isfinite(row.extra_runs_per_job) and row.extra_runs_per_job > 0


# ---------------------------------------------------------------- a tiny honest sample (real tiny presets, CPU)


def test_tiny_honest_sample_agrees_and_blames_nobody() -> None:
    sample = honest_sample(1, pipelines=(Pipeline.TEXT_TO_IMAGE,))
    assert sample.jobs == {Pipeline.TEXT_TO_IMAGE: 1}
    runs = len({p.a for p in sample.pairs} | {p.b for p in sample.pairs})
    assert runs >= 4  # the reference and three HonestVariants at least (threads where torch has several)
    assert len(sample.pairs) == runs * (runs - 1) // 2
    assert all(p.comparison.verdict is Verdict.AGREE for p in sample.pairs)
    assert sample.blamed == {Pipeline.TEXT_TO_IMAGE: 0}
    assert sample.triples == {Pipeline.TEXT_TO_IMAGE: runs * (runs - 1) * (runs - 2)}
    table = honest_tables(sample)
    assert any(line.startswith("| text-to-image | 1 |") for line in table)
    assert any("disagree, variant vs reference | 0/" in line for line in table)
