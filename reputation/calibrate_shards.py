"""A big honest sample as shards: K processes in parallel, each running rounds of fresh jobs until its time is up.

    python -m lpnode.reputation.calibrate_shards --shards 14 --threads 1 --seed 100 --seconds 450 --out shards/
    python -m lpnode.reputation.calibrate --pool shards/*.json

Shard ``k`` runs rounds ``r = 0, 1, ...`` of :func:`~lpnode.reputation.calibrate_honest.honest_sample`
(``--round`` comparisons each) with seed ``(seed + k) * 1000 + r``, so every round draws its own prompts,
seeds and inputs (the first two samples used seeds 0 and 1; ``--seed`` must be at least 1 and a round seed
is never below 1000). After every round the shard rewrites ``honest-<seed + k>.json`` (pooled over its
rounds, atomically), so a shard stopped at any point keeps every finished round. It starts no round that
would likely end past ``--seconds``.

Threads: each shard sets torch to ``--threads`` threads; that is the reference's thread count (the
``threads`` run, the reference on one thread, needs ``--threads`` ≥ 2 and is left out at 1, as
``honest_sample`` always did). Keep shards × threads within the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "round_seed", "run_shard"]

MAX_SHARDS = 64
MAX_ROUNDS = 999  # round seeds (seed × 1000 + r) of two shards never meet
KILL_GRACE_S = 120.0  # a shard still running this long past --seconds is stopped (its finished rounds stay)


def round_seed(seed: int, index: int) -> int:
    if seed < 1 or not 0 <= index < MAX_ROUNDS:
        raise ValueError(f"need seed >= 1 and 0 <= round < {MAX_ROUNDS}, got seed {seed}, round {index}")
    return seed * 1000 + index


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.replace(path)


def run_shard(
    seed: int, *, seconds: float, round_size: int, out: Path, runs: Sequence[str] | None, max_rounds: int = MAX_ROUNDS
) -> int:
    """Rounds of honest samples until ``seconds`` would be passed; returns the rounds run."""
    import torch

    from .calibrate_honest import honest_sample
    from .calibrate_pool import pool, sample_to_json

    start = time.perf_counter()
    path = out / f"honest-{seed}.json"
    total = None
    seeds: list[int] = []
    longest = 0.0
    for index in range(min(max_rounds, MAX_ROUNDS)):
        elapsed = time.perf_counter() - start
        if index and elapsed + 1.5 * longest > seconds:
            break
        began = time.perf_counter()
        sample = honest_sample(round_size, seed=round_seed(seed, index), runs=runs)
        longest = max(longest, time.perf_counter() - began)
        total = sample if total is None else pool([total, sample])
        seeds.append(round_seed(seed, index))
        meta = {
            "seed": seed,
            "round_seeds": seeds,
            "round_size": round_size,
            "runs": sorted({name for r in total.pairs for name in (r.a, r.b)}),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "host": platform.node(),
            "wall_s": round(time.perf_counter() - start, 1),
        }
        _write_atomic(path, sample_to_json(total, meta))
        jobs = sum(total.jobs.values())
        print(f"shard {seed}: round {index} done, {jobs} jobs, {meta['wall_s']} s", file=sys.stderr, flush=True)
    return len(seeds)


def _spawn(args: argparse.Namespace) -> int:
    if not 1 <= args.shards <= MAX_SHARDS:
        raise SystemExit(f"--shards must be 1..{MAX_SHARDS}")
    args.out.mkdir(parents=True, exist_ok=True)
    # intra-op pools sized like torch's own threads, so shards × threads is what runs
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    children: list[tuple[int, subprocess.Popen[bytes]]] = []
    for k in range(args.shards):
        seed = args.seed + k
        cmd = [sys.executable, "-m", "lpnode.reputation.calibrate_shards", "--one", "--seed", str(seed)]
        cmd += ["--threads", str(args.threads), "--seconds", str(args.seconds), "--round", str(args.round)]
        cmd += ["--out", str(args.out)] + (["--runs", args.runs] if args.runs else [])
        log = (args.out / f"honest-{seed}.log").open("wb")
        children.append((seed, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        log.close()  # the child holds its own descriptor
    deadline = time.monotonic() + args.seconds + KILL_GRACE_S
    failed = 0
    for seed, child in children:
        try:
            code = child.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        if code != 0:
            failed += 1
            print(f"shard {seed} exited {code} (see honest-{seed}.log)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpnode.reputation.calibrate_shards", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--shards", type=int, default=1, help="processes in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per shard (the reference's)")
    parser.add_argument("--seed", type=int, required=True, help="shard k uses seed + k (at least 1)")
    parser.add_argument("--seconds", type=float, required=True, help="start no round likely to end later")
    parser.add_argument("--round", type=int, default=120, help="comparisons with the reference per round")
    parser.add_argument("--runs", help="comma-separated honest runs (default: honest_sample's)")
    parser.add_argument("--out", type=Path, required=True, help="folder for honest-<seed>.json and .log")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a shard process itself
    args = parser.parse_args(argv)
    if args.seed < 1:
        parser.error(
            "--seed must be at least 1: round seeds (seed × 1000 + round) then never meet the first samples' 0 and 1"
        )
    if not args.one:
        return _spawn(args)
    import torch

    torch.set_num_threads(args.threads)
    runs = args.runs.split(",") if args.runs else None
    run_shard(args.seed, seconds=args.seconds, round_size=args.round, out=args.out, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
