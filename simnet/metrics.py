"""What a simulation measures, and the summary numbers made from it.

The :class:`Recorder` is fed by the runner as things happen (an advert admitted
somewhere, a job ended, a periodic sample) and keeps bounded state: advert
arrivals are folded into per-advert maxima and a 1 ms histogram, never kept one
by one, so a thousand nodes gossiping for minutes stay a few MB.
:func:`summarise` turns it into the plain dict that ``metrics.json`` holds.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HISTOGRAM_MS = 60_000  # advert delays are binned per ms up to a minute; later ones land in the last bin
THROUGHPUT_BIN_S = 10.0


@dataclass(frozen=True)
class JobRecord:
    index: int
    requester: int
    pipeline: str
    submitted_s: float  # virtual seconds since the workload started
    ended_s: float
    ok: bool
    outcome: str  # "done", or why it failed ("no_candidates", "failed")
    worker: int | None  # index of the worker that delivered
    attempts: int  # tries, the successful one included
    attempt_outcomes: tuple[str, ...]
    attempt_details: tuple[str, ...]  # for people: why each try ended (in step with attempt_outcomes)
    price: int | None  # micro-credits
    output_good: bool | None  # the oracle: did the output match the honest stand-in? (None: no output)

    @property
    def latency_s(self) -> float:
        return self.ended_s - self.submitted_s


@dataclass(frozen=True)
class BanRecord:
    """A requester's store banned a worker (simnet/checks.py ``BanWatch``)."""

    worker: int  # worker index (-1: not a worker)
    requester: int
    at_s: float  # virtual seconds since the workload started
    requester_jobs: int  # jobs this requester had given the worker by then
    checks: int  # settled checks it had taken part in, for this requester
    blames: int
    reason: str


@dataclass
class ReputationEnd:
    """Each requester's store at the end of a run, summed (filled only when requesters verify)."""

    verification: str
    counters: dict[str, float]  # reputation.store COUNTERS summed over requesters
    blames: dict[int, int]  # worker -> blames over all requesters' stores
    checks: dict[int, int]  # worker -> settled checks it took part in
    banned_by: dict[int, int]  # worker -> requesters whose ban on it is in force at the end


@dataclass
class _Advert:
    first_s: float  # virtual seconds (workload clock) of the first arrival
    online: int  # nodes online then, publisher included
    reached: int = 0
    last_delay_s: float = 0.0


@dataclass
class Sample:
    t_s: float
    online_workers: int
    jobs_in_flight: int
    completed: int
    failed: int


@dataclass
class Recorder:
    advert_histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_MS + 1))
    adverts: dict[tuple[str, int], _Advert] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    worker_gpu: dict[int, str] = field(default_factory=dict)
    worker_behaviour: dict[int, str] = field(default_factory=dict)
    worker_cheat: dict[int, tuple[str, float]] = field(default_factory=dict)  # cheaters: (mode, share)
    notes: dict[str, Any] = field(default_factory=dict)
    bans: list[BanRecord] = field(default_factory=list)
    # (t_s, each worker's score averaged over requesters): the reputation trajectories
    reputation_samples: list[tuple[float, list[float]]] = field(default_factory=list)
    reputation_end: ReputationEnd | None = None

    def advert_arrived(self, peer: str, seq: int, delay_s: float, now_s: float, online: int) -> None:
        """An advert from ``peer`` (its ``seq``) was admitted by some node ``delay_s`` after issue."""
        entry = self.adverts.get((peer, seq))
        if entry is None:
            entry = self.adverts[(peer, seq)] = _Advert(first_s=now_s, online=online)
        entry.reached += 1
        entry.last_delay_s = max(entry.last_delay_s, delay_s)
        self.advert_histogram[min(HISTOGRAM_MS, max(0, round(delay_s * 1000)))] += 1

    def job_ended(self, record: JobRecord) -> None:
        self.jobs.append(record)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _histogram_percentile(histogram: Sequence[int], q: float) -> float | None:
    total = sum(histogram)
    if not total:
        return None
    target = max(1, math.ceil(q / 100 * total))
    running = 0
    for ms, count in enumerate(histogram):
        running += count
        if running >= target:
            return ms / 1000
    return len(histogram) / 1000


