"""A large honest sample: how often do two honest outputs of one job fail to agree under the node's own verdict?

    python -m lpnode.reputation.calibrate --honest-sample 1500

Many small, varied jobs per pipeline (prompts, seeds, sizes, step counts,
strengths, frame counts, multipliers), each run by the reference and by every
honest variant the calibration knows (:class:`~lpnode.reputation.cheats.HonestVariant`,
plus ``threads``: the reference on one CPU thread instead of all, so reductions
sum in another order). Outputs go through the real PNG / H.264 output stage,
are decoded once, and every pair of honest outputs of a job is compared with
:func:`~lpnode.reputation.compare.compare_frames` at the default thresholds.
The same pairwise verdicts then go through the spot check's own tie-break
(:func:`~lpnode.reputation.policy.resolve`: a checker, and a third peer when the
two do not agree) for every ordered (worker, checker, third) triple of honest
runs, counting honest peers blamed.

``n`` (the size asked for) counts comparisons of a variant with the reference,
the unit the rate bound is stated in; pairs of two variants are measured too.
Jobs are batched where the adapter allows (requests with one batch key run
together, up to ``max_batch``); the variants run the same batches.

``runs`` picks other honest runs than the default set, among them ``cuda-fp32``
and ``cuda-fp16`` (the preset on the GPU in that dtype, against the CPU
reference). Big samples run as shards in parallel processes and are pooled
afterwards (:mod:`~lpnode.reputation.calibrate_pool`,
:mod:`~lpnode.reputation.calibrate_shards`); each job keeps a digest of its
fields so that pooled shards can be checked for repeated jobs.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations

import torch
from lpnode.models import registry
from lpnode.models.base import ModelAdapter, PipelineKind, Request
from lpnode.models.outputs import ImageOutput, RawOutput, encode_mp4, encode_png, finish_output
from lpnode.protocol.jobspec import OUTPUT_MEDIA_TYPE, Pipeline

from .calibrate import synthetic_frame
from .calibrate_stats import clopper_pearson_upper
from .cheats import HonestVariant, honest_variant_adapter
from .compare import RGB, Comparison, FrameMetrics, Thresholds, Verdict, compare_frames, decode_frames
from .policy import resolve

__all__ = [
    "DEVICE_RUNS",
    "HONEST_SHARES",
    "HonestSample",
    "PairResult",
    "honest_sample",
    "honest_tables",
    "job_digest",
    "job_fields",
]

THREADS = "threads"  # the reference adapter on one CPU thread
REFERENCE = HonestVariant.REFERENCE.value
# Honest runs on the GPU: the preset loaded on CUDA in this dtype (float16 is what a consumer GPU serves with).
DEVICE_RUNS: dict[str, tuple[str, torch.dtype]] = {
    "cuda-fp32": ("cuda", torch.float32),
    "cuda-fp16": ("cuda", torch.float16),
}
# Share of the comparisons per pipeline: the diffusion pipelines carry the risk (noise, many steps), so most go there.
HONEST_SHARES: dict[Pipeline, float] = {
    Pipeline.TEXT_TO_IMAGE: 0.30,
    Pipeline.IMAGE_TO_IMAGE: 0.25,
    Pipeline.IMAGE_TO_VIDEO: 0.20,
    Pipeline.UPSCALE: 0.125,
    Pipeline.FRAME_INTERPOLATION: 0.125,
}
PRESET = {
    Pipeline.TEXT_TO_IMAGE: "tiny-sdxl",
    Pipeline.IMAGE_TO_IMAGE: "tiny-sdxl",
    Pipeline.IMAGE_TO_VIDEO: "tiny-svd",
    Pipeline.UPSCALE: "tiny-realesrgan",
    Pipeline.FRAME_INTERPOLATION: "tiny-rife",
}
_SUBJECTS = ("fox", "lighthouse", "bowl of ramen", "city street", "mountain lake", "robot", "cat", "forest", "ship")
_STYLES = ("at dusk", "in the snow", "in the rain", "oil painting", "photograph", "watercolour", "neon", "at noon")
_IMAGE_SIZES = ((32, 32), (48, 48), (64, 64), (64, 32), (32, 64), (48, 64))
_VIDEO_SIZES = ((32, 32), (48, 48), (64, 64), (64, 32))


def _prompt(rng: random.Random) -> str:
    return f"a {rng.choice(_SUBJECTS)} {rng.choice(_STYLES)}, {rng.randrange(1000)}"


def _png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(synthetic_frame(width, height, seed), mode="RGB"))


def job_fields(pipeline: Pipeline, rng: random.Random) -> dict[str, object]:
    """One varied job's request fields (seed included), drawn from ``rng``."""
    seed = rng.randrange(2**31)
    if pipeline is Pipeline.TEXT_TO_IMAGE:
        width, height = rng.choice(_IMAGE_SIZES)
        fields: dict[str, object] = {"prompt": _prompt(rng), "seed": seed, "width": width, "height": height}
        fields["num_inference_steps"] = rng.choice((2, 3, 4))
        if rng.random() < 0.25:  # classifier-free guidance with a negative prompt: another code path
            fields |= {"guidance_scale": 3.0, "negative_prompt": "blurry"}
        return fields
    if pipeline is Pipeline.IMAGE_TO_IMAGE:
        width, height = rng.choice(_IMAGE_SIZES)
        steps = rng.choice((2, 3, 4))
        strength = rng.choice((0.5, 0.75, 0.9))
        return {
            "prompt": _prompt(rng),
            "image": _png(width, height, rng.randrange(10**6)),
            "seed": seed,
            "num_inference_steps": steps if int(steps * strength) >= 1 else 4,
            "strength": strength,
        }
    if pipeline is Pipeline.IMAGE_TO_VIDEO:
        width, height = rng.choice(_VIDEO_SIZES)
        return {
            "image": _png(rng.choice((32, 48, 64)), rng.choice((32, 48, 64)), rng.randrange(10**6)),
            "seed": seed,
            "width": width,
            "height": height,
            "num_frames": rng.choice((2, 3, 4)),
            "num_inference_steps": rng.choice((2, 3)),
            "motion_bucket_id": rng.choice((64, 127, 200)),
        }
    if pipeline is Pipeline.UPSCALE:
        width, height = rng.choice(((16, 16), (24, 16), (32, 32), (32, 24)))
        return {"image": _png(width, height, rng.randrange(10**6)), "scale": rng.choice((2, 4)), "seed": seed}
    width, height = rng.choice(((32, 24), (48, 32), (32, 32)))
    base, step = rng.randrange(10**6), rng.choice((1, 2, 3, 5))
    frames = [synthetic_frame(width, height, base, shift=step * k) for k in range(rng.choice((2, 3, 4)))]
    return {"video": encode_mp4(frames, float(rng.choice((8, 10, 24)))), "multiplier": rng.choice((2, 3, 4))}


