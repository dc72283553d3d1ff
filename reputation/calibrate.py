"""Calibrate the comparison thresholds: honest variation against cheats, per pipeline, on tiny presets.

    python -m lpnode.reputation.calibrate --out docs/verification.md [--jobs 4]

For every pipeline it runs several jobs (seeds, prompts, inputs) as a reference
node would, then the same jobs as honest nodes on other "hardware"
(:class:`~lpnode.reputation.cheats.HonestVariant`) and as cheaters
(:class:`~lpnode.reputation.cheats.CheatMode`), compares each output with the
reference through the real encode → decode → :func:`compare_frames` path, and
reports per metric the honest worst against the cheat best. The policy
simulation (``policy_sim``) then uses the measured honest disagreement rate.
Everything runs on the CPU with random-weight tiny presets: the separation it
shows is that of these models, which DESIGN.md's GPU anchors complement.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from lpnode.models import registry
from lpnode.models.base import ModelAdapter, PipelineKind, Request
from lpnode.models.outputs import ImageOutput, RawOutput, encode_mp4, encode_png, finish_output
from lpnode.protocol.jobspec import OUTPUT_MEDIA_TYPE, Pipeline

from .cheats import Cheater, CheatMode, HonestVariant, applicable_cheats, honest_variant_adapter, other_model_adapter
from .compare import Comparison, Thresholds, Verdict, compare_outputs
from .policy_sim import SimConfig, SimPeer, Summary, simulate, summarise, without_probes
from .scoring import ScoringConfig

__all__ = ["CASES", "Case", "Sample", "main", "measure", "separation_table", "synthetic_frame"]

RGB = npt.NDArray[np.uint8]
PROMPTS = ("a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a city street in the rain")


def synthetic_frame(width: int, height: int, seed: int, shift: int = 0) -> RGB:
    """A smooth, textured test picture (gradients and a disc), so perceptual hashes have structure to see."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy, r = rng.uniform(0.3, 0.7) * width + shift, rng.uniform(0.3, 0.7) * height, rng.uniform(0.15, 0.3)
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (r * min(width, height)) ** 2
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [127 + 90 * np.sin((x + shift) / width * 2 * np.pi * (k + 1) + phase[k] + y / height) for k in range(3)]
    rgb = np.stack(channels, axis=-1)
    rgb[disc] = rng.uniform(0, 255, 3)
    out: RGB = np.clip(rgb, 0, 255).astype(np.uint8)
    return out


def _png(seed: int, side: int) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(synthetic_frame(side, side, seed), mode="RGB"))


@dataclass(frozen=True)
class Case:
    """One pipeline on one tiny preset, and how to build its i-th job."""

    pipeline: Pipeline
    preset: str
    build: Callable[[int], dict[str, object]]  # job index → request fields (seed included)

    def request(self, adapter: ModelAdapter, index: int) -> Request:
        return adapter.spec.build_request(PipelineKind(self.pipeline.value), **self.build(index))


CASES: tuple[Case, ...] = (
    Case(
        Pipeline.TEXT_TO_IMAGE,
        "tiny-sdxl",
        lambda i: {"prompt": PROMPTS[i % len(PROMPTS)], "seed": 1000 + i, "num_inference_steps": 4},
    ),
    Case(
        Pipeline.IMAGE_TO_IMAGE,
        "tiny-sdxl",
        lambda i: {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "image": _png(i, 64),
            "seed": 2000 + i,
            "strength": 0.75,
            "num_inference_steps": 4,
        },
    ),
    Case(
        Pipeline.IMAGE_TO_VIDEO,
        "tiny-svd",
        lambda i: {"image": _png(100 + i, 64), "seed": 3000 + i, "num_inference_steps": 4, "num_frames": 4},
    ),
    Case(Pipeline.UPSCALE, "tiny-realesrgan", lambda i: {"image": _png(200 + i, 32), "scale": 4}),
    Case(
        Pipeline.FRAME_INTERPOLATION,
        "tiny-rife",
        lambda i: {
            "video": encode_mp4([synthetic_frame(32, 24, 300 + i, shift=3 * k) for k in range(3)], 10.0),
            "multiplier": 2,
        },
    ),
)


@dataclass(frozen=True)
class Sample:
    pipeline: Pipeline
    honest: bool
    name: str  # the HonestVariant or CheatMode value
    job: int
    comparison: Comparison


def _encoded(raw: RawOutput) -> bytes:
    out = finish_output(raw)
    return out.png if isinstance(out, ImageOutput) else out.mp4


