#!/usr/bin/env python3
"""How long a *new* capability advert takes to reach every node.

Every node here runs the production node logic (``serve_node``: gossip, gate,
directory, dialer); only where the nodes live differs.

* **libp2p**: N real nodes on 127.0.0.1. Hosts in one Python process share one
  core and slow each other down (design notes, "Verified facts"), so the nodes
  are spread over worker processes: this script run again with ``--worker``,
  driven through its stdin/stdout as JSON lines. Every node bootstraps to node
  0 and one other random node, mDNS off; the dialer then adds connections as
  it would in production (up to ``--libp2p-max-connections``). Times are
  ``time.monotonic()``, which on Linux is one clock for every process, taken
  in the publishing node's ``publish()`` call and in each receiver's directory
  observer. Baseline: one raw gossipsub hop between two bare libp2p hosts in
  two processes, same payload size, same run.
* **memory**: N nodes on the in-memory network under trio's autojump
  MockClock, ``LatencyModel.home_internet()``, each node dialing a few random
  earlier nodes (connected by construction). Times are virtual seconds.
  Baseline: the flooding optimum, i.e. the shortest-path delay (Dijkstra over
  the links' one-way delays) from the publisher to its farthest node.

Method, both backends: start the nodes, wait until every directory holds
every other node, let connections settle, then run ``--rounds`` measurement
rounds. Each round pokes one publisher (rotating) for a fresh advert and
waits until every other node has admitted that advert (peer id and seq) into
its directory, or the round times out. Per advert we keep the time from
publish to the last node; the table shows p50/p95/max over adverts
(nearest-rank percentiles) and the median of all single arrivals.

    python bench/gossip.py                        # everything, Markdown table
    python bench/gossip.py --libp2p 20 --memory 100 --rounds 10 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import heapq
import itertools
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

import trio
import trio.testing
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import Offer
from lpnode.node.network.base import (
    ByteStream,
    ConnectionEvent,
    GossipMessage,
    GossipValidator,
    Network,
    StreamHandler,
)
from lpnode.node.network.libp2p import Libp2pConfig, Libp2pNetwork, open_libp2p_network
from lpnode.node.network.memory import LatencyModel, MemoryHub, open_memory_hub
from lpnode.protocol import CapabilityAdvert, GpuInfo, ModelOffer, NodeKey, SignedEnvelope, decode, sign_advert

RAW_TOPIC = "lpnode/bench/raw/1"
DEBUG_LOGGERS: list[str] = []  # --debug-logger, passed on to workers
PING_TIMEOUT_S: list[float] = []  # --ping-timeout, passed on to workers
SCRIPT = os.path.abspath(__file__)  # workers are this script again
LOOPBACK = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)  # health checks: node defaults
VIRTUAL_EPOCH_S = 1_800_000_000.0  # the memory run's wall clock is this plus trio time

# An advert of realistic size: one GPU and two models (~0.5 KB signed).
GPUS = (GpuInfo(name="NVIDIA GeForce RTX 4090", kind="cuda", vram_total_bytes=24 << 30, vram_free_bytes=20 << 30),)
MODELS = tuple(
    ModelOffer(
        pipeline=pipeline,
        model_id=model,
        weights_sha256="ab" * 32,
        warm=True,
        speed_mpx_steps_per_s=12.5,
        price_per_mpx_step=100,
    )
    for pipeline, model in (("text-to-image", "sdxl-turbo"), ("upscale", "realesrgan-x4"))
)
OFFER = Offer(gpus=GPUS, models=MODELS, queue_depth=0, queue_capacity=4)


def bench_key(index: int) -> NodeKey:
    return NodeKey(sha256(f"lpnode-bench/{index}".encode()).digest())


def _static_offer() -> Offer:
    return OFFER


# --------------------------------------------------------------------------- results


@dataclass
class Propagation:
    """One measured advert (or raw message)."""

    publisher: int
    reached: int  # receivers that admitted it, of expected
    expected: int
    last_s: float | None  # publish -> the last receiver admitted it; None if one never did
    arrivals_s: list[float]  # publish -> each receiver, sorted
    poke_to_publish_s: float | None = None  # how long the publisher took to act on the poke
    baseline_s: float | None = None  # memory: the shortest-path optimum for this publisher


@dataclass
class RunResult:
    backend: str  # "libp2p", "libp2p raw hop", "memory"
    nodes: int
    processes: int
    rounds: list[Propagation]
    wall_s: float  # the whole run, start to teardown
    notes: dict[str, Any] = field(default_factory=dict)

    def last_times(self) -> list[float]:
        return sorted(r.last_s for r in self.rounds if r.last_s is not None)

    def summary(self) -> dict[str, Any]:
        last = self.last_times()
        arrivals = sorted(a for r in self.rounds for a in r.arrivals_s)
        return {
            "complete": len(last),
            "rounds": len(self.rounds),
            "p50_s": _percentile(last, 0.50),
            "p95_s": _percentile(last, 0.95),
            "max_s": last[-1] if last else None,
            "median_arrival_s": _percentile(arrivals, 0.50),
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _publishers(nodes: int, rounds: int) -> list[int]:
    """Rotating publishers, spread over the node indices when there are more nodes than rounds."""
    return [(r * nodes) // rounds if nodes > rounds else r % nodes for r in range(rounds)]


# --------------------------------------------------------------------------- shared plumbing


class TimedNetwork:
    """A Network that reports each publish (time, payload) before passing it on.

    The node never learns it is wrapped; this is how the benchmark knows the
    exact moment and seq of each advert without touching node code.
    """

    def __init__(self, inner: Network, now: Callable[[], float], on_publish: Callable[[float, bytes], None]) -> None:
        self._inner = inner
        self._now = now
        self._on_publish = on_publish

    @property
    def local_peer(self) -> str:
        return self._inner.local_peer

    def listen_addrs(self) -> list[str]:
        return self._inner.listen_addrs()

    def connected_peers(self) -> frozenset[str]:
        return self._inner.connected_peers()

    async def connect(self, addr: str) -> str:
        return await self._inner.connect(addr)

    async def publish(self, topic: str, data: bytes) -> None:
        self._on_publish(self._now(), data)
        await self._inner.publish(topic, data)

    def subscribe(
        self, topic: str, validator: GossipValidator | None = None, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        return self._inner.subscribe(topic, validator, buffer=buffer)

    def topic_peers(self, topic: str) -> frozenset[str]:
        return self._inner.topic_peers(topic)

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        return self._inner.connection_events(buffer=buffer)

    async def open_stream(self, peer: str, protocol_id: str, addrs: Sequence[str] = ()) -> ByteStream:
        return await self._inner.open_stream(peer, protocol_id, addrs)

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        self._inner.set_stream_handler(protocol_id, handler)


def advert_seq(data: bytes) -> int:
    """The seq of a signed advert we published ourselves (no signature check needed)."""
    return decode(decode(data, SignedEnvelope).payload, CapabilityAdvert).seq


class Board:
    """What the measurement has seen so far: publishes and arrivals, and a wake-up on each."""

    def __init__(self) -> None:
        self.published: dict[int, list[tuple[float, int]]] = {}  # node -> [(time, seq)]
        self.arrivals: dict[tuple[str, int], dict[int, float]] = {}  # (peer, seq) -> {node: time}
        self.failure: str | None = None
        self._changed = trio.Event()

    def record_publish(self, node: int, seq: int, t: float) -> None:
        self.published.setdefault(node, []).append((t, seq))
        self._pulse()

    def record_arrival(self, node: int, peer: str, seq: int, t: float) -> None:
        self.arrivals.setdefault((peer, seq), {})[node] = t
        self._pulse()

    def fail(self, why: str) -> None:
        self.failure = why
        self._pulse()

    def first_publish_after(self, node: int, t: float) -> tuple[float, int] | None:
        return next(((tp, seq) for tp, seq in self.published.get(node, ()) if tp >= t), None)

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.failure is not None:
                raise RuntimeError(self.failure)
            await self._changed.wait()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


async def measure_round(
    board: Board,
    *,
    publisher: int,
    peer: str,
    receivers: int,
    now: Callable[[], float],
    trigger: Callable[[], Awaitable[None]],
    timeout_s: float,
) -> Propagation:
    """Trigger one fresh publication and wait until ``receivers`` nodes admitted it."""
    t_trigger = now()
    await trigger()
    published: tuple[float, int] | None = None
    arrived: dict[int, float] = {}
    with trio.move_on_after(timeout_s):
        await board.until(lambda: board.first_publish_after(publisher, t_trigger) is not None)
        published = board.first_publish_after(publisher, t_trigger)
        assert published is not None
        arrived = board.arrivals.setdefault((peer, published[1]), {})
        await board.until(lambda: len(arrived) >= receivers)
    if published is None:
        return Propagation(publisher=publisher, reached=0, expected=receivers, last_s=None, arrivals_s=[])
    t_pub = published[0]
    times = sorted(t - t_pub for t in arrived.values())
    return Propagation(
        publisher=publisher,
        reached=len(times),
        expected=receivers,
        last_s=times[-1] if len(times) >= receivers else None,
        arrivals_s=times,
        poke_to_publish_s=t_pub - t_trigger,
    )


def bench_config(**changes: Any) -> NodeConfig:
    return NodeConfig(**changes).validate()


# --------------------------------------------------------------------------- libp2p: worker side


class _Emitter:
    """JSON lines to stdout, the worker's only channel back to the controller."""

    def __call__(self, **event: Any) -> None:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()


