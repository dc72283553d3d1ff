"""Honest samples as JSON, and pooling: shards run in parallel processes become one sample.

    python -m lpnode.reputation.calibrate --honest-sample 400 --seed 7 --json shard-7.json
    python -m lpnode.reputation.calibrate --pool shard-*.json [--prior-comparisons 0/3380 --prior-jobs 0/845]

A shard file holds every compared pair (verdict and metrics), the tie-break
counts and each job's digest, so the pooled tables are exactly the tables of the
sum: pairs are concatenated with each shard's job numbers moved past the
previous shards', counts add up, seconds add up (processor-seconds across
parallel shards, not wall time). Jobs that repeat across shards (equal digests)
are reported: shards must draw disjoint jobs, and a repeated job is not an
independent one. ``--prior-*`` adds counts measured earlier whose pairs were not
kept (the first two samples), for the pooled diffusion bounds only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lpnode.protocol.jobspec import Pipeline

from .calibrate_honest import DIFFUSION, NOT_AGREE, REFERENCE, HonestSample, PairResult
from .calibrate_stats import clopper_pearson_upper
from .compare import Comparison, FrameMetrics, Verdict

__all__ = [
    "FORMAT",
    "MAX_SHARD_BYTES",
    "duplicates",
    "load_sample",
    "pool",
    "pool_files",
    "pooled_bounds",
    "sample_from_json",
    "sample_to_json",
]

FORMAT = 1  # shard file layout version
MAX_SHARD_BYTES = 256 * 1024 * 1024  # a shard of ~10^5 pairs is ~15 MB; refuse anything absurd before parsing


def _metrics(m: FrameMetrics | None) -> list[float] | None:
    return None if m is None else [m.ssim, m.psnr, m.phash, m.dhash, m.max_abs]


def _from_metrics(row: list[Any] | None) -> FrameMetrics | None:
    if row is None:
        return None
    ssim, psnr, phash, dhash, max_abs = row
    return FrameMetrics(float(ssim), float(psnr), int(phash), int(dhash), int(max_abs))


def sample_to_json(sample: HonestSample, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready document: per pipeline counts and digests, and one row per compared pair."""
    pipelines = {
        p.value: {
            "jobs": jobs,
            "triples": sample.triples.get(p, 0),
            "third_needed": sample.third_needed.get(p, 0),
            "blamed": sample.blamed.get(p, 0),
            "seconds": sample.seconds.get(p, 0.0),
            "digests": sample.digests.get(p, []),
        }
        for p, jobs in sample.jobs.items()
    }
    pairs = [
        [
            r.pipeline.value,
            r.job,
            r.a,
            r.b,
            r.comparison.verdict.value,
            r.comparison.reason,
            r.comparison.frames,
            _metrics(r.comparison.median),
            _metrics(r.comparison.worst),
        ]
        for r in sample.pairs
    ]
    return {"format": FORMAT, "meta": meta or {}, "pipelines": pipelines, "pairs": pairs}


def sample_from_json(doc: dict[str, Any]) -> HonestSample:
    if doc.get("format") != FORMAT:
        raise ValueError(f"honest sample format {doc.get('format')!r}, expected {FORMAT}")
    sample = HonestSample()
    for name, row in doc["pipelines"].items():
        p = Pipeline(name)
        sample.jobs[p], sample.triples[p] = int(row["jobs"]), int(row["triples"])
        sample.third_needed[p], sample.blamed[p] = int(row["third_needed"]), int(row["blamed"])
        sample.seconds[p], sample.digests[p] = float(row["seconds"]), [str(d) for d in row["digests"]]
    for pipeline, job, a, b, verdict, reason, frames, median, worst in doc["pairs"]:
        comparison = Comparison(Verdict(verdict), str(reason), int(frames), _from_metrics(median), _from_metrics(worst))
        sample.pairs.append(PairResult(Pipeline(pipeline), int(job), str(a), str(b), comparison))
    return sample


