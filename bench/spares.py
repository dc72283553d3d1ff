#!/usr/bin/env python3
"""Spare job streams on against off, in one run: two requesters take turns sending jobs to one worker.

Not a test. ``bench/e2e.py``'s cluster with a second requester: one ``lpnode run`` worker serving
the model, requester A with spare streams (the default, ``node/spare_streams.py``) and requester B
with ``LPNODE_SPARE_STREAM_TTL_S=0``, both bootstrapped to the worker. The driver sends one
``POST /text-to-image`` at a time, alternating A and B (and which goes first in each pair), so both
arms see the same machine state. Per job, from the probes ``bench/e2e.py`` installs: the wall time,
the overhead (wall time minus the worker's own ``pool.run``), the worker's device stage (does
opening the next stream while the worker runs slow its model thread?), and the finer parts.

    python bench/spares.py gpu --out spares.jsonl    # the SDXL-Turbo-size setup of bench/e2e.py
    python bench/spares.py cpu --out spares.jsonl    # tiny-sdxl on this machine's CPU
    python bench/spares.py report spares.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import e2e  # bench/e2e.py, beside this file
import trio

ARMS = ("on", "off")
ARM_ENV = {"on": {}, "off": {"LPNODE_SPARE_STREAM_TTL_S": "0"}}


async def bench(setup: e2e.Setup, out: Path) -> None:
    import httpx

    serve = ",".join(dict.fromkeys([setup.model, e2e.TINY]))
    with tempfile.TemporaryDirectory(prefix="lpnode-spares-") as tmp_name:
        async with contextlib.AsyncExitStack() as stack:
            tmp = Path(tmp_name)
            worker = await e2e.launch(tmp, "worker", setup, serve, None, stack)
            async with httpx.AsyncClient(base_url=worker.url, headers=e2e.auth(worker), trust_env=False) as client:
                node = (await client.get("/v1/node")).raise_for_status().json()
            addr = next(a for a in node["listen_addrs"] if a.startswith("/ip4/127.0.0.1/"))
            requesters = {
                arm: await e2e.launch(tmp, f"requester-{arm}", setup, "none", addr, stack, env=ARM_ENV[arm])
                for arm in ARMS
            }
            for requester in requesters.values():
                await e2e.wait_for_models(requester, node["peer_id"])
            clients = {
                arm: await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=requester.url,
                        headers=e2e.auth(requester),
                        trust_env=False,
                        timeout=180,
                        limits=httpx.Limits(keepalive_expiry=2.0),  # under the server's 5 s keep-alive
                    )
                )
                for arm, requester in requesters.items()
            }
            windows: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
            walls: dict[str, list[float]] = {arm: [] for arm in ARMS}

            async def job(arm: str, seed: int) -> None:
                start, mono = time.perf_counter(), time.monotonic()
                answer = await clients[arm].post("/text-to-image", json=e2e.job_body(setup, seed))
                walls[arm].append(time.perf_counter() - start)
                windows[arm].append((mono, time.monotonic()))
                if answer.status_code != 200:
                    raise RuntimeError(f"{arm}: POST /text-to-image answered {answer.status_code}: {answer.text[:500]}")

            for i in range(setup.warmup):
                for arm in ARMS:
                    await job(arm, 900 + i)
            skip_w = e2e.count_lines(worker.probe)
            skip_r = {arm: e2e.count_lines(r.probe) for arm, r in requesters.items()}
            for arm in ARMS:
                windows[arm].clear()
                walls[arm].clear()
            for i in range(setup.repeats):
                for arm in ARMS if i % 2 == 0 else reversed(ARMS):
                    await job(arm, i)
            worker_probes = e2e.read_probes(worker.probe, skip_w)
            arms = {
                arm: summarize(walls[arm], windows[arm], worker_probes, e2e.read_probes(r.probe, skip_r[arm]))
                for arm, r in requesters.items()
            }
    pairs = [on - off for on, off in zip(arms["on"].pop("overheads"), arms["off"].pop("overheads"), strict=True)]
    record: dict[str, Any] = {
        "setup": setup.name,
        "device": gpu_name(setup),
        "cores": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": setup.model,
        "size": setup.size,
        "steps": setup.steps,
        "repeats": setup.repeats,
        "arms": arms,
        "paired_overhead_difference_ms": e2e.ms(pairs),  # median over pairs of (on − off)
    }
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


def summarize(
    walls: Sequence[float],
    windows: Sequence[tuple[float, float]],
    worker: list[dict[str, Any]],
    requester: list[dict[str, Any]],
) -> dict[str, Any]:
    """One arm's medians; ``overheads`` (per job, seconds, in job order) is popped by the caller for pairing."""
    overheads: list[float] = []
    device: list[float] = []
    pool_run: list[float] = []
    for wall, (start, end) in zip(walls, windows, strict=True):
        run = next(p for p in worker if p["probe"] == "pool_run" and start <= p["start"] <= end)
        overheads.append(wall - (run["end"] - run["start"]))
        pool_run.append(run["end"] - run["start"])
        device.append(run["device_ms"] / 1000)
    return {
        "network_ms": e2e.ms(walls),
        "overhead_ms": e2e.ms(overheads),
        "worker_pool_run_ms": e2e.ms(pool_run),
        "worker_device_ms": e2e.ms(device),
        "fine_ms": e2e.fine_split(windows, worker, requester),
        "overheads": overheads,
    }


def gpu_name(setup: e2e.Setup) -> str:
    if not setup.device.startswith("cuda"):
        return e2e.cpu_name()
    import torch

    return str(torch.cuda.get_device_name(0))


def report(path: Path) -> str:
    lines: list[str] = []
    for r in map(json.loads, path.read_text().splitlines()):
        on, off = r["arms"]["on"], r["arms"]["off"]
        lines += [
            f"**{r['setup']}**: {r['model']}, {r['size']}×{r['size']}, {r['steps']} step(s), on {r['device']} "
            f"({r['cores']} cores), {r['date']}; {r['repeats']} jobs per arm, alternating; medians.",
            "",
            "| | spares on | spares off |",
            "|---|---|---|",
            f"| `POST /text-to-image`, whole job | {on['network_ms']} | {off['network_ms']} |",
            f"| the worker's `pool.run` | {on['worker_pool_run_ms']} | {off['worker_pool_run_ms']} |",
            f"| the worker's device stage | {on['worker_device_ms']} | {off['worker_device_ms']} |",
            f"| **job − the worker's `pool.run`** | **{on['overhead_ms']}** | **{off['overhead_ms']}** |",
        ]
        if on["fine_ms"] and off["fine_ms"]:
            lines += [
                f"| {text} | {on['fine_ms'][key]} | {off['fine_ms'][key]} |" for key, text in e2e.FINE_PARTS.items()
            ]
            lines.append(
                f"| jobs on a spare stream | {on['fine_ms']['jobs_on_spares']} | {off['fine_ms']['jobs_on_spares']} |"
            )
        lines += ["", f"Median over pairs of (on − off) overhead: {r['paired_overhead_difference_ms']} ms.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=("cpu", "gpu", "report"))
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-spares.jsonl"))
    parser.add_argument("--smoke", action="store_true", help="the gpu setup with tiny modules on the CPU")
    parser.add_argument("--repeats", type=int, help="timed jobs per arm (default: the setup's)")
    args = parser.parse_args(argv)
    if args.what == "report":
        print(report(args.file or args.out))
        return 0
    setup = e2e.SETUPS["smoke" if args.smoke else args.what]
    if args.repeats:
        setup = dataclasses.replace(setup, repeats=args.repeats)
    trio.run(bench, setup, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
