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
    notes: dict[str, Any] = field(default_factory=dict)

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
        # reputation (spot checks, detection time, false blames): simnet's requesters do not run them yet
        "reputation": None,
        "notes": rec.notes,
    }


__all__ = ["JobRecord", "Recorder", "Sample", "gini", "percentile", "summarise"]
