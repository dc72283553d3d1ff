"""How a request's outcome is written into its record: output URLs, attempt entries, error names."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lpnode.node.job_requester import Attempt, JobOutcome


def output_url(sha256: str) -> str:
    return f"/v1/outputs/{sha256}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _attempt(a: Attempt) -> dict[str, Any]:
    return {"peer_id": a.peer_id, "outcome": a.outcome, "detail": a.detail, "price": a.price}


def _attempt_running(peer_id: str, model_id: str) -> dict[str, Any]:
    """A try still under way, as the record shows it until it ends."""
    return {"peer_id": peer_id, "outcome": "running", "detail": f"running {model_id}", "price": None}


def _cut_short(
    outcomes: Sequence[JobOutcome | None],
    seen: Sequence[Sequence[Mapping[str, Any]]],
    tries: Sequence[Mapping[str, str]],
    steps: Sequence[tuple[int, int]],
    cancel_requested: bool,
) -> list[dict[str, Any]]:
    """The attempts of a request cancelled (or stopped with the node) mid-run, as far as they were seen.

    An image that finished keeps its requester's attempts. For one still running: its tries as their
    start and end events told them (``seen``), the one still running ``cancelled`` (``interrupted``
    when the node stopped). From a runner that tells no tries, each try that reported progress
    (``tries``): the last one so, any before it ``superseded``: the job had moved on from it, and why
    was lost with the requester's run.
    """
    ended = "cancelled" if cancel_requested else "interrupted"
    attempts: list[dict[str, Any]] = []
    for outcome, told, progressed, (step, total) in zip(outcomes, seen, tries, steps, strict=True):
        if outcome is not None:
            attempts.extend(_attempt(a) for a in outcome.attempts)
            continue
        at = f" at step {step}/{total}" if total else ""
        if told:
            for attempt in told:
                running = attempt["outcome"] == "running"
                attempts.append(
                    _seen(attempt["peer_id"], ended, f"{ended} while running{at}") if running else dict(attempt)
                )
            continue
        peers = list(progressed.values())
        for n, peer_id in enumerate(peers, 1):
            if n < len(peers):
                attempts.append(_seen(peer_id, "superseded", "ran, then the job moved on to another peer"))
            else:
                attempts.append(_seen(peer_id, ended, f"{ended} while running{at}"))
    return attempts


def _seen(peer_id: str, outcome: str, detail: str) -> dict[str, Any]:
    return {"peer_id": peer_id, "outcome": outcome, "detail": detail, "price": None}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


__all__ = ["output_url", "sha256_hex"]
