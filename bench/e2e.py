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

The GPU model is bench/models.py's ``BenchSDXL`` (text encoders bypassed), registered as a preset
at runtime in each process that needs it (``node`` below wraps ``lpnode run``): the product's
registry has no random-weight full-size preset, and should not. Both pools run eager (compile
off) with no batch window, so a lone job never waits for company.

Where the time goes: each node process runs with timing probes (``install_probes``) that
wrap, by name, the requester's ``run_job`` and ``receive_transfer`` and the worker's
``ModelPool.run`` and ``send_transfer``, appending ``time.monotonic()`` start/end stamps (one
clock for every process on Linux) to a JSON-lines file. Per job:
RPC = HTTP round trip − ``run_job``; before run = stream open, quote, accept (``run_job`` start →
``pool.run`` start); pool = queue + device stage + output stage; after run = receipt signing,
Result message, receipt check (``pool.run`` end → transfer start); transfer = output bytes.
Finer parts (``fine_split``, ``FINE_PARTS``): more probes (the RPC handler's body read, record
creation, output store and final record; the stream open; every job message sent and received, by
type) are matched to each timed job by the driver's monotonic window around its request, so the
finer table adds up to the whole job and needs no per-probe counting.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import trio

SELF = Path(__file__).resolve()
HERE = SELF.parent
T = TypeVar("T")

BENCH_MODEL = "bench-sdxl-turbo-size-b1"  # bench/models.py's MODEL_B1: batches of 1, no batch window
BENCH_MODEL_ID = "bench/sdxl-turbo-size-random"
TINY = "tiny-sdxl"
TINY_MODEL_ID = "lpnode/tiny-sdxl"
STARTUP_S = 300  # a worker process building a 2.6B-parameter UNet; the bound is for a wedged process
NODE_TOML = """
advert_interval_s = 0.5
advert_ttl_s = 5.0
advert_min_gap_s = 0.1
compile = "off"
batch_window_ms = 0
queue_capacity = 64
log_level = "warning"
"""


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


# --- inside each process: the bench preset and the probes --------------------------------------------