def job_digest(pipeline: Pipeline, fields: dict[str, object]) -> str:
    """A short digest of one job (pipeline and every field, input bytes included): equal jobs, equal digests."""
    text = repr((pipeline.value, sorted(fields.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class PairResult:
    pipeline: Pipeline
    job: int
    a: str  # run names (REFERENCE, a HonestVariant value or THREADS)
    b: str
    comparison: Comparison


@dataclass
class HonestSample:
    """Every honest pair compared, and the tie-break outcome of every (worker, checker, third) triple."""

    pairs: list[PairResult] = field(default_factory=list)
    jobs: dict[Pipeline, int] = field(default_factory=dict)
    triples: dict[Pipeline, int] = field(default_factory=dict)  # ordered triples played through the tie-break
    third_needed: dict[Pipeline, int] = field(default_factory=dict)  # triples whose first two did not agree
    blamed: dict[Pipeline, int] = field(default_factory=dict)  # honest peers blamed over those triples
    seconds: dict[Pipeline, float] = field(default_factory=dict)
    digests: dict[Pipeline, list[str]] = field(default_factory=dict)  # job_digest of each job, by job index


def _batches(adapter: ModelAdapter, requests: Sequence[Request]) -> Iterator[list[int]]:
    """Request indices grouped by batch key, at most max_batch each (None keys: one at a time)."""
    groups: dict[object, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        key = adapter.batch_key(request)
        groups[("single", i) if key is None else key].append(i)
    size = adapter.spec.limits.max_batch
    for members in groups.values():
        for start in range(0, len(members), size):
            yield members[start : start + size]


def _frames(raw: RawOutput, media: str, thresholds: Thresholds) -> list[RGB]:
    out = finish_output(raw)
    data = out.png if isinstance(out, ImageOutput) else out.mp4
    return decode_frames(data, media, max_pixels=thresholds.max_pixels, max_frames=thresholds.max_frames)


def _run_all(adapter: ModelAdapter, requests: Sequence[Request], media: str, thresholds: Thresholds) -> list[list[RGB]]:
    frames: list[list[RGB]] = [[] for _ in requests]
    for batch in _batches(adapter, requests):
        for i, raw in zip(batch, adapter.generate_batch([requests[i] for i in batch]), strict=True):
            frames[i] = _frames(raw, media, thresholds)
    return frames


def _run_names() -> list[str]:
    names = [v.value for v in HonestVariant]
    # one thread instead of several changes how reductions are split; with one thread already it is the reference
    return [*names, THREADS] if torch.get_num_threads() > 1 else names


def _check_runs(runs: Sequence[str]) -> None:
    known = {*(v.value for v in HonestVariant), THREADS, *DEVICE_RUNS}
    unknown = [r for r in runs if r not in known]
    if unknown or REFERENCE not in runs or len(set(runs)) != len(runs) or len(runs) < 3:
        # three runs at least: the tie-break needs a third peer
        raise ValueError(f"runs must name the reference and at least two more of {sorted(known)}, got {list(runs)}")
    if THREADS in runs and torch.get_num_threads() == 1:
        raise ValueError("the threads run needs the reference on more than one thread")


def _honest_outputs(
    pipeline: Pipeline, requests: Sequence[Request], thresholds: Thresholds, seed: int, runs: Sequence[str]
) -> dict[str, list[list[RGB]]]:
    media = OUTPUT_MEDIA_TYPE[pipeline]
    outputs: dict[str, list[list[RGB]]] = {}
    reference = registry.resolve(PRESET[pipeline])
    reference.load("cpu")
    digest = reference.weights_sha256()
    outputs[REFERENCE] = _run_all(reference, requests, media, thresholds)
    if THREADS in runs:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            outputs[THREADS] = _run_all(reference, requests, media, thresholds)
        finally:
            torch.set_num_threads(threads)
    reference.unload()
    for variant in HonestVariant:
        if variant is HonestVariant.REFERENCE or variant.value not in runs:
            continue
        adapter = honest_variant_adapter(PRESET[pipeline], variant, seed=seed)
        outputs[variant.value] = _run_all(adapter, requests, media, thresholds)
        adapter.unload()
    for name, (device, dtype) in DEVICE_RUNS.items():
        if name not in runs:
            continue
        adapter = registry.resolve(PRESET[pipeline])
        adapter.load(device, dtype)
        if adapter.weights_sha256() != digest:  # "another device" must never silently mean "other weights"
            raise ValueError(f"{pipeline.value} {name}: weights hash differs from the CPU reference's")
        outputs[name] = _run_all(adapter, requests, media, thresholds)
        adapter.unload()
    return outputs


def _tie_break(names: Sequence[str], verdicts: dict[frozenset[str], Verdict]) -> tuple[int, int, int]:
    """(triples, triples needing a third, honest peers blamed) over every ordered (worker, checker, third)."""
    triples = needed = blamed = 0
    for worker, checker, third in permutations(names, 3):
        triples += 1
        outcome = resolve((worker, checker), verdicts)
        if outcome.need_more:
            needed += 1
            outcome = resolve((worker, checker, third), verdicts)
        blamed += len(outcome.blamed)
    return triples, needed, blamed


def honest_sample(
    n: int,
    *,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    pipelines: Sequence[Pipeline] = tuple(HONEST_SHARES),
    progress: Callable[[str], None] | None = None,
    runs: Sequence[str] | None = None,
) -> HonestSample:
    """At least ``n`` comparisons of a variant with the reference, shared out by :data:`HONEST_SHARES`.

    ``runs``: the honest runs of every job (the reference among them); default the reference, every
    :class:`HonestVariant` and ``threads`` where torch has more than one thread."""
    thresholds = thresholds or Thresholds()
    runs = list(runs) if runs is not None else _run_names()
    _check_runs(runs)
    variants = len(runs) - 1
    shares = {p: HONEST_SHARES[p] for p in pipelines}
    total = sum(shares.values())
    sample = HonestSample()
    for pipeline, share in shares.items():
        start = time.perf_counter()
        jobs = max(1, math.ceil(n * share / total / variants))
        rng = random.Random(f"honest/{seed}/{pipeline.value}")
        adapter = registry.resolve(PRESET[pipeline])
        kind = PipelineKind(pipeline.value)
        fields = [job_fields(pipeline, rng) for _ in range(jobs)]
        requests = [adapter.spec.build_request(kind, **f) for f in fields]
        outputs = _honest_outputs(pipeline, requests, thresholds, seed, runs)
        names = list(outputs)
        triples = needed = blamed = 0
        for job in range(jobs):
            verdicts: dict[frozenset[str], Verdict] = {}
            for a, b in combinations(names, 2):
                comparison = compare_frames(pipeline, outputs[a][job], outputs[b][job], thresholds)
                verdicts[frozenset((a, b))] = comparison.verdict
                sample.pairs.append(PairResult(pipeline, job, a, b, comparison))
            t, k, m = _tie_break(names, verdicts)
            triples, needed, blamed = triples + t, needed + k, blamed + m
        sample.jobs[pipeline], sample.triples[pipeline] = jobs, triples
        sample.third_needed[pipeline], sample.blamed[pipeline] = needed, blamed
        sample.seconds[pipeline] = time.perf_counter() - start
        sample.digests[pipeline] = [job_digest(pipeline, f) for f in fields]
        if progress is not None:
            progress(f"{pipeline.value}: {jobs} jobs × {len(names)} runs in {sample.seconds[pipeline]:.0f} s")
    return sample


# ---------------------------------------------------------------- report


def _counts(pairs: Sequence[PairResult]) -> str:
    return "/".join(str(sum(p.comparison.verdict is v for p in pairs)) for v in Verdict)


def _worst(pairs: Sequence[PairResult]) -> tuple[str, str, str, str]:
    worst = [p.comparison.worst for p in pairs if p.comparison.worst is not None]
    median = [p.comparison.median for p in pairs if p.comparison.median is not None]
    if not worst or not median:
        return ("–",) * 4

    def least(metrics: Sequence[FrameMetrics], key: Callable[[FrameMetrics], float]) -> float:
        return min(key(m) for m in metrics)

    return (
        f"{least(worst, lambda m: m.ssim):.3f}",
        f"{least(median, lambda m: m.ssim):.3f}",
        str(max(m.phash for m in worst)),
        f"{least(worst, lambda m: m.psnr):.1f}",
    )


NOT_AGREE = (Verdict.INCONCLUSIVE, Verdict.DISAGREE)
DIFFUSION = frozenset({Pipeline.TEXT_TO_IMAGE, Pipeline.IMAGE_TO_IMAGE, Pipeline.IMAGE_TO_VIDEO})


def _count(pairs: Sequence[PairResult], verdicts: tuple[Verdict, ...]) -> int:
    return sum(p.comparison.verdict in verdicts for p in pairs)


def _bound(k: int, n: int) -> str:
    return f"{k}/{n} | {100 * clopper_pearson_upper(k, n):.3f} %" if n else f"{k}/0 | –"


def _runs_per_job(pairs: Sequence[PairResult]) -> str:
    """Runs per job: one number, or the range where pooled shards ran different sets."""
    names: dict[int, set[str]] = defaultdict(set)
    for p in pairs:
        names[p.job] |= {p.a, p.b}
    sizes = {len(n) for n in names.values()} or {0}
    return str(min(sizes)) if len(sizes) == 1 else f"{min(sizes)}–{max(sizes)}"


def honest_tables(sample: HonestSample) -> list[str]:
    """Markdown: per pipeline counts, verdicts and worst metrics; then the rate bounds."""
    lines = [
        "| pipeline | jobs | runs per job | vs reference: comparisons | verdicts (agree/inc./disagree) | all honest "
        "pairs | verdicts | worst-frame SSIM min | median-frame SSIM min | pHash max | worst-frame PSNR min dB | "
        "tie-break triples: third needed / honest blamed | not agree vs reference: observed, 95 % upper bound | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pipeline, jobs in sample.jobs.items():
        pairs = [p for p in sample.pairs if p.pipeline is pipeline]
        vs_ref = [p for p in pairs if REFERENCE in (p.a, p.b)]
        runs = _runs_per_job(pairs)
        ssim_w, ssim_m, phash, psnr = _worst(pairs)
        lines.append(
            f"| {pipeline.value} | {jobs} | {runs} | {len(vs_ref)} | {_counts(vs_ref)} | {len(pairs)} | "
            f"{_counts(pairs)} | {ssim_w} | {ssim_m} | {phash} | {psnr} | {sample.triples[pipeline]}: "
            f"{sample.third_needed[pipeline]} / {sample.blamed[pipeline]} | "
            f"{_bound(_count(vs_ref, NOT_AGREE), len(vs_ref)).replace(' | ', ', ')} | {sample.seconds[pipeline]:.0f} |"
        )
    vs_ref = [p for p in sample.pairs if REFERENCE in (p.a, p.b)]
    diffusion = [p for p in vs_ref if p.pipeline in DIFFUSION]
    jobs_off = {(p.pipeline, p.job) for p in sample.pairs if p.comparison.verdict is not Verdict.AGREE}
    n_jobs = sum(sample.jobs.values())
    n_diffusion = sum(jobs for pipeline, jobs in sample.jobs.items() if pipeline in DIFFUSION)
    triples, blamed = sum(sample.triples.values()), sum(sample.blamed.values())

    lines += [
        "",
        "| rate (honest, default thresholds) | observed | one-sided 95 % Clopper–Pearson upper bound |",
        "|---|---|---|",
        f"| disagree, variant vs reference | {_bound(_count(vs_ref, (Verdict.DISAGREE,)), len(vs_ref))} |",
        f"| not agree (disagree or inconclusive: what sends a check to a third peer), variant vs reference | "
        f"{_bound(_count(vs_ref, NOT_AGREE), len(vs_ref))} |",
        f"| not agree, variant vs reference, diffusion pipelines only | {_bound(_count(diffusion, NOT_AGREE), len(diffusion))} |",
        f"| not agree, every honest pair (pairs of one job share outputs: not independent) | "
        f"{_bound(_count(sample.pairs, NOT_AGREE), len(sample.pairs))} |",
        f"| jobs with any honest pair not agreeing (independent jobs) | {_bound(len(jobs_off), n_jobs)} |",
        f"| diffusion jobs with any honest pair not agreeing (independent jobs) | "
        f"{_bound(sum(p in DIFFUSION for p, _ in jobs_off), n_diffusion)} |",
        f"| honest peer blamed, per peer in an ordered tie-break triple | {_bound(blamed, 3 * triples)} |",
    ]
    return [*lines, "", *_by_run(vs_ref)]


def _by_run(vs_ref: Sequence[PairResult]) -> list[str]:
    """Markdown: each honest run against the reference, diffusion pipelines apart from the single-pass ones."""
    lines = [
        "| run vs reference | diffusion: verdicts (agree/inc./disagree) | diffusion: not agree | 95 % upper bound | "
        "diffusion: worst-frame SSIM min | pHash max | single-pass: verdicts | single-pass: not agree | "
        "95 % upper bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(p.b if p.a == REFERENCE else p.a for p in vs_ref):
        mine = [p for p in vs_ref if name in (p.a, p.b)]
        diffusion = [p for p in mine if p.pipeline in DIFFUSION]
        single = [p for p in mine if p.pipeline not in DIFFUSION]
        ssim, _, phash, _ = _worst(diffusion)
        lines.append(
            f"| {name} | {_counts(diffusion)} | {_bound(_count(diffusion, NOT_AGREE), len(diffusion))} | {ssim} | "
            f"{phash} | {_counts(single)} | {_bound(_count(single, NOT_AGREE), len(single))} |"
        )
    return lines
