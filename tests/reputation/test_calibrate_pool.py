"""Honest-sample shards: JSON round trip, pooling into the sum's tables and bounds, repeated jobs, the shard runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lpnode.protocol.jobspec import Pipeline
from lpnode.reputation.calibrate_honest import HonestSample, PairResult, honest_sample, honest_tables
from lpnode.reputation.calibrate_pool import (
    duplicates,
    load_sample,
    pool,
    pooled_bounds,
    sample_from_json,
    sample_to_json,
)
from lpnode.reputation.calibrate_shards import round_seed, run_shard
from lpnode.reputation.calibrate_stats import clopper_pearson_upper
from lpnode.reputation.compare import Comparison, Verdict

TINY = (Pipeline.TEXT_TO_IMAGE, Pipeline.UPSCALE)


@pytest.fixture(scope="module")
def shards() -> tuple[HonestSample, HonestSample]:
    runs = ["reference", "attention", "latent_noise"]  # three runs: the fewest a tie-break needs, and cheap
    return (
        honest_sample(6, seed=1001, pipelines=TINY, runs=runs),
        honest_sample(6, seed=1002, pipelines=TINY, runs=runs),
    )


def _roundtrip(sample: HonestSample) -> HonestSample:
    return sample_from_json(json.loads(json.dumps(sample_to_json(sample, {"seed": 1}))))


def test_json_round_trip_keeps_the_tables(shards: tuple[HonestSample, HonestSample]) -> None:
    a, _ = shards
    back = _roundtrip(a)
    assert back.pairs == a.pairs and back.jobs == a.jobs and back.digests == a.digests
    assert honest_tables(back) == honest_tables(a)


def test_two_shards_pool_to_their_sum(shards: tuple[HonestSample, HonestSample]) -> None:
    a, b = shards
    pooled = pool([_roundtrip(a), _roundtrip(b)])
    for p in TINY:
        assert pooled.jobs[p] == a.jobs[p] + b.jobs[p]
        assert pooled.triples[p] == a.triples[p] + b.triples[p]
        assert pooled.blamed[p] == a.blamed[p] + b.blamed[p]
        assert pooled.digests[p] == a.digests[p] + b.digests[p]
    assert len(pooled.pairs) == len(a.pairs) + len(b.pairs)
    # the second shard's jobs are numbered after the first's: jobs stay distinct when counted by job
    ids = {(r.pipeline, r.job) for r in pooled.pairs}
    assert len(ids) == sum(pooled.jobs.values())
    # different seeds drew different jobs, and a shard pooled with itself repeats every job once
    assert sum(duplicates(pooled).values()) == 0
    assert duplicates(pool([a, a])) == a.jobs
    # the table of the pool counts the sum: comparisons with the reference, per pipeline
    row = next(line for line in honest_tables(pooled) if line.startswith("| text-to-image |"))
    vs_ref = sum(1 for r in a.pairs + b.pairs if r.pipeline is Pipeline.TEXT_TO_IMAGE and "reference" in (r.a, r.b))
    assert row.split(" | ")[3] == str(vs_ref)


def _pair(job: int, b: str, verdict: Verdict) -> PairResult:
    return PairResult(Pipeline.IMAGE_TO_VIDEO, job, "reference", b, Comparison(verdict, "test"))


def test_pooled_bounds_add_the_priors_and_keep_cuda_apart() -> None:
    sample = HonestSample(
        pairs=[
            _pair(0, "attention", Verdict.AGREE),
            _pair(0, "bfloat16", Verdict.INCONCLUSIVE),
            _pair(1, "attention", Verdict.AGREE),
            _pair(1, "bfloat16", Verdict.AGREE),
            _pair(2, "cuda-fp16", Verdict.DISAGREE),
        ],
        jobs={Pipeline.IMAGE_TO_VIDEO: 3},
    )
    cpu = pooled_bounds(sample, prior_comparisons="0/96", prior_jobs="0/48")
    assert f"| 1/4 | {100 * clopper_pearson_upper(1, 4):.4f} % |" in cpu[2]
    assert cpu[3].endswith(f"| 1/2 | {100 * clopper_pearson_upper(1, 2):.4f} % |")
    assert "| 1/100 |" in cpu[4] and "| 1/50 |" in cpu[5]
    every = pooled_bounds(sample, cpu_only=False)
    assert "| 2/5 |" in every[2] and "| 2/3 |" in every[3]
    with pytest.raises(ValueError):
        pooled_bounds(sample, prior_jobs="5/4")


def test_a_shard_writes_its_rounds(tmp_path: Path) -> None:
    assert round_seed(100, 7) == 100_007
    with pytest.raises(ValueError):
        round_seed(0, 1)
    rounds = run_shard(
        3, seconds=0.0, round_size=3, out=tmp_path, runs=["reference", "attention", "latent_noise"], max_rounds=1
    )
    sample, meta = load_sample(tmp_path / "honest-3.json")
    assert rounds == 1 and meta["round_seeds"] == [3000] and meta["threads"] >= 1
    assert set(sample.jobs) == set(Pipeline) and all(n >= 1 for n in sample.jobs.values())
