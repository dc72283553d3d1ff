"""The libp2p backend: the same node stacks on real py-libp2p hosts over 127.0.0.1, spread over processes.

Tens of nodes, in real time: DESIGN.md measured that hosts sharing one Python
process share one core (N = 100 took 1.3 s per gossip round), so the nodes are
split over worker processes as ``bench/gossip.py`` does. The controller
(:func:`run_libp2p`) starts the workers, hands every node the addresses of
``degree`` earlier nodes as its bootstrap list, and collects what they report as
JSON lines on stdout: every advert admission and every finished job. The
workload is planned from the seed in every process; each runs the jobs of the
requesters it hosts. Churn and partitions are in-memory only (refused here).

    python -m lpnode.simnet run baseline --backend libp2p --scale 0.5 --processes 4
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.network.base import Network
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.protocol.advert import CapabilityAdvert
from lpnode.protocol.signing import NodeKey

from .gpus import profile
from .jobs import run_planned_job
from .metrics import JobRecord, Recorder, summarise
from .runner import Progress, SimResult, node_key
from .scenario import Scenario, ScenarioError, parse_scenario
from .stack import SimNode, WorkerSpec, serve_sim_node
from .workload import plan_jobs

LOOPBACK = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
START_GRACE_S = 5.0  # between "start" and the first job: bootstrap dials and first adverts
QUIT_GRACE_S = 15.0
DIRECTORY_GRACE_S = 60.0  # longest wait, after start-up, for every requester to know every worker


def _emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[dict[str, Any]]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def _workers(scenario: Scenario) -> list[WorkerSpec]:
    groups = [g for g in scenario.nodes for _ in range(g.count)]
    return [WorkerSpec(i, g, profile(g.gpu)) for i, g in enumerate(groups)]


# --------------------------------------------------------------------------- worker process


async def _worker_process(first: int, count: int) -> None:
    commands = _lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
    init = await anext(commands)
    scenario = parse_scenario(init["scenario"])
    specs = _workers(scenario)
    n_nodes = len(specs) + scenario.workload.requesters
    keys = [node_key(scenario.seed, i) for i in range(n_nodes)]
    peer_index = {k.peer_id: i for i, k in enumerate(keys)}
    mine = range(first, first + count)
    async with AsyncExitStack() as stack:
        nets = {i: await stack.enter_async_context(open_libp2p_network(keys[i], LOOPBACK)) for i in mine}
        for i, net in nets.items():
            _emit(ev="listening", node=i, addrs=[a for a in net.listen_addrs() if "/127.0.0.1/" in a])
        start = await anext(commands)
        t0 = 0.0  # unix seconds when the workload starts, the same in every process (set by "go")
        nursery = await stack.enter_async_context(trio.open_nursery())
        sims: dict[int, SimNode] = {}
        all_up = _Countdown(count)

        def observe(advert: CapabilityAdvert) -> None:
            now = time.time()
            _emit(ev="advert", peer=advert.peer_id, seq=advert.seq, delay=now - advert.issued_at_ms / 1000, t=now - t0)

        for i in mine:
            config = NodeConfig(
                listen=LOOPBACK.listen_addrs,
                mdns=False,
                bootstrap=tuple(start["bootstrap"].get(str(i), ())),
                advert_interval_s=scenario.advert_interval_s,
                advert_ttl_s=scenario.advert_ttl_s,
                max_connections=scenario.max_connections,
            ).validate()
            worker = specs[i] if i < len(specs) else None
            # all at once: each worker's pinned load takes real seconds
            nursery.start_soon(_start_node, sims, i, keys[i], nets[i], config, worker, scenario.seed, observe, all_up)
        await all_up.wait()
        # A requester that starts before the workers' first adverts reach it has no candidates: its
        # first jobs would fail for the start-up race, not for anything the scenario measures.
        worker_ids = frozenset(keys[w.index].peer_id for w in specs)
        requesters = [sims[i].node for i in mine if i >= len(specs)]
        with trio.move_on_after(DIRECTORY_GRACE_S):
            for node in requesters:
                while not worker_ids <= node.directory.peer_ids():
                    await node.directory.wait_changed()
        known = min((len(worker_ids & node.directory.peer_ids()) for node in requesters), default=len(worker_ids))
        _emit(ev="ready", nodes=count, workers_known=known)
        go = await anext(commands)
        t0 = float(go["t0"])

        async def one(job: Any, requester_index: int) -> None:
            record = await run_planned_job(
                job,
                sims[requester_index].node,
                scenario.workload,
                seed=scenario.seed,
                now_s=lambda: time.time() - t0,
                peer_index=peer_index,
            )
            _emit(ev="job", **dataclasses.asdict(record))

        async with trio.open_nursery() as jobs:
            for job in plan_jobs(scenario.workload, scenario.duration_s, scenario.seed):
                index = len(specs) + job.requester
                if index not in sims:
                    continue
                await trio.sleep(max(0.0, t0 + job.at_s - time.time()))
                jobs.start_soon(one, job, index)
        stats = [s.pool_stats for s in sims.values() if s.pool_stats is not None]
        flaky = sum(s.flaky.dropped for s in sims.values() if s.flaky is not None)
        _emit(
            ev="done",
            loads=sum(s.loads for s in stats),
            evictions=sum(s.evictions for s in stats),
            cheated=sum(s.cheated for s in stats),
            busy_s=sum(s.busy_s for s in stats),
            flaky=flaky,
        )
        async for command in commands:
            if command["cmd"] == "quit":
                break
        nursery.cancel_scope.cancel()


async def _start_node(
    sims: dict[int, SimNode],
    index: int,
    key: NodeKey,
    net: Network,
    config: NodeConfig,
    worker: WorkerSpec | None,
    seed: int,
    observe: Callable[[CapabilityAdvert], None],
    all_up: _Countdown,
) -> None:
    async with trio.open_nursery() as nursery:
        sims[index] = await nursery.start(
            functools.partial(
                serve_sim_node, key, net, config, worker, seed=seed, wall_clock=time.time, observe=observe
            )
        )
        all_up.done()


class _Countdown:
    """Set once ``count`` nodes have started."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._event = trio.Event()
        if count <= 0:
            self._event.set()

    def done(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


# --------------------------------------------------------------------------- controller


def check_supported(scenario: Scenario) -> None:
    if scenario.events or any(g.behaviour == "churn" for g in scenario.nodes):
        raise ScenarioError("the libp2p backend runs no churn and no partitions (use the in-memory backend)")


async def _control(scenario: Scenario, processes: int, progress: Callable[[Progress], None] | None) -> SimResult:
    wall0 = time.perf_counter()
    specs = _workers(scenario)
    n_nodes = len(specs) + scenario.workload.requesters
    rec = Recorder()
    for w in specs:
        rec.worker_gpu[w.index] = w.gpu.name
        rec.worker_behaviour[w.index] = w.group.behaviour
    listening: dict[int, list[str]] = {}
    ready: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    changed = trio.Event()
    t0 = 0.0
    counts = {"ok": 0, "failed": 0}

    async def read(process: trio.Process) -> None:
        nonlocal changed
        assert process.stdout is not None
        async for event in _lines(process.stdout):
            kind = event.pop("ev")
            if kind == "listening":
                listening[event["node"]] = event["addrs"]
            elif kind == "advert":
                rec.advert_arrived(event["peer"], event["seq"], event["delay"], event["t"], n_nodes)
            elif kind == "job":
                for name in ("attempt_outcomes", "attempt_details"):
                    event[name] = tuple(event[name])
                record = JobRecord(**event)
                rec.job_ended(record)
                counts["ok" if record.ok else "failed"] += 1
                if progress is not None:
                    progress(
                        Progress(
                            virtual_s=time.time() - t0,
                            total_s=scenario.duration_s,
                            submitted=len(rec.jobs),
                            completed=counts["ok"],
                            failed=counts["failed"],
                            online_workers=len(specs),
                            wall_s=time.perf_counter() - wall0,
                        )
                    )
            elif kind == "ready":
                ready.append(event)
            elif kind == "done":
                done.append(event)
            changed.set()
            changed = trio.Event()

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await changed.wait()

    init = json.dumps({"cmd": "init", "scenario": dataclasses.asdict(scenario)}).encode() + b"\n"
    bounds = [round(p * n_nodes / processes) for p in range(processes + 1)]
    procs: list[trio.Process] = []
    # py-libp2p prints tracebacks of routine teardown; the workers' stderr goes to a file, not the terminal
    log_path = Path(tempfile.gettempdir()) / f"simnet-libp2p-{os.getpid()}.log"
    rec.notes["worker_log"] = str(log_path)
    log = log_path.open("wb")
    async with trio.open_nursery() as nursery:
        for first, end in itertools.pairwise(bounds):
            command = [
                sys.executable,
                "-m",
                "lpnode.simnet.libp2p_backend",
                "--first",
                str(first),
                "--count",
                str(end - first),
            ]
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, check=False
                )
            )
            procs.append(process)
            nursery.start_soon(read, process)
            assert process.stdin is not None
            await process.stdin.send_all(init)
        with trio.fail_after(120):
            await until(lambda: len(listening) == n_nodes)
        rng = random.Random(f"{scenario.seed}/links")
        bootstrap = {
            str(i): [listening[j][0] for j in rng.sample(range(i), min(i, scenario.degree))] for i in range(1, n_nodes)
        }
        start = json.dumps({"cmd": "start", "bootstrap": bootstrap}).encode() + b"\n"
        for process in procs:
            assert process.stdin is not None
            await process.stdin.send_all(start)
        with trio.fail_after(120):
            await until(lambda: len(ready) == len(procs))
        rec.notes["started_wall_s"] = time.perf_counter() - wall0
        rec.notes["workers_known_at_start"] = min(r["workers_known"] for r in ready)
        t0 = time.time() + START_GRACE_S
        go = json.dumps({"cmd": "go", "t0": t0}).encode() + b"\n"
        for process in procs:
            assert process.stdin is not None
            await process.stdin.send_all(go)
        with trio.fail_after(START_GRACE_S + scenario.duration_s + scenario.workload.deadline_s + 120):
            await until(lambda: len(done) == len(procs))
        for process in procs:
            assert process.stdin is not None
            await process.stdin.send_all(b'{"cmd":"quit"}\n')
        with trio.move_on_after(QUIT_GRACE_S):
            for process in procs:
                await process.wait()
        for process in procs:
            if process.returncode is None:
                process.kill()
        nursery.cancel_scope.cancel()
    log.close()
    wall = time.perf_counter() - wall0
    rec.notes.update(
        backend="libp2p",
        processes=processes,
        wall_s=round(wall, 3),
        flaky_drops=sum(d["flaky"] for d in done),
        pools={
            "loads": sum(d["loads"] for d in done),
            "evictions": sum(d["evictions"] for d in done),
            "cheated_jobs": sum(d["cheated"] for d in done),
            "device_busy_s": round(sum(d["busy_s"] for d in done), 3),
        },
    )
    metrics = summarise(rec, duration_s=scenario.duration_s, workers=len(specs))
    metrics["scenario"] = {
        "name": scenario.name,
        "seed": scenario.seed,
        "workers": len(specs),
        "requesters": scenario.workload.requesters,
        "duration_s": scenario.duration_s,
        "backend": "libp2p",
    }
    return SimResult(scenario, metrics, rec, wall)


def run_libp2p(
    scenario: Scenario, *, processes: int = 4, progress: Callable[[Progress], None] | None = None
) -> SimResult:
    """Run ``scenario`` on real libp2p hosts in ``processes`` worker processes, in real time."""
    check_supported(scenario)
    return trio.run(_control, scenario, max(1, processes), progress)


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="a simnet libp2p worker process (started by run_libp2p)")
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    trio.run(_worker_process, args.first, args.count)


if __name__ == "__main__":
    _main()


__all__ = ["check_supported", "run_libp2p"]
