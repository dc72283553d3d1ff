"""The advertised speed and the worker's ETAs: a fixed cost per run told apart from the work's."""

from __future__ import annotations

import pytest
from lpnode.models.speed import UNMEASURED, Speed, fit_speed


def test_a_fixed_cost_per_run_is_told_apart_from_the_work() -> None:
    # 0.03 s of set-up per run, then 2.5 megapixel-steps per second (the tiny preset on the CPU, roughly)
    runs = [(work, 0.03 + work / 2.5) for work in (0.008, 0.008, 0.13, 0.5, 3.3)]
    speed = fit_speed(runs)
    assert speed.mpx_steps_per_s == pytest.approx(2.5) and speed.overhead_s == pytest.approx(0.03)
    # the median ratio, measured mostly on small jobs, is ~10x slower than a large job runs
    assert fit_speed(runs[:2]).mpx_steps_per_s < 0.3
    assert speed.seconds(3.3) == pytest.approx(0.03 + 3.3 / 2.5)


def test_without_a_spread_of_sizes_the_median_ratio_stands() -> None:
    same_size = [(0.26, 0.14), (0.26, 0.15), (0.26, 0.13), (0.26, 0.14)]
    assert fit_speed(same_size) == Speed(pytest.approx(0.26 / 0.14), 0.0)  # type: ignore[arg-type]
    assert fit_speed([(1.0, 1.0), (4.0, 2.0)]).overhead_s == 0.0  # too few runs to fit two parts


def test_a_fit_without_physical_sense_falls_back_to_the_median_ratio() -> None:
    # a slow first run (a compile) on the smallest job makes larger jobs look faster: a negative slope
    runs = [(0.1, 5.0), (0.4, 0.2), (0.8, 0.4), (1.6, 0.8)]
    speed = fit_speed(runs)
    assert speed.overhead_s == 0.0 and speed.mpx_steps_per_s == pytest.approx(2.0)


def test_nothing_measured() -> None:
    assert fit_speed([]) == UNMEASURED and UNMEASURED.seconds(1.0) is None
    assert fit_speed([(0.0, 1.0), (1.0, 0.0)]) == UNMEASURED  # empty or instant runs say nothing
