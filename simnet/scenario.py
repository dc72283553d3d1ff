"""Scenarios: what a simulation runs, read from TOML (``simnet/scenarios/*.toml``).

A scenario names groups of nodes (count × GPU profile × behaviour × served
models), the requesters' workload, the network's latency and loss, timed events
(partition, heal) and a seed. Every field has a default, so a file says only
what makes the scenario what it is; unknown keys are refused so a typo never
silently runs a different experiment.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lpnode.protocol.jobspec import Pipeline

from .gpus import profile

BEHAVIOURS = ("honest", "slow", "flaky", "churn", "liar", "cheater")
LIES = ("warm", "price", "models")
LATENCIES = ("zero", "lan", "home_internet")
EVENT_KINDS = ("partition", "heal")


class ScenarioError(ValueError):
    """A scenario file that cannot run; the message names the key."""


@dataclass(frozen=True)
class NodeGroup:
    count: int
    gpu: str = "4090"  # a profile name or short name (gpus.ALIASES)
    behaviour: str = "honest"
    serve: tuple[str, ...] = ("sdxl-turbo",)  # preset names
    pinned: tuple[str, ...] = ("sdxl-turbo",)  # warm from the start
    price_per_mpx_step: int = 100  # micro-credits, what the worker quotes
    slowdown: float = 4.0  # behaviour "slow": runs take this many times longer
    drop_share: float = 0.3  # behaviour "flaky": share of jobs abandoned mid-run (stream closed)
    up_s: float = 60.0  # behaviour "churn": mean online time (exponential), virtual seconds
    down_s: float = 15.0  # behaviour "churn": mean offline time
    lie: str = "warm"  # behaviour "liar": warm (claims every model warm), price (advertises 1/10 of its quote), models (claims svd-xt too)
    cheat: str = "blank"  # behaviour "cheater": a reputation.cheats.CheatMode value
    cheat_share: float = 1.0  # behaviour "cheater": share of jobs cheated (1.0 = always)


@dataclass(frozen=True)
class JobMix:
    pipeline: str = "text-to-image"
    model: str = "stabilityai/sdxl-turbo"  # advertised model id ("" = any)
    weight: float = 1.0
    width: int = 512
    height: int = 512
    steps: int = 1
    frames: int = 14  # image-to-video only


@dataclass(frozen=True)
class Flash:
    at_s: float  # virtual seconds after the workload starts
    duration_s: float
    rate_per_s: float  # added to the base rate meanwhile


@dataclass(frozen=True)
class Workload:
    requesters: int = 4  # nodes with no GPU that only submit jobs
    rate_per_s: float = 1.0  # jobs per second over all requesters (Poisson)
    deadline_s: float = 60.0
    max_price: int = 100_000  # micro-credits per job
    mix: tuple[JobMix, ...] = (JobMix(),)
    flashes: tuple[Flash, ...] = ()
    # what requesters ask for, as the RPC field: "none" (no reputation store: the runs before it existed),
    # "spot" (the node's default: adaptive spot checks, scores and bans; simnet/checks.py) or "redundant:K"
    verification: str = "none"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"none|spot|redundant:[2-5]", self.verification):
            raise ScenarioError(
                f"workload.verification must be none, spot or redundant:2..5, got {self.verification!r}"
            )


@dataclass(frozen=True)
class Event:
    at_s: float  # virtual seconds after the workload starts
    kind: str  # "partition" (into ``groups`` equal parts, requesters spread over them) or "heal"
    groups: int = 2


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 0
    duration_s: float = 60.0  # virtual seconds of workload
    warmup_s: float = 10.0  # virtual seconds for the network to form before the first job
    drain_s: float = 0.0  # extra time for jobs still running at the end (0: the workload's deadline)
    latency: str = "home_internet"
    loss: float = 0.0  # per-hop gossip loss
    degree: int = 3  # random links each node dials when it (re)joins
    max_connections: int = 8  # the node's own dialer's bound
    advert_interval_s: float = 10.0
    advert_ttl_s: float = 60.0
    nodes: tuple[NodeGroup, ...] = (NodeGroup(count=8),)
    workload: Workload = field(default_factory=Workload)
    events: tuple[Event, ...] = ()

    @property
    def worker_count(self) -> int:
        return sum(g.count for g in self.nodes)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every node group, the requesters and the rates times ``factor``."""
        from dataclasses import replace

        groups = tuple(replace(g, count=max(1, round(g.count * factor))) for g in self.nodes)
        w = self.workload
        workload = replace(
            w,
            requesters=max(1, round(w.requesters * factor)),
            rate_per_s=w.rate_per_s * factor,
            flashes=tuple(replace(f, rate_per_s=f.rate_per_s * factor) for f in w.flashes),
        )
        return replace(self, nodes=groups, workload=workload)


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    return parse_scenario(data, default_name=path.stem)