def measure(case: Case, jobs: int, thresholds: Thresholds | None = None, *, seed: int = 0) -> list[Sample]:
    """Run ``jobs`` jobs of ``case`` as reference, honest variants and cheats; compare each with the reference."""
    thresholds = thresholds or Thresholds()
    media = OUTPUT_MEDIA_TYPE[case.pipeline]
    reference = registry.resolve(case.preset)
    reference.load("cpu")
    requests = [case.request(reference, i) for i in range(jobs)]
    ref_raw = [reference.generate(r) for r in requests]
    ref_bytes = [_encoded(raw) for raw in ref_raw]
    samples: list[Sample] = []

    def record(honest: bool, name: str, index: int, data: bytes) -> None:
        comparison = compare_outputs(case.pipeline, ref_bytes[index], data, media, thresholds)
        samples.append(Sample(case.pipeline, honest, name, index, comparison))

    for variant in HonestVariant:
        if variant is HonestVariant.REFERENCE:
            continue
        adapter = honest_variant_adapter(case.preset, variant, seed=seed)
        for index, request in enumerate(requests):
            record(True, variant.value, index, _encoded(adapter.generate(request)))
        adapter.unload()
    for mode in applicable_cheats(PipelineKind(case.pipeline.value)):
        other = other_model_adapter(case.preset) if mode is CheatMode.OTHER_MODEL else None
        cheater = Cheater(mode, rng=random.Random(seed), other_model=other)
        # A copier returns the output of the job it ran before (the last job's for the first).
        cheater.previous = ref_raw[-1]
        for index, request in enumerate(requests):
            record(False, mode.value, index, _encoded(cheater.generate(reference, request)))
            cheater.previous = ref_raw[index]
        if other is not None:
            other.unload()
    reference.unload()
    return samples