async def _read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[dict[str, Any]]:
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


async def _worker(args: argparse.Namespace) -> None:
    """One worker process: ``--count`` nodes (or raw hosts), driven by JSON commands on stdin."""
    emit = _Emitter()
    indices = range(args.first, args.first + args.count)
    # stdin EOF (the controller died or is done) ends the worker: no orphans
    commands = _read_lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
    async with AsyncExitStack() as stack:
        raw: dict[int, Libp2pNetwork] = {}
        nets: dict[int, Network] = {}
        for i in indices:
            libp2p = dataclasses.replace(LOOPBACK, ping_timeout_s=args.ping_timeout or LOOPBACK.ping_timeout_s)
            raw[i] = await stack.enter_async_context(open_libp2p_network(bench_key(i), libp2p))
            nets[i] = TimedNetwork(raw[i], time.monotonic, functools.partial(_on_publish, emit, i, args.role))
            emit(ev="listening", node=i, addrs=[a for a in raw[i].listen_addrs() if "/127.0.0.1/" in a])
        start = await anext(commands)
        assert start["cmd"] == "start", start
        bootstrap: dict[str, list[str]] = start["bootstrap"]
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes: dict[int, Node] = {}
        if args.role == "node":
            config = {
                i: bench_config(bootstrap=tuple(bootstrap.get(str(i), ())), max_connections=args.libp2p_max_connections)
                for i in indices
            }
            for i in indices:
                node: Node = await nursery.start(
                    functools.partial(serve_node, config[i], bench_key(i), nets[i], _static_offer)
                )
                node.gossip_stats.observers.append(functools.partial(_on_advert, emit, i))
                nodes[i] = node
                nursery.start_soon(_report_converged, emit, i, node, args.total)
        else:
            for i in indices:
                await nursery.start(_serve_raw, emit, i, nets[i], tuple(bootstrap.get(str(i), ())))
        async for command in commands:
            if command["cmd"] == "poke":
                nodes[command["node"]].publisher.poke()
            elif command["cmd"] == "publish":  # raw hosts: one message tagged with the round
                payload = command["seq"].to_bytes(8, "big") + b"\0" * (command["size"] - 8)
                await nets[command["node"]].publish(RAW_TOPIC, payload)
            elif command["cmd"] == "status":
                for i, node in nodes.items():
                    emit(
                        ev="status",
                        node=i,
                        connections=len(node.network.connected_peers()),
                        peers=len(node.directory),
                        published=node.gossip_stats.published,
                        dropped=dict(node.gossip_stats.dropped),
                        net=raw[i].stats(),
                    )
                emit(ev="status_done")
            elif command["cmd"] == "quit":
                break
        else:
            # stdin closed without "quit": the controller is gone, so nobody waits for a clean close
            os._exit(1)
        nursery.cancel_scope.cancel()


