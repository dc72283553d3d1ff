"""Issue 6's "no honest peer banned in 10,000 simulated jobs", read at the scale it names.

    python -m lpnode.reputation.calibrate --target-runs 1000 --off-rate 0.002 --off-rate 0.01

Two readings, side by side, per honest off rate:

* **the network reading** (the target's words): ``runs`` independent seeded
  simulations of one requester handing exactly 10,000 user jobs to 20 honest
  peers (:func:`~lpnode.reputation.policy_sim.simulate_network`); how many
  simulations ban at least one honest peer, with an exact 95 % interval;
* **the per-peer stress reading** (stricter): every honest peer runs 10,000
  jobs of its own (:func:`~lpnode.reputation.policy_sim.simulate`), so 400 peers
  are 4 million jobs; how many peers are banned.

Suspect probes are on unless the configuration's ``spot.suspect_probes`` is 0
(``calibrate --no-probes``), in both readings.

No cheaters in the network runs: the target is about honest peers, and a
cheater would only add blames that honest checkers win (a cheater's output
disagrees with both honest ones, so the honest pair is credited).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

from .calibrate_stats import clopper_pearson_interval
from .policy_sim import NetConfig, NetOutcome, SimConfig, SimPeer, simulate, simulate_network, summarise

__all__ = ["TargetRow", "target_row", "target_table"]


@dataclass(frozen=True)
class TargetRow:
    off_rate: float
    runs: int  # network simulations of config.jobs user jobs each
    runs_with_ban: int  # simulations in which at least one honest peer was banned
    honest_bans: int  # honest peers banned, over all simulations (first ban of each)
    interval: tuple[float, float]  # exact two-sided 95 % interval on the share of simulations with a ban
    median_ban_job: float | None  # user job number (1..jobs) of the bans, median
    extra_runs_per_job: float  # checker and tie-breaker runs per user job, over all simulations
    blames_per_check: float
    probes_per_job: float  # suspect probes (runs, also in extra_runs_per_job) per user job
    stress_peers: int  # per-peer reading: honest peers of 10,000 jobs each
    stress_banned: int


def _one(config: NetConfig, run: int) -> NetOutcome:
    return simulate_network(config, run)


def target_row(
    off_rate: float,
    runs: int,
    *,
    config: NetConfig | None = None,
    stress_peers: int = 400,
    processes: int = 2,
) -> TargetRow:
    """One off rate: ``runs`` network simulations and ``stress_peers`` per-peer 10,000-job simulations."""
    net = replace(config or NetConfig(), honest_off_rate=off_rate)
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            outcomes = list(pool.map(partial(_one, net), range(runs), chunksize=max(1, runs // (4 * processes))))
    else:
        outcomes = [simulate_network(net, run) for run in range(runs)]
    ban_jobs = [job for o in outcomes for _, job in o.bans]
    with_ban = sum(bool(o.bans) for o in outcomes)
    checks = sum(o.checks for o in outcomes)
    stress = SimConfig(honest_off_rate=off_rate, seed=net.seed, spot=net.spot)  # probes on or off alike
    honest = summarise("honest", simulate(stress, [SimPeer("honest")] * stress_peers)) if stress_peers else None
    return TargetRow(
        off_rate=off_rate,
        runs=runs,
        runs_with_ban=with_ban,
        honest_bans=len(ban_jobs),
        interval=clopper_pearson_interval(with_ban, runs),
        median_ban_job=float(statistics.median(ban_jobs)) if ban_jobs else None,
        extra_runs_per_job=sum(o.extra_runs for o in outcomes) / (runs * net.jobs),
        blames_per_check=sum(o.blames for o in outcomes) / checks if checks else 0.0,
        probes_per_job=sum(o.probes for o in outcomes) / (runs * net.jobs),
        stress_peers=stress_peers,
        stress_banned=honest.banned if honest else 0,
    )


def target_table(
    off_rates: Sequence[float], runs: int, *, config: NetConfig | None = None, stress_peers: int = 400
) -> Iterator[str]:
    """Markdown lines, a row per off rate as soon as it is measured."""
    net = config or NetConfig()
    yield from [
        f"| honest off rate | network: simulations with ≥ 1 honest ban (of {net.jobs:,} jobs, {net.peers} peers) | "
        "95 % interval | honest bans in all | median job of a ban | extra runs per job (of them probes) | "
        "blames per check | per peer: banned in 10,000 jobs each |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for off in off_rates:
        row = target_row(off, runs, config=net, stress_peers=stress_peers)
        low, high = row.interval
        median = "–" if row.median_ban_job is None else f"{row.median_ban_job:g}"
        yield (
            f"| {100 * off:.3g} % | {row.runs_with_ban}/{row.runs} ({100 * row.runs_with_ban / row.runs:.1f} %) | "
            f"{100 * low:.2f}–{100 * high:.2f} % | {row.honest_bans} | {median} | "
            f"{100 * row.extra_runs_per_job:.1f} % ({100 * row.probes_per_job:.2f} %) | {row.blames_per_check:.4f} | "
            f"{row.stress_banned}/{row.stress_peers} |"
        )