def load_sample(path: Path) -> tuple[HonestSample, dict[str, Any]]:
    """One shard file: its sample and its meta."""
    size = path.stat().st_size
    if size > MAX_SHARD_BYTES:
        raise ValueError(f"{path}: {size} bytes, limit {MAX_SHARD_BYTES}")
    doc = json.loads(path.read_text())
    return sample_from_json(doc), dict(doc.get("meta", {}))


def pool(samples: Iterable[HonestSample]) -> HonestSample:
    """The sum of ``samples``: job numbers of each moved past the previous ones' (per pipeline), counts added."""
    out = HonestSample()
    for sample in samples:
        offset = dict(out.jobs)
        out.pairs.extend(
            PairResult(r.pipeline, r.job + offset.get(r.pipeline, 0), r.a, r.b, r.comparison) for r in sample.pairs
        )
        for p, jobs in sample.jobs.items():
            out.jobs[p] = out.jobs.get(p, 0) + jobs
            out.triples[p] = out.triples.get(p, 0) + sample.triples.get(p, 0)
            out.third_needed[p] = out.third_needed.get(p, 0) + sample.third_needed.get(p, 0)
            out.blamed[p] = out.blamed.get(p, 0) + sample.blamed.get(p, 0)
            out.seconds[p] = out.seconds.get(p, 0.0) + sample.seconds.get(p, 0.0)
            out.digests[p] = out.digests.get(p, []) + sample.digests.get(p, [])
    return out


def duplicates(sample: HonestSample) -> dict[Pipeline, int]:
    """Per pipeline, how many jobs repeat an earlier job of the sample (equal digests)."""
    return {p: sum(n - 1 for n in Counter(d).values()) for p, d in sample.digests.items()}


def _parse_counts(text: str) -> tuple[int, int]:
    k, n = (int(x) for x in text.split("/"))
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"counts must read K/N with 0 <= K <= N, got {text!r}")
    return k, n


def _row(what: str, k: int, n: int) -> str:
    bound = f"{100 * clopper_pearson_upper(k, n):.4f} %" if n else "–"
    return f"| {what} | {k}/{n} | {bound} |"


def pooled_bounds(
    sample: HonestSample,
    *,
    prior_comparisons: str = "0/0",
    prior_jobs: str = "0/0",
    cpu_only: bool = True,
) -> list[str]:
    """Markdown: the diffusion bounds of ``sample`` alone and with the prior counts added.

    ``cpu_only`` leaves the CUDA runs (names starting ``cuda``) and the jobs that had them out of these bounds,
    so they are stated on the same definition as the prior CPU samples."""

    def kept(r: PairResult) -> bool:
        return r.pipeline in DIFFUSION and not (cpu_only and (r.a.startswith("cuda") or r.b.startswith("cuda")))

    pairs = [r for r in sample.pairs if kept(r)]
    vs_ref = [r for r in pairs if REFERENCE in (r.a, r.b)]
    jobs = {(r.pipeline, r.job) for r in pairs}
    jobs_off = {(r.pipeline, r.job) for r in pairs if r.comparison.verdict is not Verdict.AGREE}
    k_cmp = sum(r.comparison.verdict in NOT_AGREE for r in vs_ref)
    pk_cmp, pn_cmp = _parse_counts(prior_comparisons)
    pk_job, pn_job = _parse_counts(prior_jobs)
    return [
        "| diffusion pipelines, honest, default thresholds | not agree / n | one-sided 95 % upper bound |",
        "|---|---|---|",
        _row("comparisons with the reference, this sample", k_cmp, len(vs_ref)),
        _row("jobs with any honest pair not agreeing, this sample", len(jobs_off), len(jobs)),
        _row("comparisons with the reference, with the prior samples", k_cmp + pk_cmp, len(vs_ref) + pn_cmp),
        _row(
            "jobs with any honest pair not agreeing, with the prior samples", len(jobs_off) + pk_job, len(jobs) + pn_job
        ),
    ]


def pool_files(paths: Sequence[Path]) -> tuple[HonestSample, list[dict[str, Any]]]:
    loaded = [load_sample(p) for p in paths]
    return pool(s for s, _ in loaded), [m for _, m in loaded]