def load_bench_models(preset: str) -> ModuleType:
    """bench/models.py as a module (not importable by name: the repository root holds the ``models`` package)."""
    spec = importlib.util.spec_from_file_location("lpnode_bench_models", HERE / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.SETUP = module.GPU if preset == "gpu" else module.SMOKE
    return module


def register_bench_preset(preset: str) -> None:
    """Add the SDXL-Turbo-size random-weight preset to this process's registry (bench only)."""
    if preset == "none":
        return
    from lpnode.models import registry
    from lpnode.models.base import Preset

    bench = load_bench_models(preset)
    spec = bench.sdxl_spec(BENCH_MODEL, 1)
    assert spec.model_id == BENCH_MODEL_ID
    # presets() is cached and hands out its dict: adding to it is what a new pipeline module would do.
    cast(dict[str, Preset], registry.presets())[BENCH_MODEL] = Preset(spec, bench.BenchSDXL)


class Probes:
    """Start/end stamps of wrapped calls, one JSON line each, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def record(self, name: str, start: float, **extra: Any) -> None:
        self._file.write(json.dumps({"probe": name, "start": start, "end": time.monotonic(), **extra}) + "\n")

    def wrap(self, name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> T:
            start = time.monotonic()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.record(name, start)

        return timed

    def wrap_receive(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """``receive_job_message``: the arrival time and type of each job message."""

        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> T:
            start = time.monotonic()
            message = await fn(*args, **kwargs)
            self.record("received", start, message=type(message).__name__)
            return message

        return timed

    def wrap_send(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """``send_job_message``: when each job message went out, by type."""

        @functools.wraps(fn)
        async def timed(framed: Any, message: Any, *args: Any, **kwargs: Any) -> T:
            start = time.monotonic()
            try:
                return await fn(framed, message, *args, **kwargs)
            finally:
                self.record("sent", start, message=type(message).__name__)

        return timed


def install_probes(path: Path, worker: bool) -> None:
    """Wrap the calls the breakdown needs, in every loaded lpnode module that holds them by name."""
    import lpnode.node.job_manager
    import lpnode.node.job_requester
    import lpnode.node.job_stream
    import lpnode.node.job_worker
    import lpnode.node.rpc_job_bodies
    import lpnode.node.run  # loads the RPC modules that import run_job
    import lpnode.node.transfer

    probes = Probes(path)
    targets = {
        lpnode.node.job_requester.run_job: "run_job",
        lpnode.node.transfer.receive_transfer: "receive_output",
        lpnode.node.transfer.send_transfer: "send_output",
        lpnode.node.rpc_job_bodies.read_json: "read_body",
    }
    # the originals, taken before the loop rebinds job_stream's own names
    receive, send = lpnode.node.job_stream.receive_job_message, lpnode.node.job_stream.send_job_message
    for module in [m for name, m in sys.modules.items() if name.startswith("lpnode.node") and m is not None]:
        for attr, value in list(vars(module).items()):
            if name := targets.get(value) if callable(value) else None:
                setattr(module, attr, probes.wrap(name, value))
            elif value is receive:
                setattr(module, attr, probes.wrap_receive(value))
            elif value is send:
                setattr(module, attr, probes.wrap_send(value))
    # the request path inside the requester's RPC handler: record creation, output store, final record
    manager = lpnode.node.job_manager.JobManager
    for method, name in (("submit", "submit"), ("_response", "store_outputs"), ("_finish", "finish")):
        setattr(manager, method, probes.wrap(name, getattr(manager, method)))
    import lpnode.node.network.libp2p

    network = lpnode.node.network.libp2p.Libp2pNetwork
    network.open_stream = probes.wrap("open_stream", network.open_stream)  # type: ignore[method-assign]
    if not worker:
        return  # a requester-only node never imports torch
    from lpnode.models.pool import ModelPool

    original_run = ModelPool.run

    async def run(self: ModelPool, model: str, request: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        output = await original_run(self, model, request, **kwargs)
        timings = output.timings_ms
        probes.record("pool_run", start, device_ms=timings.get("device"), encode_ms=timings.get("encode"))
        return output

    ModelPool.run = run  # type: ignore[method-assign]


def node_main(argv: Sequence[str]) -> int:
    """``lpnode run`` with the bench preset registered and the probes installed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-preset", choices=("gpu", "smoke", "none"), required=True)
    parser.add_argument("--probe", type=Path, required=True)
    parser.add_argument("--worker", action="store_true", help="serves models: probe its pool too")
    args, run_args = parser.parse_known_args(argv)
    register_bench_preset(args.bench_preset)
    install_probes(args.probe, args.worker)
    from lpnode.node.cli import main

    return main(["run", *[a for a in run_args if a != "--"]])


# --- the driver -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class NodeProc:
    process: trio.Process
    data_dir: Path
    probe: Path
    url: str
    token: str


async def launch(
    tmp: Path,
    name: str,
    setup: Setup,
    serve: str,
    bootstrap: str | None,
    stack: contextlib.AsyncExitStack,
    env: dict[str, str] | None = None,
) -> NodeProc:
    data_dir = tmp / name
    data_dir.mkdir()
    (tmp / "node.toml").write_text(NODE_TOML)
    probe = data_dir / "probe.jsonl"
    worker = serve != "none"
    preset = setup.bench_preset if worker else "none"
    args = [sys.executable, str(SELF), "node", f"--bench-preset={preset}"]
    args += [
        f"--probe={probe}",
        *(["--worker"] if worker else []),
        "--",
        f"--data-dir={data_dir}",
        f"--config={tmp / 'node.toml'}",
    ]
    args += ["--listen=/ip4/127.0.0.1/tcp/0", "--rpc=127.0.0.1:0", "--no-mdns", f"--serve={serve}"]
    args += [f"--device={setup.device}"] if worker else []
    args += [f"--bootstrap={bootstrap}"] if bootstrap else []
    log = (data_dir / "node.log").open("wb")
    process = await trio.lowlevel.open_process(args, stdout=-1, stderr=log, env={**os.environ, **(env or {})})

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            log.close()

    stack.push_async_callback(stop)
    assert process.stdout is not None
    text = b""
    with trio.fail_after(STARTUP_S):
        while b"data dir" not in text:  # the banner's last line
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"{name} exited: {(data_dir / 'node.log').read_text()[-3000:]}")
            text += chunk
    info = json.loads((data_dir / "rpc.json").read_text())
    token = (data_dir / "rpc.token").read_text().strip()
    return NodeProc(process, data_dir, probe, info["url"], token)


