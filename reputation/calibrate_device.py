"""Honest variation across devices: the same tiny-preset jobs on another device, against CPU references.

Two steps, because the device machine and the reference machine differ:

    # here, on the CPU: run each calibration job once (float32) and keep the job fields and the outputs
    python -m lpnode.reputation.calibrate_device reference --jobs 4 --out .calib/reference.msgpack
    # on the GPU machine: the same jobs on CUDA (float32 and float16), plus cheats run there, compared
    # with the CPU outputs through the real encode → decode → compare path
    python -m lpnode.reputation.calibrate_device compare --reference .calib/reference.msgpack \\
        --device cuda --out cross_device.md

The reference file carries the job *fields* (prompts, seeds, input PNG/MP4 bytes), not only the
outputs, so an encoder of another version on the device cannot change a job's inputs. Tiny presets
build their weights from a seed; the weights hash is recorded and checked, so "other device" never
silently means "other weights".
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import torch
from lpnode.models import registry
from lpnode.models.base import ModelAdapter, PipelineKind
from lpnode.protocol.jobspec import OUTPUT_MEDIA_TYPE, Pipeline

from .calibrate import CASES, Case, Sample, _encoded, separation_table
from .cheats import Cheater, CheatMode, applicable_cheats, other_model_adapter
from .compare import Thresholds, Verdict, compare_outputs

__all__ = ["FORMAT", "ReferenceJob", "compare_on_device", "main", "make_reference"]

FORMAT = 1  # reference file layout version
MAX_REFERENCE_BYTES = 32 * 1024 * 1024  # the file travels with the device call (64 MiB in all)
# Honest runs on the device: name → dtype. float16 is what a consumer GPU serves with (load()'s CUDA default).
DEVICE_DTYPES: Mapping[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
# Cheats worth re-running on the device: the ones whose output depends on the arithmetic (blank/copied do not).
DEVICE_CHEATS = (CheatMode.OTHER_SEED, CheatMode.HALF_STEPS, CheatMode.OTHER_MODEL)


@dataclass(frozen=True)
class ReferenceJob:
    pipeline: Pipeline
    preset: str
    index: int
    fields: dict[str, Any]  # Case.build(index): the request's fields, input bytes included
    output: bytes  # encoded (PNG / MP4) CPU float32 output
    weights_sha256: str


def make_reference(cases: Sequence[Case], jobs: int) -> list[ReferenceJob]:
    out: list[ReferenceJob] = []
    for case in cases:
        adapter = registry.resolve(case.preset)
        adapter.load("cpu", torch.float32)
        digest = adapter.weights_sha256()
        for index in range(jobs):
            fields = case.build(index)
            request = adapter.spec.build_request(PipelineKind(case.pipeline.value), **fields)
            out.append(
                ReferenceJob(case.pipeline, case.preset, index, fields, _encoded(adapter.generate(request)), digest)
            )
        adapter.unload()
    return out


def _dump(jobs: Sequence[ReferenceJob]) -> bytes:
    rows = [
        {
            "pipeline": j.pipeline.value,
            "preset": j.preset,
            "index": j.index,
            "fields": j.fields,
            "output": j.output,
            "weights_sha256": j.weights_sha256,
        }
        for j in jobs
    ]
    return bytes(msgpack.packb({"format": FORMAT, "torch": torch.__version__, "jobs": rows}, use_bin_type=True))


def _load(data: bytes) -> tuple[str, list[ReferenceJob]]:
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValueError(f"reference file of {len(data)} bytes, limit {MAX_REFERENCE_BYTES}")
    doc = msgpack.unpackb(data, raw=False)
    if doc.get("format") != FORMAT:
        raise ValueError(f"reference file format {doc.get('format')!r}, expected {FORMAT}")
    jobs = [
        ReferenceJob(
            Pipeline(r["pipeline"]), r["preset"], int(r["index"]), dict(r["fields"]), r["output"], r["weights_sha256"]
        )
        for r in doc["jobs"]
    ]
    return str(doc["torch"]), jobs


def compare_on_device(
    reference: Sequence[ReferenceJob], device: str, thresholds: Thresholds | None = None, *, seed: int = 0
) -> tuple[list[Sample], list[str]]:
    """Every reference job re-run on ``device`` honestly (each dtype) and by cheats; each compared with the CPU output.

    Returns the samples and notes (weights mismatches, dtypes a preset refused).
    """
    thresholds = thresholds or Thresholds()
    samples: list[Sample] = []
    notes: list[str] = []
    by_preset: dict[tuple[Pipeline, str], list[ReferenceJob]] = {}
    for job in reference:
        by_preset.setdefault((job.pipeline, job.preset), []).append(job)

    def record(job: ReferenceJob, honest: bool, name: str, data: bytes) -> None:
        media = OUTPUT_MEDIA_TYPE[job.pipeline]
        comparison = compare_outputs(job.pipeline, job.output, data, media, thresholds)
        samples.append(Sample(job.pipeline, honest, name, job.index, comparison))

    for (pipeline, preset), jobs in by_preset.items():
        kind = PipelineKind(pipeline.value)
        for label, dtype in DEVICE_DTYPES.items():
            adapter = registry.resolve(preset)
            try:
                adapter.load(device, dtype)
            except Exception as exc:  # a preset may refuse a dtype; say so in the report and go on
                notes.append(f"{pipeline.value} {label}: not run ({type(exc).__name__}: {exc})")
                continue
            _check_weights(adapter, jobs[0], notes, label)
            for job in jobs:
                request = adapter.spec.build_request(kind, **job.fields)
                record(job, True, f"{device}-{label}", _encoded(adapter.generate(request)))
            if label == "fp16":
                _cheats_on(adapter, preset, kind, jobs, device, record, seed)
            adapter.unload()
    return samples, notes


def _check_weights(adapter: ModelAdapter, job: ReferenceJob, notes: list[str], label: str) -> None:
    digest = adapter.weights_sha256()
    if digest != job.weights_sha256:
        notes.append(
            f"{job.pipeline.value} {label}: weights hash {digest[:12]} differs from the CPU's {job.weights_sha256[:12]}"
        )


def _cheats_on(
    adapter: ModelAdapter,
    preset: str,
    kind: PipelineKind,
    jobs: Sequence[ReferenceJob],
    device: str,
    record: Any,
    seed: int,
) -> None:
    for mode in applicable_cheats(kind):
        if mode not in DEVICE_CHEATS:
            continue
        other = None
        if mode is CheatMode.OTHER_MODEL:
            # Loaded in the device's default dtype (fp16 on CUDA); load() again would rebuild unshuffled weights.
            other = other_model_adapter(preset, device=device)
        cheater = Cheater(mode, rng=random.Random(seed), other_model=other)
        for job in jobs:
            request = adapter.spec.build_request(kind, **job.fields)
            record(job, False, f"{device}-fp16 {mode.value}", _encoded(cheater.generate(adapter, request)))
        if other is not None:
            other.unload()


def verdict_counts(samples: Sequence[Sample], honest: bool) -> dict[Verdict, int]:
    return {v: sum(s.comparison.verdict is v for s in samples if s.honest is honest) for v in Verdict}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpnode.reputation.calibrate_device", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="run the calibration jobs on the CPU (float32) and keep their outputs")
    ref.add_argument("--jobs", type=int, default=4)
    ref.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="re-run the reference jobs on --device and compare")
    cmp.add_argument("--reference", type=Path, required=True)
    cmp.add_argument("--device", default="cuda")
    cmp.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.command == "reference":
        data = _dump(make_reference(CASES, args.jobs))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(data)
        print(f"{len(data)} bytes to {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return 0
    ref_torch, reference = _load(args.reference.read_bytes())
    samples, notes = compare_on_device(reference, args.device)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    head = [
        f"Reference: CPU float32, torch {ref_torch}. Device: {name}, torch {torch.__version__}. "
        f"{len(reference)} jobs, {time.perf_counter() - start:.0f} s.",
        "",
    ]
    lines = head + separation_table(samples) + [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    honest = verdict_counts(samples, True)
    print(f"honest verdicts: {dict(honest)}; cheat verdicts: {dict(verdict_counts(samples, False))}", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