# ---------------------------------------------------------------- report


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def separation_table(samples: Sequence[Sample]) -> list[str]:
    """Markdown rows: per pipeline and variant/cheat, the metric range and the verdicts."""
    lines = [
        "| pipeline | run | honest | SSIM median (min) | worst-frame SSIM min–max | pHash max (median) | "
        "worst-frame PSNR dB min–max | verdicts (agree/inc./disagree) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(s.pipeline, not s.honest, s.name) for s in samples}, key=lambda k: (list(Pipeline).index(k[0]), k[1], k[2])
    )
    for pipeline, cheat, name in keys:
        group = [s for s in samples if (s.pipeline, not s.honest, s.name) == (pipeline, cheat, name)]
        metric = [s.comparison for s in group if s.comparison.worst is not None and s.comparison.median is not None]
        counts = [sum(s.comparison.verdict is v for s in group) for v in Verdict]
        if metric:
            med_ssim = [c.median.ssim for c in metric if c.median]
            worst_ssim = [c.worst.ssim for c in metric if c.worst]
            phash = [c.worst.phash for c in metric if c.worst]
            worst_psnr = [c.worst.psnr for c in metric if c.worst]
            cells = [
                f"{_fmt(statistics.median(med_ssim))} ({_fmt(min(med_ssim))})",
                f"{_fmt(min(worst_ssim))}–{_fmt(max(worst_ssim))}",
                f"{max(phash)} ({statistics.median(phash):g})",
                f"{_fmt(min(worst_psnr))}–{_fmt(max(worst_psnr))}",
            ]
        else:
            cells = ["–"] * 4
        lines.append(
            f"| {pipeline.value} | {name} | {'yes' if not cheat else 'no'} | {' | '.join(cells)} | "
            f"{counts[0]}/{counts[1]}/{counts[2]} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpnode.reputation.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs per pipeline (seeds/prompts/inputs)")
    parser.add_argument("--pipeline", action="append", help="only these pipelines (wire names); default all")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--sim-only", action="store_true", help="only the policy simulation (no models; honest rate 0)")
    parser.add_argument("--honest-peers", type=int, default=20, help="honest peers per simulated off rate")
    parser.add_argument("--sweep", action="store_true", help="only the ban rule sweep (SPRT p0 and ln A)")
    parser.add_argument(
        "--honest-sample",
        type=int,
        metavar="N",
        help="only the large honest sample: N variant-vs-reference comparisons",
    )
    parser.add_argument(
        "--target-runs", type=int, metavar="R", help="only the target at its scale: R networks of 10,000 jobs each"
    )
    parser.add_argument(
        "--off-rate",
        type=float,
        action="append",
        help="honest off rate for --target-runs (repeat; default 0.2 %% and 1 %%)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --honest-sample and --target-runs")
    parser.add_argument("--json", type=Path, metavar="OUT", help="--honest-sample: also write its raw pairs here")
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="only pool honest-sample JSON files (--json, calibrate_shards) into one sample's tables",
    )
    parser.add_argument("--prior-comparisons", default="0/0", metavar="K/N", help="--pool: earlier diffusion counts")
    parser.add_argument("--prior-jobs", default="0/0", metavar="K/N", help="--pool: earlier diffusion jobs")
    parser.add_argument(
        "--no-probes",
        action="store_true",
        help="simulate without suspect probes (suspect_probes = 0); default: with them, as shipped",
    )
    args = parser.parse_args(argv)
    thresholds = Thresholds()
    start = time.perf_counter()
    if args.pool:
        return _pool(args)
    if args.honest_sample is not None or args.target_runs is not None:
        return _large(args, thresholds, start)
    if args.sweep:
        for line in sweep_table(probes=not args.no_probes):
            print(line, flush=True)
        print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 0
    if args.sim_only:
        print("\n".join(simulation_table([], honest_peers=args.honest_peers, probes=not args.no_probes)))
        print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 0
    samples: list[Sample] = []
    for case in CASES:
        if args.pipeline and case.pipeline.value not in args.pipeline:
            continue
        samples.extend(measure(case, args.jobs, thresholds))
        print(f"{case.pipeline.value}: done after {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table = separation_table(samples)
    print("\n".join(table))
    sim = simulation_table(samples, honest_peers=args.honest_peers, probes=not args.no_probes)
    print("\n".join(sim))
    if args.out is not None:
        args.out.write_text(_report(table, sim, thresholds, args.jobs, time.perf_counter() - start))
    return 0


def _large(args: argparse.Namespace, thresholds: Thresholds, start: float) -> int:
    """--honest-sample and --target-runs (either or both; modules imported here, so the rest never loads them)."""
    from .calibrate_honest import honest_sample, honest_tables
    from .calibrate_target import target_table
    from .policy_sim import NetConfig

    def elapsed(message: str) -> None:
        print(f"{message} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    if args.honest_sample is not None:
        sample = honest_sample(args.honest_sample, thresholds=thresholds, seed=args.seed, progress=elapsed)
        print("\n".join(honest_tables(sample)), flush=True)
        if args.json is not None:
            import json

            from .calibrate_pool import sample_to_json

            args.json.write_text(json.dumps(sample_to_json(sample, {"seed": args.seed}), separators=(",", ":")))
        elapsed("honest sample done")
    if args.target_runs is not None:
        rates = args.off_rate or [0.002, 0.01]
        net = NetConfig(seed=args.seed)
        for line in target_table(rates, args.target_runs, config=without_probes(net) if args.no_probes else net):
            print(line, flush=True)
        elapsed("target runs done")
    return 0


def _pool(args: argparse.Namespace) -> int:
    """--pool: the files' samples summed, their tables, repeated jobs, and the diffusion bounds with the priors."""
    from .calibrate_honest import honest_tables
    from .calibrate_pool import duplicates, pool_files, pooled_bounds

    sample, metas = pool_files(args.pool)
    print("\n".join(honest_tables(sample)))
    repeated = duplicates(sample)
    print(
        f"\n{len(metas)} files; jobs repeated across or within them: {sum(repeated.values())} "
        f"({', '.join(f'{p.value} {n}' for p, n in repeated.items())})\n"
    )
    for cpu_only in (True, False):
        print(f"{'CPU runs only' if cpu_only else 'all runs (CUDA too)'}:")
        bounds = pooled_bounds(
            sample, prior_comparisons=args.prior_comparisons, prior_jobs=args.prior_jobs, cpu_only=cpu_only
        )
        print("\n".join(bounds) + "\n")
    return 0


def honest_disagreement_rate(samples: Sequence[Sample]) -> float:
    honest = [s for s in samples if s.honest]
    return sum(s.comparison.verdict is not Verdict.AGREE for s in honest) / len(honest) if honest else 0.0


def simulation_table(
    samples: Sequence[Sample], seed: int = 0, honest_peers: int = 20, *, probes: bool = True
) -> list[str]:
    """The policy simulation, with the honest off rate at least the measured honest disagreement rate; suspect
    probes on (as shipped) unless ``probes`` is False. The starved row's peer gets no job after its first blame."""
    measured = honest_disagreement_rate(samples)
    lines = [
        "| peers | honest off rate | banned | jobs to ban: median / p90 / max | banned within 50 jobs | "
        "blames per check | extra runs per job (all / once established) | suspect probes per peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = (
        SimPeer("cheat 100 %", 1.0),
        SimPeer("cheat 100 %, starved", 1.0, starved_after_blame=True),
        SimPeer("cheat 10 %", 0.10),
        SimPeer("cheat 1 %", 0.01),
    )
    counts = (200, 50, 300, 50)
    for off in sorted({max(measured, 0.002), 0.01}):
        config = SimConfig(honest_off_rate=off, seed=seed)
        config = config if probes else without_probes(config)
        for peer, count in zip(kinds, counts, strict=True):
            lines.append(_sim_row(summarise(peer.name, simulate(config, [peer] * count)), off))
        lines.append(_sim_row(summarise("honest", simulate(config, [SimPeer("honest")] * honest_peers)), off))
    return lines


# The ban rules the sweep compares: (SPRT p0, ln A). p0 1 % with ln A 5 was the default before this sweep.
SWEEP_RULES = (
    (0.01, 5.0),
    (0.005, 4.0),
    (0.003, 4.5),
    (0.002, 4.0),
    (0.002, 4.5),
    (0.002, 5.0),
    (0.002, 5.5),
    (0.002, 6.0),
)


def sweep_table(
    rules: Sequence[tuple[float, float]] = SWEEP_RULES,
    *,
    cheaters: int = 1_000,
    honest_low: int = 2_000,
    honest_high: int = 400,
    seed: int = 1,
    probes: bool = True,
) -> Iterator[str]:
    """The ban rule's trade-off, row by row: 10 % cheaters banned within 50 jobs against honest peers banned.

    Honest peers at the 0.2 % floor are banned, if ever, in their first few hundred jobs (later their passed checks
    outweigh any two blames), so many of them run 1,000 jobs each; those at 1 % run the full 10,000."""
    yield (
        "| SPRT p0 | ln A | 10 % cheater banned within 50 | median / p90 / max jobs | honest banned at 0.2 % "
        "(1,000 jobs) | honest banned at 1 % (10,000 jobs) | extra runs once established at 1 % |"
    )
    yield "|---|---|---|---|---|---|---|"
    for p0, log_ratio in rules:
        scoring = ScoringConfig(ban_honest_rate=p0, ban_log_ratio=log_ratio)
        low = SimConfig(honest_off_rate=0.002, scoring=scoring, seed=seed)
        low = low if probes else without_probes(low)
        cheat = summarise("cheat 10 %", simulate(low, [SimPeer("cheat 10 %", 0.10)] * cheaters))
        short = replace(low, jobs_per_peer=1_000, established_after=500)
        honest = summarise("honest", simulate(short, [SimPeer("honest")] * honest_low))
        high = replace(low, honest_off_rate=0.01)
        honest_1 = summarise("honest", simulate(high, [SimPeer("honest")] * honest_high))
        est = honest_1.established_overhead or 0.0
        yield (
            f"| {100 * p0:g} % | {log_ratio:g} | {cheat.banned_within_50}/{cheat.peers} "
            f"({100 * cheat.banned_within_50 / cheat.peers:.1f} %) | {cheat.median_jobs_to_ban:g} / "
            f"{cheat.p90_jobs_to_ban:g} / {cheat.max_jobs_to_ban} | {honest.banned}/{honest.peers} | "
            f"{honest_1.banned}/{honest_1.peers} | {100 * est:.1f} % |"
        )


def _sim_row(s: Summary, off: float) -> str:
    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:g}"

    est = "–" if s.established_overhead is None else f"{100 * s.established_overhead:.1f} %"
    return (
        f"| {s.peers} × {s.name} | {100 * off:g} % | {s.banned}/{s.peers} | {num(s.median_jobs_to_ban)} / "
        f"{num(s.p90_jobs_to_ban)} / {num(s.max_jobs_to_ban)} | {s.banned_within_50}/{s.peers} | "
        f"{s.blame_rate:.4f} | {100 * s.overhead:.1f} % / {est} | {s.probes / max(1, s.peers):.2f} |"
    )


def _report(table: list[str], sim: list[str], thresholds: Thresholds, jobs: int, seconds: float) -> str:
    import json

    head = ""
    return "\n".join(
        [
            "# Verification: comparison thresholds and the spot-check policy",
            "",
            head + f"Produced by `python -m lpnode.reputation.calibrate --jobs {jobs} --out docs/verification.md` "
            f"({seconds:.0f} s). Tiny presets (random weights) on the CPU, outputs through the real PNG / H.264 "
            "output stage and compared as bytes. Each row compares a run with the reference run of the same job.",
            "",
            "## Honest variation against cheats",
            "",
            *table,
            "",
            "## Thresholds in force (defaults; `Thresholds.from_config` reads the node config's table)",
            "",
            "```json",
            json.dumps(thresholds.to_config(), indent=1),
            "```",
            "",
            "## Policy simulation (`reputation/policy_sim.py`, seeded, no network)",
            "",
            *sim,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
