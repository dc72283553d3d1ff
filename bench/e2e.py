"""A job end to end through two ``lpnode run`` processes, against a direct ``pool.run`` in the same run.

Not a test. A worker process serves the model; a requester-only process (no models) takes
``POST /text-to-image`` over HTTP (httpx) from this driver, picks the worker from its directory,
negotiates over libp2p (TCP + Noise + Yamux on 127.0.0.1), receives the PNG in chunks, checks the
signed receipt and answers. The driver opens its own model pool of the same preset, on the same
device, and alternates one direct ``await pool.run`` with one network job, so both see the same
machine state. Then jobs per second: many concurrent requests for a near-instant model (tiny-sdxl,
16×16, 1 step), through the network and straight into a pool.

    python bench/e2e.py cpu --out e2e.jsonl     # tiny-sdxl, 64×64, 2 steps, on this machine's CPU
    python bench/e2e.py gpu --out e2e.jsonl     # SDXL-Turbo-size UNet + SDXL VAE, random weights, 512², 1 step
    python bench/e2e.py gpu --smoke             # the GPU path with tiny modules on the CPU (checks the code)
    python bench/e2e.py report e2e.jsonl        # markdown for docs/benchmarks.md

The GPU model is bench/models.py's ``BenchSDXL``, registered as a preset at runtime in each process
that needs it (``e2e_node.py``, which ``node`` below runs: ``lpnode run`` with probes). Both pools run
eager (compile off) with no batch window, so a lone job never waits for company.

Where the time goes: each node process appends start/end stamps of the calls that matter to a probe
file (``e2e_node.install_probes``); ``e2e_probes.py`` splits each timed job into parts from them;
``e2e_report.py`` writes the tables. The modules beside this one, one job each:

    e2e_setup.py     the setups, the job they send, the command line shared with bench/spares.py
    e2e_node.py      inside each launched process: the bench preset, the probes, ``lpnode run``
    e2e_cluster.py   launching the worker and the requester processes, waiting until they see each other
    e2e_probes.py    probe stamps → the parts of a job (medians, ms)
    e2e_report.py    the Markdown
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from e2e_cluster import job_client, open_cluster
from e2e_node import node_main, register_bench_preset
from e2e_probes import count_lines, fine_split, ms, read_probes, split_times
from e2e_report import report
from e2e_setup import TINY, Setup, add_run_arguments, device_name, job_body, pool_request, run_command


async def bench(setup: Setup, out: Path) -> None:
    import torch
    from lpnode.models.pool import PoolConfig, open_model_pool
    from lpnode.protocol.receipts import verify_receipt

    register_bench_preset(setup.bench_preset)
    bench_models = sys.modules.get("lpnode_bench_models")
    serve = tuple(dict.fromkeys([setup.model, TINY]))
    dtype = torch.float16 if setup.device.startswith("cuda") else torch.float32
    config = PoolConfig(serve=serve, pinned=serve, device=setup.device, dtype=dtype, compile="off", batch_window_s=0.0)
    sync = torch.cuda.synchronize if setup.device.startswith("cuda") else (lambda: None)
    async with open_cluster(setup) as (worker, requester), open_model_pool(config) as pool:
        slot = pool._slots[setup.model]

        async def direct(seed: int) -> tuple[float, dict[str, float]]:
            start = time.perf_counter()
            output = await pool.run(setup.model, pool_request(setup, seed))
            return time.perf_counter() - start, output.timings_ms

        def bare_once() -> float:
            # The raw pipeline call a plain runner makes, on the pool's own model thread.
            assert bench_models is not None
            with torch.inference_mode():
                sync()
                start = time.perf_counter()
                bench_models.bare_call(slot.adapter, [1], pool_request(setup, 1))
                sync()
                return time.perf_counter() - start

        async with job_client(requester) as client:
            windows: list[tuple[float, float]] = []  # monotonic (start, end) of each network job, for the probes

            async def network(seed: int, *, tiny_stream: bool = False) -> tuple[float, dict[str, Any]]:
                start, mono = time.perf_counter(), time.monotonic()
                answer = await client.post("/text-to-image", json=job_body(setup, seed, tiny_stream=tiny_stream))
                wall = time.perf_counter() - start
                windows.append((mono, time.monotonic()))
                if answer.status_code != 200:
                    raise RuntimeError(f"POST /text-to-image answered {answer.status_code}: {answer.text[:2000]}")
                return wall, answer.json()

            for i in range(setup.warmup):
                await direct(900 + i)
                await network(900 + i)
                if bench_models is not None:
                    await pool._in_slot_thread(slot, bare_once)
            skip_w, skip_r = count_lines(worker.probe), count_lines(requester.probe)
            windows.clear()
            got: dict[str, list[float]] = {k: [] for k in ("direct", "device", "encode", "network", "run_ms", "bare")}
            for i in range(setup.repeats):
                # alternate which goes first, so neither always follows the other's cache state
                order = ("direct", "network") if i % 2 == 0 else ("network", "direct")
                for kind in order:
                    if kind == "direct":
                        wall, timings = await direct(i)
                        got["direct"].append(wall)
                        got["device"].append(timings["device"] / 1000)
                        got["encode"].append(timings["encode"] / 1000)
                    else:
                        wall, answer = await network(i)
                        got["network"].append(wall)
                        receipt = verify_receipt(base64.b64decode(answer["jobs"][0]["receipt"]))
                        got["run_ms"].append(receipt.timings.run_ms / 1000)
                if bench_models is not None:
                    got["bare"].append(await pool._in_slot_thread(slot, bare_once))
            worker_probes, requester_probes = read_probes(worker.probe, skip_w), read_probes(requester.probe, skip_r)
            breakdown = split_times(got["network"], worker_probes, requester_probes)
            fine = fine_split(windows[: setup.repeats], worker_probes, requester_probes)
            rpc_ms = await rpc_round_trip(client)

            # jobs per second with a near-instant model
            failures: list[str] = []

            async def stream(run_one: Callable[[int], Awaitable[object]]) -> float:
                counter = iter(range(setup.stream_jobs))

                async def lane() -> None:
                    for seed in counter:
                        try:
                            await run_one(seed)
                        except RuntimeError as exc:  # a failed network job is counted, not fatal
                            failures.append(str(exc)[:300])

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(setup.concurrency):
                        nursery.start_soon(lane)
                return time.perf_counter() - start

            async def direct_tiny(seed: int) -> object:
                return await pool.run(TINY, pool_request(setup, seed, tiny_stream=True))

            async def network_tiny(seed: int) -> object:
                return await network(seed, tiny_stream=True)

            await stream(direct_tiny)
            await stream(network_tiny)
            direct_s = [await stream(direct_tiny) for _ in range(2)]
            network_s = [await stream(network_tiny) for _ in range(2)]
            png_bytes = len((await client.get(answer["images"][0]["url"])).content)

    record: dict[str, Any] = {
        "setup": setup.name,
        "device": device_name(setup),
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": setup.model,
        "size": setup.size,
        "steps": setup.steps,
        "repeats": setup.repeats,
        # the requester's spare job streams (node/spare_streams.py); "0" = off, unset = the default
        "spare_stream_ttl_s": os.environ.get("LPNODE_SPARE_STREAM_TTL_S", "default"),
        "png_bytes": png_bytes,
        "direct_ms": ms(got["direct"]),
        "device_ms": ms(got["device"]),
        "encode_ms": ms(got["encode"]),
        "network_ms": ms(got["network"]),
        "receipt_run_ms": ms(got["run_ms"]),
        "paired_overhead_ms": ms([n - d for n, d in zip(got["network"], got["direct"], strict=True)]),
        "bare_ms": ms(got["bare"]) if got["bare"] else None,
        "rpc_get_ms": rpc_ms,
        "breakdown_ms": breakdown,
        "fine_ms": fine,
        "stream_size": setup.stream_size,
        "stream_jobs": setup.stream_jobs,
        "concurrency": setup.concurrency,
        "direct_jobs_per_s": round(setup.stream_jobs / statistics.median(direct_s), 1),
        "network_jobs_per_s": round(setup.stream_jobs / statistics.median(network_s), 1),
        "network_failures": len(failures),  # over the 2 timed + 1 warm-up network streams
        "first_failure": failures[0] if failures else "",
    }
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


async def rpc_round_trip(client: Any) -> float:
    """Median of an authenticated ``GET /v1/node`` on the requester: the HTTP + FastAPI floor."""
    samples = []
    for _ in range(20):
        start = time.perf_counter()
        (await client.get("/v1/node")).raise_for_status()
        samples.append(time.perf_counter() - start)
    return ms(samples)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "node":
        return node_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=("cpu", "gpu", "report"))
    add_run_arguments(parser, out=Path("bench-e2e.jsonl"), repeats_help="timed jobs (default: the setup's)")
    return run_command(parser.parse_args(argv), report, bench)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