@contextlib.asynccontextmanager
async def open_cluster(setup: Setup) -> AsyncIterator[tuple[NodeProc, NodeProc]]:
    serve = ",".join(dict.fromkeys([setup.model, TINY]))
    with tempfile.TemporaryDirectory(prefix="lpnode-e2e-") as tmp_name:
        async with contextlib.AsyncExitStack() as stack:
            tmp = Path(tmp_name)
            worker = await launch(tmp, "worker", setup, serve, None, stack)
            import httpx

            async with httpx.AsyncClient(base_url=worker.url, headers=auth(worker), trust_env=False) as client:
                node = (await client.get("/v1/node")).raise_for_status().json()
            addr = next(a for a in node["listen_addrs"] if a.startswith("/ip4/127.0.0.1/"))
            requester = await launch(tmp, "requester", setup, "none", addr, stack)
            await wait_for_models(requester, node["peer_id"])
            yield worker, requester


def auth(node: NodeProc) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token}"}


async def wait_for_models(requester: NodeProc, worker_peer_id: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=requester.url, headers=auth(requester), trust_env=False) as client:
        with trio.fail_after(60):
            answer = (await client.get("/v1/peers")).json()
            while not any(p["peer_id"] == worker_peer_id and p["models"] for p in answer["peers"]):
                params = {"changed_since": answer["version"], "wait_s": 5}
                answer = (await client.get("/v1/peers", params=params, timeout=15)).json()


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


def read_probes(path: Path, skip: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[skip:]]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


async def bench(setup: Setup, out: Path) -> None:
    import httpx
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

        async with httpx.AsyncClient(
            base_url=requester.url,
            headers=auth(requester),
            trust_env=False,
            timeout=180,
            # under the server's 5 s keep-alive: a POST on a connection it is just closing fails (23:55 run)
            limits=httpx.Limits(keepalive_expiry=2.0),
        ) as client:
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
        "device": torch.cuda.get_device_name(0) if setup.device.startswith("cuda") else cpu_name(),
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