def parse_scenario(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    raw = dict(data)
    raw.setdefault("name", default_name)
    nodes = tuple(_build(NodeGroup, g, "nodes") for g in raw.pop("nodes", [{"count": 8}]))
    w = dict(raw.pop("workload", {}))
    mix = tuple(_build(JobMix, m, "workload.mix") for m in w.pop("mix", [{}]))
    flashes = tuple(_build(Flash, f, "workload.flashes") for f in w.pop("flashes", []))
    workload = _build(Workload, {**w, "mix": mix, "flashes": flashes}, "workload")
    events = tuple(_build(Event, e, "events") for e in raw.pop("events", []))
    scenario: Scenario = _build(Scenario, {**raw, "nodes": nodes, "workload": workload, "events": events}, "scenario")
    _check(scenario)
    return scenario


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(values) - known):
        raise ScenarioError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**converted)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def _check(s: Scenario) -> None:
    if s.duration_s <= 0 or s.warmup_s < 0 or not 0 <= s.loss <= 1 or s.degree < 1:
        raise ScenarioError("duration_s must be positive, warmup_s ≥ 0, loss in [0, 1], degree ≥ 1")
    if s.latency not in LATENCIES:
        raise ScenarioError(f"latency must be one of {LATENCIES}, got {s.latency!r}")
    if not s.nodes or any(g.count < 1 for g in s.nodes):
        raise ScenarioError("every node group needs count ≥ 1")
    for g in s.nodes:
        try:
            profile(g.gpu)
        except KeyError as exc:
            raise ScenarioError(str(exc)) from None
        if g.behaviour not in BEHAVIOURS:
            raise ScenarioError(f"behaviour must be one of {BEHAVIOURS}, got {g.behaviour!r}")
        if g.lie not in LIES:
            raise ScenarioError(f"lie must be one of {LIES}, got {g.lie!r}")
        if extra := set(g.pinned) - set(g.serve):
            raise ScenarioError(f"pinned models {sorted(extra)} are not served")
    w = s.workload
    if w.requesters < 1 or w.rate_per_s < 0 or w.deadline_s <= 0:
        raise ScenarioError("workload: requesters ≥ 1, rate_per_s ≥ 0, deadline_s > 0")
    if not w.mix or any(m.weight <= 0 for m in w.mix):
        raise ScenarioError("workload.mix needs entries with positive weights")
    for m in w.mix:
        try:
            Pipeline(m.pipeline)
        except ValueError:
            raise ScenarioError(f"workload.mix: unknown pipeline {m.pipeline!r}") from None
    for e in s.events:
        if e.kind not in EVENT_KINDS or e.groups < 2:
            raise ScenarioError(f"events: kind must be one of {EVENT_KINDS} and groups ≥ 2")


__all__ = [
    "BEHAVIOURS",
    "Event",
    "Flash",
    "JobMix",
    "NodeGroup",
    "Scenario",
    "ScenarioError",
    "Workload",
    "load_scenario",
    "parse_scenario",
]
