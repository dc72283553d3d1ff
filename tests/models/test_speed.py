"""The advertised speed and the worker's ETAs: a fixed cost per run told apart from the work's."""

from __future__ import annotations

from pathlib import Path

import pytest
from lpnode.models import registry
from lpnode.models.base import PipelineKind
from lpnode.models.pool import PoolConfig, open_model_pool
from lpnode.models.speed import UNMEASURED, RunMemo, Speed, fit_speed


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


async def test_a_restarted_pool_quotes_from_the_runs_it_measured_before(tmp_path: Path) -> None:
    # QA: a restarted worker knew no speed, took a job it could not finish by its deadline and failed it
    memo = tmp_path / "model-speeds.json"
    config = PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu", batch_window_s=0.0, speeds_path=memo)
    spec = registry.spec("tiny-sdxl")
    async with open_model_pool(config) as pool:
        for side, steps in ((64, 2), (128, 4)):
            await pool.run(
                "tiny-sdxl",
                spec.build_request(
                    PipelineKind.TEXT_TO_IMAGE, prompt="x", width=side, height=side, num_inference_steps=steps, seed=1
                ),
            )
        [before] = pool.status()
    assert before.speed_mpx_steps_per_s > 0
    async with open_model_pool(config) as again:
        [after] = again.status()  # no run yet in this pool
    assert after.speed_mpx_steps_per_s == before.speed_mpx_steps_per_s
    # the key names the preset, the device and the dtype; a damaged memo is an empty one
    on_cpu = RunMemo(memo).load()
    assert list(on_cpu) == ["tiny-sdxl:cpu:torch.float32"] and len(on_cpu["tiny-sdxl:cpu:torch.float32"]) == 2
    memo.write_text('{"tiny-sdxl:cpu:torch.float32": [[1, "x"], [-1, 2]], "other": 5}')
    assert RunMemo(memo).load() == {}
    memo.write_text("not json")
    async with open_model_pool(config) as third:
        assert third.status()[0].speed_mpx_steps_per_s == 0.0