def split_times(
    network_s: Sequence[float], worker: list[dict[str, Any]], requester: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Median of each part of a network job, from the probes of the timed (sequential) jobs."""
    by = {name: [p for p in worker + requester if p["probe"] == name] for name in ("run_job", "pool_run")}
    by["receive_output"] = [p for p in requester if p["probe"] == "receive_output"]
    by["send_output"] = [p for p in worker if p["probe"] == "send_output"]
    n = len(network_s)
    if any(len(v) != n for v in by.values()):
        print(f"probe counts { ({k: len(v) for k, v in by.items()}) } != {n} jobs: no breakdown", file=sys.stderr)
        return None
    parts: dict[str, list[float]] = {}
    for i, total in enumerate(network_s):
        job, pool_run, recv = by["run_job"][i], by["pool_run"][i], by["receive_output"][i]
        values = {
            "overhead": total - (pool_run["end"] - pool_run["start"]),  # everything but the worker's pool.run
            "rpc": total - (job["end"] - job["start"]),
            "before_run": pool_run["start"] - job["start"],
            "pool_run": pool_run["end"] - pool_run["start"],
            "device": pool_run["device_ms"] / 1000,
            "encode": pool_run["encode_ms"] / 1000,
            "after_run": recv["start"] - pool_run["end"],
            "transfer": recv["end"] - recv["start"],
            "after_transfer": job["end"] - recv["end"],
            "send_output": by["send_output"][i]["end"] - by["send_output"][i]["start"],
        }
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    return {key: ms(values) for key, values in parts.items()}


FINE_PARTS = {
    "http_in": "HTTP request in: driver send → the handler reads the body",
    "parse": "body read, validated, job built (inputs probed)",
    "admit": "job record created (SQLite)",
    "to_run_job": "task start → `run_job`",
    "choose": "offers fitted and ranked, the try set up",
    "open": "stream opened (yamux + multistream-select)",
    "to_send": "stream opened → QuoteRequest on its way",
    "request_in": "QuoteRequest sent → the worker has it",
    "worker_to_run": "the worker quotes (and waits for an Accept unless taken in advance) → `pool.run`",
    "sign_receipt": "`pool.run` done → Result sent (receipt signed)",
    "result_in": "Result sent → the requester has it",
    "check_receipt": "receipt checked → transfer starts",
    "transfer": "output transfer",
    "to_store": "transfer done → output store",
    "store_outputs": "outputs stored (files, fsync)",
    "to_finish": "→ final record",
    "finish": "final record saved (SQLite)",
    "http_out": "HTTP response out: record saved → the driver has the answer",
}


def fine_split(
    windows: Sequence[tuple[float, float]], worker: list[dict[str, Any]], requester: list[dict[str, Any]]
) -> dict[str, float] | None:
    """Median of each finer part of the timed network jobs: the probes that fall in each job's window."""
    parts: dict[str, list[float]] = {}

    def first(
        probes: list[dict[str, Any]], window: tuple[float, float], name: str, message: str = ""
    ) -> dict[str, Any]:
        start, end = window
        # a receive is stamped from when the wait began: on a spare stream (node/spare_streams.py) the
        # worker waits for the QuoteRequest since the previous job, so receives are matched by their end
        at = "end" if name == "received" else "start"
        for p in probes:
            if p["probe"] == name and start <= p[at] <= end and (not message or p.get("message") == message):
                return p
        raise LookupError(f"{name} {message}".strip())

    for window in windows:
        start, end = window
        try:
            read = first(requester, window, "read_body")
            submit = first(requester, window, "submit")
            job = first(requester, window, "run_job")
            quote_request = first(requester, window, "sent", "QuoteRequest")
            request = first(worker, window, "received", "QuoteRequest")
            pool_run = first(worker, window, "pool_run")
            result_sent = first(worker, window, "sent", "Result")
            result = first(requester, window, "received", "Result")
            transfer = first(requester, window, "receive_output")
            store = first(requester, window, "store_outputs")
            finish = first(requester, window, "finish")
        except LookupError as missing:
            print(f"probe {missing} is missing in a timed job: no fine breakdown", file=sys.stderr)
            return None
        # This job's own open, if it made one: a job on a spare stream (node/spare_streams.py) opens
        # none, and the open in its window is the next spare's, made while the worker ran this job.
        own_open = [p for p in requester if p["probe"] == "open_stream" and job["start"] <= p["start"]]
        opened = next((p for p in own_open if p["end"] <= quote_request["start"]), None)
        on_spare = opened is None
        if opened is None:  # no open: "choose" holds the take of the spare, "open" is 0
            opened = {"start": quote_request["start"], "end": quote_request["start"]}
        parts.setdefault("on_spare", []).append(float(on_spare))
        values = {
            "http_in": read["start"] - start,
            "parse": submit["start"] - read["start"],
            "admit": submit["end"] - submit["start"],
            "to_run_job": job["start"] - submit["end"],
            "choose": opened["start"] - job["start"],
            "open": opened["end"] - opened["start"],
            "to_send": quote_request["start"] - opened["end"],
            "request_in": request["end"] - quote_request["start"],
            "worker_to_run": pool_run["start"] - request["end"],
            "sign_receipt": result_sent["start"] - pool_run["end"],
            "result_in": result["end"] - result_sent["start"],
            "check_receipt": transfer["start"] - result["end"],
            "transfer": transfer["end"] - transfer["start"],
            "to_store": store["start"] - transfer["end"],
            "store_outputs": store["end"] - store["start"],
            "to_finish": finish["start"] - store["end"],
            "finish": finish["end"] - finish["start"],
            "http_out": end - finish["end"],
        }
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    if not parts:
        return None
    on_spare = parts.pop("on_spare")
    return {**{key: ms(values) for key, values in parts.items()}, "jobs_on_spares": int(sum(on_spare))}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


# --- report -------------------------------------------------------------------------------------------


def report(path: Path) -> str:
    lines: list[str] = []
    for r in map(json.loads, path.read_text().splitlines()):
        raw = r["bare_ms"] or r["device_ms"]
        raw_name = "bare diffusers call" if r["bare_ms"] else "pool device stage"
        over = r["network_ms"] - r["direct_ms"]
        lines += [
            f"**{r['setup']}**: {r['model']}, {r['size']}×{r['size']}, {r['steps']} step(s), on {r['device']} "
            f"({r['cores']} cores, Python {r['python']}, torch {r['torch']}), {r['date']}; "
            f"median of {r['repeats']} jobs each, alternating; PNG {r['png_bytes'] / 1000:.0f} kB.",
            "",
            "| one job at a time | ms | ÷ direct `pool.run` |",
            "|---|---|---|",
        ]
        if r["bare_ms"]:
            lines.append(
                f"| bare diffusers call (raw inference, PIL out) | {r['bare_ms']} | {r['bare_ms'] / r['direct_ms']:.2f} |"
            )
        lines += [
            f"| direct `await pool.run` (device {r['device_ms']} + output stage {r['encode_ms']}) | {r['direct_ms']} | 1.00 |",
            f"| `POST /text-to-image` through requester → worker | {r['network_ms']} | {r['network_ms'] / r['direct_ms']:.2f} |",
            f"| the worker's `run_ms` in the signed receipt | {r['receipt_run_ms']} | {r['receipt_run_ms'] / r['direct_ms']:.2f} |",
            "",
            f"Network + protocol overhead: {over:.1f} ms (medians; median of paired differences "
            f"{r['paired_overhead_ms']} ms) = **{100 * over / raw:.1f} %** of the {raw_name} ({raw} ms). "
            f"An authenticated `GET /v1/node` on the requester takes {r['rpc_get_ms']} ms.",
        ]  # fmt: skip
        if b := r["breakdown_ms"]:
            lines += [
                "",
                f"Measured inside the same jobs (probe stamps): the network job minus the worker's own `pool.run` "
                f"is **{b['overhead']} ms = {100 * b['overhead'] / raw:.1f} %** of the {raw_name}.",
                "",
                "| part of a network job (probe stamps, medians) | ms |",
                "|---|---|",
                f"| RPC: HTTP + FastAPI + JSON in the requester, outside `run_job` | {b['rpc']} |",
                f"| before the run: open stream, QuoteRequest → Quote → Accept, request check | {b['before_run']} |",
                f"| worker `pool.run`: device stage {b['device']} + output stage {b['encode']} + queue/threads | {b['pool_run']} |",
                f"| after the run: receipt signed, Result sent, receipt checked by the requester | {b['after_run']} |",
                f"| output transfer ({r['png_bytes'] / 1000:.0f} kB, chunked, sha256 checked) | {b['transfer']} |",
                f"| after the transfer: outcome checks, back to the RPC handler | {b['after_transfer']} |",
            ]  # fmt: skip
        if f := r.get("fine_ms"):
            lines += ["", "| finer parts of a network job (probe stamps, medians) | ms |", "|---|---|"]
            lines += [f"| {FINE_PARTS[key]} | {f[key]} |" for key in FINE_PARTS]
            lines.append(f"| sum of the finer parts but `pool.run` | {round(sum(f[key] for key in FINE_PARTS), 2)} |")
            spares = r.get("spare_stream_ttl_s", "default")
            lines += [
                "",
                f"Spare job streams (`spare_stream_ttl_s` {spares}): "
                f"{f.get('jobs_on_spares', 0)} of {r['repeats']} timed jobs ran on a stream opened ahead.",
            ]
        lines += [
            "",
            f"Jobs per second, tiny-sdxl {r['stream_size']}×{r['stream_size']}, 1 step, {r['stream_jobs']} jobs, "
            f"{r['concurrency']} in flight: direct `pool.run` {r['direct_jobs_per_s']}/s, through the network "
            f"{r['network_jobs_per_s']}/s ({r['network_jobs_per_s'] / r['direct_jobs_per_s']:.2f}× direct)"
            + (
                f"; {r['network_failures']} network jobs failed: {r['first_failure']}"
                if r.get("network_failures")
                else ""
            )
            + ".",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "node":
        return node_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=("cpu", "gpu", "report"))
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-e2e.jsonl"))
    parser.add_argument("--smoke", action="store_true", help="the gpu setup with tiny modules on the CPU")
    parser.add_argument("--repeats", type=int, help="timed jobs (default: the setup's)")
    args = parser.parse_args(argv)
    if args.what == "report":
        print(report(args.file or args.out))
        return 0
    setup = SETUPS["smoke" if args.smoke else args.what]
    if args.repeats:
        setup = dataclasses.replace(setup, repeats=args.repeats)
    trio.run(bench, setup, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
