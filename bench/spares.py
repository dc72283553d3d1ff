#!/usr/bin/env python3
"""Spare job streams on against off, in one run: two requesters take turns sending jobs to one worker.

Not a test. ``bench/e2e.py``'s cluster with a second requester: one ``lpnode run`` worker serving
the model, requester A with spare streams (the default, ``node/spare_streams.py``) and requester B
with ``LPNODE_SPARE_STREAM_TTL_S=0``, both bootstrapped to the worker. The driver sends one
``POST /text-to-image`` at a time, alternating A and B (and which goes first in each pair), so both
arms see the same machine state. Per job, from the probes ``bench/e2e_node.py`` installs: the wall time,
the overhead (wall time minus the worker's own ``pool.run``), the worker's device stage (does
opening the next stream while the worker runs slow its model thread?), and the finer parts.

    python bench/spares.py gpu --out spares.jsonl    # the SDXL-Turbo-size setup of bench/e2e.py
    python bench/spares.py cpu --out spares.jsonl    # tiny-sdxl on this machine's CPU
    python bench/spares.py report spares.jsonl

Loopback has no latency, and the open's cost there is CPU. Between homes it is a round trip
(multistream-select's answer), which this box cannot add to its loopback (no netem). ``wan`` runs
the same comparison in one process on the in-memory network (``lpnode.node.network.memory``, real
time) with a fixed one-way delay, one worker serving tiny-sdxl from a real pool, two requester
nodes calling ``run_job`` one after the other (no HTTP):

    python bench/spares.py wan --rtt-ms 60 --repeats 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from e2e_cluster import job_client, launch, launch_worker, wait_for_models  # bench/e2e_*.py, beside this file
from e2e_probes import FINE_PARTS, count_lines, fine_split, ms, read_probes
from e2e_setup import Setup, add_run_arguments, device_name, job_body, run_command

ARMS = ("on", "off")
ARM_ENV = {"on": {}, "off": {"LPNODE_SPARE_STREAM_TTL_S": "0"}}


async def bench(setup: Setup, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="lpnode-spares-") as tmp_name:
        async with contextlib.AsyncExitStack() as stack:
            tmp = Path(tmp_name)
            worker, worker_peer_id, addr = await launch_worker(tmp, setup, stack)
            requesters = {
                arm: await launch(tmp, f"requester-{arm}", setup, "none", addr, stack, env=ARM_ENV[arm]) for arm in ARMS
            }
            for requester in requesters.values():
                await wait_for_models(requester, worker_peer_id)
            clients = {
                arm: await stack.enter_async_context(job_client(requester)) for arm, requester in requesters.items()
            }
            windows: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
            walls: dict[str, list[float]] = {arm: [] for arm in ARMS}

            async def job(arm: str, seed: int) -> None:
                start, mono = time.perf_counter(), time.monotonic()
                answer = await clients[arm].post("/text-to-image", json=job_body(setup, seed))
                walls[arm].append(time.perf_counter() - start)
                windows[arm].append((mono, time.monotonic()))
                if answer.status_code != 200:
                    raise RuntimeError(f"{arm}: POST /text-to-image answered {answer.status_code}: {answer.text[:500]}")

            for i in range(setup.warmup):
                for arm in ARMS:
                    await job(arm, 900 + i)
            skip_w = count_lines(worker.probe)
            skip_r = {arm: count_lines(r.probe) for arm, r in requesters.items()}
            for arm in ARMS:
                windows[arm].clear()
                walls[arm].clear()
            for i in range(setup.repeats):
                for arm in ARMS if i % 2 == 0 else reversed(ARMS):
                    await job(arm, i)
            worker_probes = read_probes(worker.probe, skip_w)
            arms = {
                arm: summarize(walls[arm], windows[arm], worker_probes, read_probes(r.probe, skip_r[arm]))
                for arm, r in requesters.items()
            }
    pairs = [on - off for on, off in zip(arms["on"].pop("overheads"), arms["off"].pop("overheads"), strict=True)]
    record: dict[str, Any] = {
        "setup": setup.name,
        "device": device_name(setup),
        "cores": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": setup.model,
        "size": setup.size,
        "steps": setup.steps,
        "repeats": setup.repeats,
        "arms": arms,
        "paired_overhead_difference_ms": ms(pairs),  # median over pairs of (on − off)
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
        "network_ms": ms(walls),
        "overhead_ms": ms(overheads),
        "worker_pool_run_ms": ms(pool_run),
        "worker_device_ms": ms(device),
        "fine_ms": fine_split(windows, worker, requester),
        "overheads": overheads,
    }


async def bench_wan(rtt_ms: float, repeats: int) -> None:
    """``run_job`` times with and without spares over links of ``rtt_ms``, printed as a table."""
    import functools
    import random

    from lpnode.models.pool import PoolConfig, open_model_pool
    from lpnode.node.config import NodeConfig
    from lpnode.node.daemon import serve_node
    from lpnode.node.gpu import GpuInfo
    from lpnode.node.job_requester import JobRequest, run_job
    from lpnode.node.job_worker import WorkerConfig, serve_job_worker
    from lpnode.node.network.memory import LatencyModel, open_memory_hub
    from lpnode.node.offer import OfferSource
    from lpnode.node.serving import serve_model_offers
    from lpnode.node.spare_streams import open_spare_streams
    from lpnode.protocol.jobspec import Pipeline, TextToImageParams
    from lpnode.protocol.names import JOB_PROTOCOL
    from lpnode.protocol.signing import NodeKey

    cpu = (GpuInfo(name="cpu", kind="cpu", vram_total_bytes=0, vram_free_bytes=0),)
    config = NodeConfig(listen=("/memory/0",), mdns=False, advert_interval_s=0.5, advert_min_gap_s=0.1).validate()
    job = JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("bench", 64, 64, 2, 0.0, ""), "lpnode/tiny-sdxl", 1)
    pool_config = PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu", batch_window_s=0.0)
    latency = LatencyModel.constant(rtt_ms / 2000)
    async with (
        open_memory_hub(latency=latency) as hub,
        open_model_pool(pool_config) as pool,
        contextlib.AsyncExitStack() as stack,
    ):
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = []
        for index in range(3):
            key = NodeKey(bytes([index + 1]) * 32)
            net = await stack.enter_async_context(hub.open_network(key))
            if nodes:
                await net.connect(nodes[0].network.listen_addrs()[0])
            offer = OfferSource(queue_capacity=4, devices=cpu)
            node = await nursery.start(functools.partial(serve_node, config, key, net, offer))
            if index == 0:  # the worker
                await nursery.start(serve_model_offers, pool, offer, 100, node.publisher.poke)
                await nursery.start(
                    functools.partial(serve_job_worker, net, key, pool, WorkerConfig(), wall_clock=node.wall_clock)
                )
            nodes.append(node)
        worker, with_spares, without = nodes
        spares = await stack.enter_async_context(open_spare_streams(with_spares.network, JOB_PROTOCOL))
        for requester in (with_spares, without):
            while not ((r := requester.directory.get(worker.peer_id)) is not None and r.advert.models):
                await requester.directory.wait_changed()
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}

        async def one(arm: str) -> None:
            requester = with_spares if arm == "on" else without
            start = trio.current_time()
            await run_job(
                requester,
                job,
                max_price=10**9,
                deadline_s=60,
                rng=random.Random(0),
                spares=spares if arm == "on" else None,
            )
            times[arm].append(trio.current_time() - start)

        for arm in ARMS:  # warm-up: the model's first run, and the first spare
            await one(arm)
            times[arm].clear()
        for i in range(repeats):
            for arm in ARMS if i % 2 == 0 else reversed(ARMS):
                await one(arm)
        nursery.cancel_scope.cancel()
    on, off = ms(times["on"]), ms(times["off"])
    print(
        f"| RTT {rtt_ms:g} ms, tiny-sdxl 64×64 2 steps, CPU, {repeats} jobs per arm | {on} | {off} | {off - on:.2f} |"
    )
    print(f"spares taken {spares.counts['taken']}, stale {spares.counts['stale']}")


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
            lines += [f"| {text} | {on['fine_ms'][key]} | {off['fine_ms'][key]} |" for key, text in FINE_PARTS.items()]
            lines.append(
                f"| jobs on a spare stream | {on['fine_ms']['jobs_on_spares']} | {off['fine_ms']['jobs_on_spares']} |"
            )
        lines += ["", f"Median over pairs of (on − off) overhead: {r['paired_overhead_difference_ms']} ms.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=("cpu", "gpu", "wan", "report"))
    parser.add_argument("--rtt-ms", type=float, default=60.0, help="wan: round-trip time of every link")
    add_run_arguments(parser, out=Path("bench-spares.jsonl"), repeats_help="timed jobs per arm (default: the setup's)")
    args = parser.parse_args(argv)
    if args.what == "wan":
        trio.run(bench_wan, args.rtt_ms, args.repeats or 10)
        return 0
    return run_command(args, report, bench)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
