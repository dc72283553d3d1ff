"""What one end-to-end bench run measures: the setups, the job they send, and the command line that picks one.

Shared by ``bench/e2e.py`` and ``bench/spares.py``: both take ``cpu`` / ``gpu`` / ``gpu --smoke`` /
``report F``, and send the same text-to-image job over HTTP and (``e2e.py``) straight into a pool.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

BENCH_MODEL = "bench-sdxl-turbo-size-b1"  # bench/models.py's MODEL_B1: batches of 1, no batch window
BENCH_MODEL_ID = "bench/sdxl-turbo-size-random"
TINY = "tiny-sdxl"
TINY_MODEL_ID = "lpnode/tiny-sdxl"


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    bench_preset: str  # "gpu", "smoke" (bench/models.py's SETUP) or "none": the built-in tiny-sdxl only
    device: str
    model: str
    model_id: str
    size: int  # pixels a side
    steps: int
    warmup: int  # jobs of each kind before timing
    repeats: int  # timed network jobs (and as many direct calls, interleaved)
    concurrency: int  # requests in flight in the jobs/s phase
    stream_jobs: int  # jobs in the jobs/s phase
    stream_size: int = 16


SETUPS = {
    "cpu": Setup("cpu", "none", "cpu", TINY, TINY_MODEL_ID, 64, 2, 3, 15, 4, 40),
    "gpu": Setup("gpu", "gpu", "cuda:0", BENCH_MODEL, BENCH_MODEL_ID, 512, 1, 3, 25, 16, 240),
    "smoke": Setup("smoke", "smoke", "cpu", BENCH_MODEL, BENCH_MODEL_ID, 64, 1, 1, 3, 4, 8),
}


def job_body(setup: Setup, seed: int, *, tiny_stream: bool = False) -> dict[str, Any]:
    size = setup.stream_size if tiny_stream else setup.size
    return {
        "prompt": "bench",
        "model_id": TINY_MODEL_ID if tiny_stream else setup.model_id,
        "width": size,
        "height": size,
        "num_inference_steps": 1 if tiny_stream else setup.steps,
        "guidance_scale": 0.0,
        "seed": seed,
        "max_price": 1_000_000,
        "deadline": 120,
    }


def pool_request(setup: Setup, seed: int, *, tiny_stream: bool = False) -> Any:
    from lpnode.models import registry
    from lpnode.models.base import PipelineKind

    body = job_body(setup, seed, tiny_stream=tiny_stream)
    fields = {k: body[k] for k in ("prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed")}
    return registry.spec(TINY if tiny_stream else setup.model).build_request(PipelineKind.TEXT_TO_IMAGE, **fields)


def device_name(setup: Setup) -> str:
    """What the setup runs on, for the record: the GPU's name, or the CPU's model name."""
    if not setup.device.startswith("cuda"):
        return cpu_name()
    import torch

    return str(torch.cuda.get_device_name(0))


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def add_run_arguments(parser: argparse.ArgumentParser, *, out: Path, repeats_help: str) -> None:
    """The arguments after ``what``: the report's file, where results go, the smoke switch, the repeats."""
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--smoke", action="store_true", help="the gpu setup with tiny modules on the CPU")
    parser.add_argument("--repeats", type=int, help=repeats_help)
    parser.add_argument("--size", type=int, help="pixels a side of the timed jobs (default: the setup's)")


def run_command(
    args: argparse.Namespace, report: Callable[[Path], str], bench: Callable[[Setup, Path], Awaitable[None]]
) -> int:
    """``report F`` prints the Markdown; ``cpu`` / ``gpu`` runs ``bench`` on the setup, results appended to ``--out``."""
    if args.what == "report":
        print(report(args.file or args.out))
        return 0
    setup = SETUPS["smoke" if args.smoke else args.what]
    if args.repeats:
        setup = dataclasses.replace(setup, repeats=args.repeats)
    if args.size:
        # e.g. `gpu --smoke --size 512`: the GPU job's output size (the transfer's share) on the CPU
        setup = dataclasses.replace(setup, size=args.size)
    trio.run(bench, setup, args.out)
    return 0