def gini(values: Sequence[float]) -> float:
    """0 = perfectly even load, → 1 = one peer does everything."""
    xs = sorted(values)
    n = len(xs)
    total = sum(xs)
    if n == 0 or total == 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (n * total) - (n + 1) / n


def summarise(rec: Recorder, *, duration_s: float, workers: int) -> dict[str, Any]:
    """The run's figures as a JSON-ready dict (see docs/simnet.md for each field's meaning)."""
    jobs = sorted(rec.jobs, key=lambda j: j.index)
    done = [j for j in jobs if j.ok]
    latencies = sorted(j.latency_s for j in done)
    # an advert counts as having reached everyone when every node online at its first arrival got it
    complete = [a for a in rec.adverts.values() if a.reached >= a.online - 1]
    to_all = sorted(a.last_delay_s for a in complete)
    per_worker = Counter(j.worker for j in done if j.worker is not None)
    loads = [per_worker.get(w, 0) for w in range(workers)]
    by_gpu: Counter[str] = Counter()
    by_behaviour: Counter[str] = Counter()
    for w, n in per_worker.items():
        by_gpu[rec.worker_gpu.get(w, "?")] += n
        by_behaviour[rec.worker_behaviour.get(w, "?")] += n
    throughput = [0] * max(1, math.ceil(duration_s / THROUGHPUT_BIN_S))
    for j in done:
        slot = min(len(throughput) - 1, max(0, int(j.ended_s // THROUGHPUT_BIN_S)))
        throughput[slot] += 1
    attempt_outcomes: Counter[str] = Counter(o for j in jobs for o in j.attempt_outcomes)
    checked = [j for j in done if j.output_good is not None]
    examples: dict[str, list[str]] = {}
    for j in jobs:
        for outcome, detail in zip(j.attempt_outcomes, j.attempt_details, strict=True):
            if outcome != "done" and len(shown := examples.setdefault(outcome, [])) < 3:
                shown.append(detail[:300])
    return {
        "jobs": {
            "submitted": len(jobs),
            "completed": len(done),
            "failed": len(jobs) - len(done),
            "success_rate": len(done) / len(jobs) if jobs else None,
            "failures": dict(Counter(j.outcome for j in jobs if not j.ok)),
            "latency_s": {
                "p50": percentile(latencies, 50),
                "p90": percentile(latencies, 90),
                "p95": percentile(latencies, 95),
                "p99": percentile(latencies, 99),
                "max": latencies[-1] if latencies else None,
                "mean": statistics.fmean(latencies) if latencies else None,
            },
            "retried": sum(1 for j in jobs if j.attempts > 1),
            "attempts_per_job": statistics.fmean(j.attempts for j in jobs) if jobs else None,
            "attempt_outcomes": dict(attempt_outcomes),
            "attempt_examples": examples,  # a few details per unsuccessful outcome
            "throughput_per_s": len(done) / duration_s if duration_s else None,
            "throughput_bins": {"bin_s": THROUGHPUT_BIN_S, "completed": throughput},
            "bad_outputs_accepted": sum(1 for j in checked if not j.output_good),
            "outputs_checked": len(checked),
        },
        "load": {
            "per_worker": loads,
            "gini": gini(loads),
            "max_share": max(loads) / len(done) if done and loads else None,
            "idle_workers": sum(1 for n in loads if n == 0),
            "by_gpu": dict(by_gpu),
            "by_behaviour": dict(by_behaviour),
        },
        "adverts": {
            "seen": len(rec.adverts),
            "reached_all_share": len(complete) / len(rec.adverts) if rec.adverts else None,
            "to_all_s": {
                "p50": percentile(to_all, 50),
                "p95": percentile(to_all, 95),
                "max": to_all[-1] if to_all else None,
            },
            "delivery_s": {
                "p50": _histogram_percentile(rec.advert_histogram, 50),
                "p95": _histogram_percentile(rec.advert_histogram, 95),
                "p99": _histogram_percentile(rec.advert_histogram, 99),
            },
        },
        "timeline": [asdict(s) for s in rec.samples],
        "reputation": None if rec.reputation_end is None else _reputation(rec, jobs, workers),
        "notes": rec.notes,
    }


def _reputation(rec: Recorder, jobs: Sequence[JobRecord], workers: int) -> dict[str, Any]:
    """Check overhead, time to ban each cheater, false blames and bans of peers that never cheat."""
    end = rec.reputation_end
    assert end is not None
    c = end.counters
    first_ban: dict[int, BanRecord] = {}
    for record in sorted(rec.bans, key=lambda b: b.at_s):
        first_ban.setdefault(record.worker, record)
    cheaters: list[dict[str, Any]] = []
    times: list[float] = []  # always-cheaters: virtual s to the first ban
    to_ban: list[float] = []  # always-cheaters: users' jobs delivered up to the first ban
    always = banned = 0
    for w, (mode, share) in sorted(rec.worker_cheat.items()):
        ban = first_ban.get(w)
        served = [j for j in jobs if j.ok and j.worker == w]
        until_ban = sum(1 for j in served if ban is None or j.ended_s <= ban.at_s)
        if share >= 1.0:
            always += 1
            if ban is not None:
                banned += 1
                times.append(ban.at_s)
                to_ban.append(until_ban)
        cheaters.append(
            {
                "worker": w,
                "cheat": mode,
                "share": share,
                "banned": ban is not None,
                "banned_by": end.banned_by.get(w, 0),
                "first_ban_s": ban.at_s if ban is not None else None,
                # users' jobs it delivered (to any requester) up to the first ban
                "jobs_until_first_ban": until_ban,
                "jobs_served": len(served),
                "requester_jobs_at_ban": sorted(b.requester_jobs for b in rec.bans if b.worker == w),
                "blames": end.blames.get(w, 0),
            }
        )
    honest = [w for w in range(workers) if w not in rec.worker_cheat]
    times.sort()
    to_ban.sort()
    return {
        "verification": end.verification,
        "user_jobs": int(c["jobs"]),
        "checks": int(c["checks"]),
        "check_runs": int(c["check_runs"]),
        "checks_skipped": int(c["checks_skipped"]),
        "extra_runs_per_job": c["check_runs"] / c["jobs"] if c["jobs"] else None,
        "compute_overhead": c["check_mpx_steps"] / c["job_mpx_steps"] if c["job_mpx_steps"] else None,
        "cheaters": cheaters,
        "always_cheaters": always,
        "always_cheaters_banned": banned,
        "time_to_ban_s": {"p50": percentile(times, 50), "max": times[-1] if times else None},
        "jobs_until_ban": {"p50": percentile(to_ban, 50), "max": to_ban[-1] if to_ban else None},
        "honest_blames": sum(end.blames.get(w, 0) for w in honest),
        "honest_peers_blamed": sum(1 for w in honest if end.blames.get(w, 0)),
        "honest_checks": sum(end.checks.get(w, 0) for w in honest),
        "honest_banned": sorted({b.worker for b in rec.bans if b.worker not in rec.worker_cheat}),
        "bans": [asdict(b) for b in rec.bans],
        # each worker's score averaged over requesters, at each timeline sample (the trajectory plot)
        "trajectory": {
            "t_s": [t for t, _ in rec.reputation_samples],
            "scores": [[scores[w] for _, scores in rec.reputation_samples] for w in range(workers)],
        },
    }


__all__ = [
    "BanRecord",
    "JobRecord",
    "Recorder",
    "ReputationEnd",
    "Sample",
    "gini",
    "percentile",
    "summarise",
]
