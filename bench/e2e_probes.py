"""Probe stamps into parts of a job: read the probe files, match stamps to jobs, take medians (ms).

``split_times``: the coarse parts, one probe of each kind per timed (sequential) job. RPC = HTTP
round trip − ``run_job``; before run = stream open, quote, accept (``run_job`` start → ``pool.run``
start); pool = queue + device stage + output stage; after run = receipt signing, Result message,
receipt check (``pool.run`` end → transfer start); transfer = output bytes.

``fine_split`` (``FINE_PARTS``): more probes (the RPC handler's body read, record creation, output
store and final record; the stream open; every job message sent and received, by type) are matched
to each timed job by the driver's monotonic window around its request, so the finer table adds up to
the whole job and needs no per-probe counting.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_probes(path: Path, skip: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[skip:]]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


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
    "admit": "job admitted (its record written first for an async request; beside the job for a sync one)",
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
    "store_outputs": "outputs stored (files; fsynced only under synchronous=FULL)",
    "to_finish": "→ final record",
    "finish": "final record saved (SQLite), where the answer waited for it (0 when it went out during the save)",
    "http_out": "HTTP response out: the answer's result settled → the driver has it",
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
            # A sync answer goes out once the record is settled in memory, while it is saved (JobManager.
            # wait_result): a save that ended after the driver had its answer was off the answer's path.
            "finish": finish["end"] - finish["start"] if finish["end"] <= end else 0.0,
            "http_out": end - (finish["end"] if finish["end"] <= end else finish["start"]),
        }
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    if not parts:
        return None
    on_spares = parts.pop("on_spare")  # 1.0 a job on a spare stream, 0.0 one that opened its own
    return {**{key: ms(values) for key, values in parts.items()}, "jobs_on_spares": int(sum(on_spares))}