def _on_publish(emit: _Emitter, node: int, role: str, t: float, data: bytes) -> None:
    seq = advert_seq(data) if role == "node" else int.from_bytes(data[:8], "big")
    emit(ev="published", node=node, seq=seq, t=t)


def _on_advert(emit: _Emitter, node: int, advert: CapabilityAdvert) -> None:
    emit(ev="arrived", node=node, peer=advert.peer_id, seq=advert.seq, t=time.monotonic())


async def _report_converged(emit: _Emitter, index: int, node: Node, total: int) -> None:
    while len(node.directory) < total - 1:
        await node.directory.wait_changed()
    emit(ev="converged", node=index)


async def _serve_raw(
    emit: _Emitter,
    index: int,
    net: Network,
    bootstrap: tuple[str, ...],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A bare host: subscribe without validator, report each message as it is delivered."""
    async with net.connection_events() as events, net.subscribe(RAW_TOPIC) as messages:
        for addr in bootstrap:
            await net.connect(addr)
        task_status.started()
        # ready once the other side's subscription is known: a publish before that reaches nobody
        async for _event in events:
            if net.topic_peers(RAW_TOPIC):
                break
        emit(ev="converged", node=index)
        async for msg in messages:
            seq = int.from_bytes(msg.data[:8], "big")
            emit(ev="arrived", node=index, peer=msg.origin, seq=seq, t=time.monotonic())


# --------------------------------------------------------------------------- libp2p: controller side


@dataclass
class _Worker:
    process: trio.Process
    nodes: range


class Cluster:
    """Worker processes hosting ``n`` nodes; commands go out on stdin, events come back on stdout."""

    def __init__(self, n: int, processes: int, role: str, max_connections: int, log_level: str) -> None:
        self.n = n
        self.role = role
        self.board = Board()
        self.listening: dict[int, list[str]] = {}
        self.converged: set[int] = set()
        self.status: dict[int, dict[str, Any]] = {}
        self.status_done = 0
        self._workers: list[_Worker] = []
        self._processes = processes
        self._max_connections = max_connections
        self._log_level = log_level
        self._debug_loggers = tuple(DEBUG_LOGGERS)

    def worker_of(self, node: int) -> _Worker:
        return next(w for w in self._workers if node in w.nodes)

    async def send(self, worker: _Worker, **command: Any) -> None:
        assert worker.process.stdin is not None
        await worker.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def broadcast(self, **command: Any) -> None:
        for worker in self._workers:
            await self.send(worker, **command)

    async def run(self, nursery: trio.Nursery) -> None:
        """Spawn the workers; return once every node listens."""
        bounds = [round(p * self.n / self._processes) for p in range(self._processes + 1)]
        for first, end in itertools.pairwise(bounds):
            command = [
                sys.executable,
                SCRIPT,
                "--worker",
                f"--role={self.role}",
                f"--first={first}",
                f"--count={end - first}",
                f"--total={self.n}",
                f"--libp2p-max-connections={self._max_connections}",
                f"--log-level={self._log_level}",
                *(f"--debug-logger={name}" for name in self._debug_loggers),
                *([f"--ping-timeout={PING_TIMEOUT_S[0]}"] if PING_TIMEOUT_S else []),
            ]
            process: trio.Process = await nursery.start(
                functools.partial(trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False)
            )
            worker = _Worker(process, range(first, end))
            self._workers.append(worker)
            nursery.start_soon(self._read_events, worker)
        await self.board.until(lambda: len(self.listening) == self.n)

    async def aclose(self) -> None:
        """Ask every worker to quit; kill whoever has not within a few seconds."""
        with trio.CancelScope(shield=True):
            for worker in self._workers:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.send(worker, cmd="quit")
            with trio.move_on_after(10):
                for worker in self._workers:
                    await worker.process.wait()
            for worker in self._workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()

    async def _read_events(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        async for event in _read_lines(worker.process.stdout):
            kind = event["ev"]
            if kind == "listening":
                self.listening[event["node"]] = event["addrs"]
            elif kind == "converged":
                self.converged.add(event["node"])
            elif kind == "published":
                self.board.record_publish(event["node"], event["seq"], event["t"])
                continue
            elif kind == "arrived":
                self.board.record_arrival(event["node"], event["peer"], event["seq"], event["t"])
                continue
            elif kind == "status":
                self.status[event["node"]] = event
            elif kind == "status_done":
                self.status_done += 1
            self.board._pulse()
        self.board.fail(f"worker for nodes {worker.nodes.start}..{worker.nodes.stop - 1} exited")

    async def collect_status(self) -> dict[int, dict[str, Any]]:
        self.status_done = 0
        await self.broadcast(cmd="status")
        with trio.move_on_after(30):  # an overloaded worker answers late; report what came
            await self.board.until(lambda: self.status_done == len(self._workers))
        return dict(self.status)


async def run_libp2p(
    n: int, *, processes: int, rounds: int, max_connections: int, seed: int, log_level: str
) -> RunResult:
    wall0 = time.perf_counter()
    rng = random.Random(seed)
    cluster = Cluster(n, processes, "node", max_connections, log_level)
    peers = [bench_key(i).peer_id for i in range(n)]
    notes: dict[str, Any] = {
        "max_connections": max_connections,
        "ping_timeout_s": PING_TIMEOUT_S[0] if PING_TIMEOUT_S else LOOPBACK.ping_timeout_s,
        "load_average_at_start": os.getloadavg()[0],
    }
    results: list[Propagation] = []
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(60):
                await cluster.run(nursery)
            # everyone bootstraps to node 0 and one random other node
            bootstrap: dict[str, list[str]] = {}
            for i in range(1, n):
                targets = {0, rng.choice([j for j in range(n) if j != i])}
                bootstrap[str(i)] = [cluster.listening[j][0] for j in sorted(targets)]
            t_start = time.monotonic()
            await cluster.broadcast(cmd="start", bootstrap=bootstrap)
            with trio.fail_after(60):
                await cluster.board.until(lambda: len(cluster.converged) == n)
            notes["converged_after_s"] = time.monotonic() - t_start
            _progress(f"libp2p N={n}: directories complete after {notes['converged_after_s']:.1f} s")
            notes["connections_per_node"] = await _settle(cluster)
            _progress(f"libp2p N={n}: {notes['connections_per_node']:.1f} connections per node")
            try:
                for r, publisher in enumerate(_publishers(n, rounds)):
                    worker = cluster.worker_of(publisher)
                    result = await measure_round(
                        cluster.board,
                        publisher=publisher,
                        peer=peers[publisher],
                        receivers=n - 1,
                        now=time.monotonic,
                        trigger=functools.partial(cluster.send, worker, cmd="poke", node=publisher),
                        timeout_s=10,
                    )
                    results.append(result)
                    _progress(f"libp2p N={n} round {r + 1}/{rounds}: {_fmt(result.last_s)}")
                    await trio.sleep(0.25)  # let duplicates and IHAVE/IWANT of this round die down
                status = await cluster.collect_status()
                dropped: Counter[str] = Counter()
                for s in status.values():
                    dropped.update(s["dropped"])
                notes["dropped"] = dict(dropped)
                notes["published"] = sum(s["published"] for s in status.values())
                notes["dropped_slow_subscriber"] = sum(
                    s["net"].get("gossip_dropped_slow_subscriber", 0) for s in status.values()
                )
            except RuntimeError as exc:
                # a worker died (py-libp2p can take a whole host down): keep the rounds measured so far
                notes["failure"] = str(exc)
                _progress(f"libp2p N={n}: {exc}")
        finally:
            await cluster.aclose()
            nursery.cancel_scope.cancel()
    return RunResult("libp2p", n, processes, results, time.perf_counter() - wall0, notes)


async def _settle(cluster: Cluster) -> float:
    """Wait until the dialer stops adding connections (or 20 s); return connections per node.

    Each new connection makes both ends re-advertise, so measuring while the
    mesh still grows would mix those adverts into the rounds.
    """
    last: list[int] = []
    with trio.move_on_after(20):
        while True:
            status = await cluster.collect_status()
            counts = sorted(s["connections"] for s in status.values())
            if counts == last:
                break
            last = counts
            await trio.sleep(2)
    return sum(last) / max(1, len(last))


async def run_raw_hop(*, rounds: int, payload_bytes: int, log_level: str) -> RunResult:
    """Baseline: one gossipsub hop between two bare hosts in two processes."""
    wall0 = time.perf_counter()
    cluster = Cluster(2, 2, "raw", 0, log_level)
    peers = [bench_key(i).peer_id for i in range(2)]
    results: list[Propagation] = []
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(60):
                await cluster.run(nursery)
                await cluster.broadcast(cmd="start", bootstrap={"1": cluster.listening[0][:1]})
                await cluster.board.until(lambda: len(cluster.converged) == 2)
            await trio.sleep(1.5)  # past one heartbeat: the mesh is grafted, as in the node runs
            for r in range(rounds):
                publisher = r % 2
                worker = cluster.worker_of(publisher)
                result = await measure_round(
                    cluster.board,
                    publisher=publisher,
                    peer=peers[publisher],
                    receivers=1,
                    now=time.monotonic,
                    trigger=functools.partial(
                        cluster.send, worker, cmd="publish", node=publisher, seq=r, size=payload_bytes
                    ),
                    timeout_s=10,
                )
                results.append(result)
                await trio.sleep(0.1)
        finally:
            await cluster.aclose()
            nursery.cancel_scope.cancel()
    return RunResult("libp2p raw hop", 2, 2, results, time.perf_counter() - wall0, {"payload_bytes": payload_bytes})


# --------------------------------------------------------------------------- memory backend


def run_memory(n: int, *, rounds: int, degree: int, max_connections: int, seed: int) -> RunResult:
    wall0 = time.perf_counter()
    clock = trio.testing.MockClock(autojump_threshold=0)
    result = trio.run(
        functools.partial(_memory, n, rounds=rounds, degree=degree, max_connections=max_connections, seed=seed),
        clock=clock,
    )
    result.wall_s = time.perf_counter() - wall0
    return result


def _virtual_wall_clock() -> float:
    return VIRTUAL_EPOCH_S + trio.current_time()


async def _memory(n: int, *, rounds: int, degree: int, max_connections: int, seed: int) -> RunResult:
    wall0 = time.perf_counter()
    rng = random.Random(seed)
    board = Board()
    measuring = False
    notes: dict[str, Any] = {"degree": degree, "max_connections": max_connections}
    # adverts only when poked (and on new neighbours): the rounds, not the periodic
    # refresh, are what is measured, and 1000 nodes each verifying every refresh is slow
    config = bench_config(
        listen=("/memory/0",), mdns=False, advert_interval_s=300, advert_ttl_s=600, max_connections=max_connections
    )

    def on_publish(index: int, t: float, data: bytes) -> None:
        if measuring:
            board.record_publish(index, advert_seq(data), t)

    def on_advert(index: int, advert: CapabilityAdvert) -> None:
        if measuring:
            board.record_arrival(index, advert.peer_id, advert.seq, trio.current_time())

    async with open_memory_hub(latency=LatencyModel.home_internet(), seed=seed) as hub, AsyncExitStack() as stack:
        nets: list[Network] = []
        for i in range(n):
            inner = await stack.enter_async_context(hub.open_network(bench_key(i)))
            nets.append(TimedNetwork(inner, trio.current_time, functools.partial(on_publish, i)))
        async with trio.open_nursery() as dials:  # all links come up at once, as in a running network
            for i in range(1, n):
                for j in rng.sample(range(i), min(i, degree)):
                    dials.start_soon(nets[i].connect, nets[j].listen_addrs()[0])
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes: list[Node] = []
        for i in range(n):
            start = functools.partial(
                serve_node, config, bench_key(i), nets[i], _static_offer, wall_clock=_virtual_wall_clock
            )
            node: Node = await nursery.start(start)
            node.gossip_stats.observers.append(functools.partial(on_advert, i))
            nodes.append(node)
        t0 = trio.current_time()
        with trio.fail_after(300):
            for node in nodes:
                while len(node.directory) < n - 1:
                    await node.directory.wait_changed()
        notes["converged_after_virtual_s"] = trio.current_time() - t0
        notes["converged_after_wall_s"] = time.perf_counter() - wall0
        await hub.wait_idle()
        notes["links"] = sum(len(net.connected_peers()) for net in nets) // 2
        wall_rounds = time.perf_counter()
        measuring = True
        results: list[Propagation] = []
        peers = [net.local_peer for net in nets]
        for r, publisher in enumerate(_publishers(n, rounds)):
            await trio.sleep(1.0)  # past advert_min_gap_s of any earlier publication
            result = await measure_round(
                board,
                publisher=publisher,
                peer=peers[publisher],
                receivers=n - 1,
                now=trio.current_time,
                trigger=functools.partial(_poke, nodes[publisher]),
                timeout_s=30,
            )
            result.baseline_s = _flood_optimum(hub, nets, publisher)
            results.append(result)
            await hub.wait_idle()
            _progress(f"memory N={n} round {r + 1}/{rounds}: {_fmt(result.last_s)} (optimum {_fmt(result.baseline_s)})")
        notes["rounds_wall_s"] = time.perf_counter() - wall_rounds
        notes["dropped"] = sum(node.gossip_stats.dropped.total() for node in nodes)
        notes["hub"] = asdict(hub.stats)
        nursery.cancel_scope.cancel()
    return RunResult("memory", n, 1, results, 0.0, notes)


async def _poke(node: Node) -> None:
    node.publisher.poke()
    await trio.lowlevel.checkpoint()


def _flood_optimum(hub: MemoryHub, nets: Sequence[Network], source: int) -> float:
    """Shortest-path delay from ``source`` to its farthest node over the current links (Dijkstra)."""
    index = {net.local_peer: i for i, net in enumerate(nets)}
    best = [math.inf] * len(nets)
    best[source] = 0.0
    queue = [(0.0, source)]
    while queue:
        d, i = heapq.heappop(queue)
        if d > best[i]:
            continue
        here = nets[i].local_peer
        for peer in nets[i].connected_peers():
            j = index[peer]
            candidate = d + hub.link_delay(here, peer)
            if candidate < best[j]:
                best[j] = candidate
                heapq.heappush(queue, (candidate, j))
    return max(best)


# --------------------------------------------------------------------------- report


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(results: Sequence[RunResult]) -> str:
    hop = next((r for r in results if r.backend == "libp2p raw hop"), None)
    hop_p50 = hop.summary()["p50_s"] if hop else None
    lines = [
        "| backend | N | procs | complete | p50 to all | p95 to all | max to all | median arrival | p50 vs baseline | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        if r.backend == "memory":
            optimum = sorted(p.baseline_s for p in r.rounds if p.baseline_s is not None)
            base = _percentile(optimum, 0.5)
            ratio = f"{s['p50_s'] / base:.2f}× flood optimum ({_fmt(base)})" if s["p50_s"] and base else "—"
            unit = " (virtual)"
        elif r.backend == "libp2p":
            ratio = f"{s['p50_s'] / hop_p50:.1f}× raw hop" if s["p50_s"] and hop_p50 else "—"
            unit = ""
        else:
            ratio = "1× (baseline)"
            unit = ""
        lines.append(
            f"| {r.backend}{unit} | {r.nodes} | {r.processes} | {s['complete']}/{s['rounds']} | {_fmt(s['p50_s'])} "
            f"| {_fmt(s['p95_s'])} | {_fmt(s['max_s'])} | {_fmt(s['median_arrival_s'])} | {ratio} | {r.wall_s:.1f} s |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        # the machine may be shared: other work running beside the benchmark skews real-time figures
        "load_average_1_5_15": os.getloadavg(),
        "platform": platform.platform(),
    }


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- entry point


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()] if text.strip() else []


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libp2p", type=_sizes, default=[5, 20], help="libp2p network sizes (default 5,20; '' skips)")
    parser.add_argument("--memory", type=_sizes, default=[100, 1000], help="in-memory sizes (default 100,1000)")
    parser.add_argument("--rounds", type=int, default=20, help="fresh adverts measured per size (default 20)")
    parser.add_argument("--nodes-per-process", type=int, default=5, help="libp2p nodes per worker (default 5)")
    parser.add_argument(
        "--libp2p-max-connections",
        type=int,
        default=NodeConfig.max_connections,
        help=f"dialer bound for libp2p nodes (default {NodeConfig.max_connections}, the node's default)",
    )
    # Each memory node dials 3 random earlier nodes: ~6 links per node, gossipsub's mesh degree
    # (the memory network floods to every connected subscriber, so links play the mesh). The
    # dialer bound equals it so the dialer stays idle: each extra link makes both ends
    # re-advertise, and at N=1000 that churn, not the rounds, would eat the wall time.
    parser.add_argument("--memory-degree", type=int, default=3, help="random earlier nodes each memory node dials")
    parser.add_argument("--memory-max-connections", type=int, default=3, help="dialer bound for memory nodes")
    parser.add_argument(
        "--ping-timeout",
        type=float,
        default=None,
        help=f"libp2p health-check ping timeout in s (default {LOOPBACK.ping_timeout_s}, the node's; a failed ping drops the connection)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write every figure and per-round detail here")
    parser.add_argument("--log-level", default="error", help="log level of the node processes (default error)")
    parser.add_argument(
        "--debug-logger", action="append", default=[], metavar="NAME", help="log NAME at debug level (repeatable)"
    )
    # worker mode: started by the controller, not by hand
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("node", "raw"), default="node", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.nodes_per_process < 1:
        parser.error("--rounds and --nodes-per-process must be at least 1")
    if any(n < 2 for n in (*args.libp2p, *args.memory)):
        parser.error("network sizes must be at least 2")
    return args


def advert_bytes() -> int:
    key = bench_key(0)
    advert = CapabilityAdvert(
        peer_id=key.peer_id,
        seq=1_800_000_000_000,
        issued_at_ms=1_800_000_000_000,
        expires_at_ms=1_800_000_030_000,
        listen_addrs=(f"/ip4/127.0.0.1/tcp/40000/p2p/{key.peer_id}",),
        software_version="0.1.0",
        protocol_version=1,
        gpus=GPUS,
        models=MODELS,
        queue_depth=0,
        queue_capacity=4,
    )
    return len(sign_advert(key, advert))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(name)s: %(message)s")
    # py-libp2p detaches its loggers and prints warnings through logging's last resort;
    # route them through ours so --log-level governs them too
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.propagate = True
    libp2p_logger.setLevel(args.log_level.upper())
    for name in args.debug_logger:
        logging.getLogger(name).setLevel(logging.DEBUG)
    DEBUG_LOGGERS.extend(args.debug_logger)
    if args.ping_timeout:
        PING_TIMEOUT_S.append(args.ping_timeout)
    if args.worker:
        trio.run(_worker, args)
        return
    results: list[RunResult] = []
    if args.libp2p:
        size = advert_bytes()
        results.append(
            trio.run(functools.partial(run_raw_hop, rounds=args.rounds, payload_bytes=size, log_level=args.log_level))
        )
        for n in args.libp2p:
            processes = min(n, max(2, math.ceil(n / args.nodes_per_process)))
            run = functools.partial(
                run_libp2p,
                n,
                processes=processes,
                rounds=args.rounds,
                max_connections=args.libp2p_max_connections,
                seed=args.seed,
                log_level=args.log_level,
            )
            results.append(trio.run(run))
    for n in args.memory:
        results.append(
            run_memory(
                n,
                rounds=args.rounds,
                degree=args.memory_degree,
                max_connections=args.memory_max_connections,
                seed=args.seed,
            )
        )
    info = machine()
    load = ", ".join(f"{x:.1f}" for x in info["load_average_1_5_15"])
    print(
        f"Gossip propagation, {info['date']}, {info['cpus']} × {info['cpu_model']}, Python {info['python']},"
        f" load average at the end {load}\n"
    )
    print(markdown(results))
    for r in results:
        notes = {k: v for k, v in r.notes.items() if k != "hub"}
        print(f"\n{r.backend} N={r.nodes}: {json.dumps(notes)}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"machine": info, "argv": sys.argv, "results": [asdict(r) | {"summary": r.summary()} for r in results]},
                out,
                indent=1,
            )


if __name__ == "__main__":
    main()
