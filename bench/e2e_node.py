"""Inside each node process the bench launches: ``lpnode run`` with the bench preset and timing probes.

``python bench/e2e.py node --bench-preset=P --probe=F [--worker] -- <lpnode run arguments>`` lands in
``node_main``. The GPU model is bench/models.py's ``BenchSDXL`` (text encoders bypassed), registered
as a preset at runtime in each process that needs it: the product's registry has no random-weight
full-size preset, and should not.

The probes (``install_probes``) wrap, by name, the requester's ``run_job`` and ``receive_transfer``
and the worker's ``ModelPool.run`` and ``send_transfer`` (and the finer points ``e2e_probes.fine_split``
reads), appending ``time.monotonic()`` start/end stamps (one clock for every process on Linux) to a
JSON-lines file, one line a call, flushed at once.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

from e2e_setup import BENCH_MODEL, BENCH_MODEL_ID

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


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
    # An experiment's knob, not the product's: how long a thread may hold the GIL while another
    # (the event loop, when the model's thread runs Python) waits for it; CPython's default is 5 ms.
    if interval_ms := os.environ.get("LPNODE_BENCH_SWITCH_INTERVAL_MS"):
        sys.setswitchinterval(float(interval_ms) / 1000)
    register_bench_preset(args.bench_preset)
    install_probes(args.probe, args.worker)
    from lpnode.node.cli import main

    run = ["run", *[a for a in run_args if a != "--"]]
    # Where a node's time goes, by function: LPNODE_BENCH_PROFILE=<dir> writes <dir>/<worker|requester>.prof
    # (cProfile, the event loop's thread only) when the node stops; read it with pstats.
    if profile_dir := os.environ.get("LPNODE_BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        try:
            return int(profiler.runcall(main, run) or 0)
        finally:
            profiler.dump_stats(Path(profile_dir) / ("worker.prof" if args.worker else "requester.prof"))
    return main(run)
