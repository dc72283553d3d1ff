"""A job's events and the queues that carry them to its watchers.

Four kinds: ``progress``, ``state`` (on each change), ``attempt`` (a try of one of the
request's network jobs starting on a worker, and ending) and ``done`` (the final record).

An ``attempt`` event's data (stable keys; ``GET /v1/jobs/{id}/events``)::

    {"stage": "start", "image": 0, "attempt": 1, "peer_id": "12D3KooW...", "model_id": "..."}
    {"stage": "end", "image": 0, "attempt": 1, "peer_id": "12D3KooW...", "model_id": "...",
     "ok": false, "outcome": "disconnected", "detail": "...", "price": 1}

``image`` counts the request's images (network jobs) from 0, as its receipts do; ``attempt`` counts
that image's tries from 1. ``outcome``, ``detail`` and ``price`` are those of the record's
``attempts`` entry for the try (``done`` with ``ok`` true for the try that made the image). A try
cut short by a cancel has no ``end``: the ``done`` record says how it ended. A workflow forwards its
steps' attempt events with ``workflow_step`` (counted from 1) and ``step_id`` (the step's record).

The events show what the record shows: the job's own tries. A spot check's copies run with a
callback of their own and are never seen here (nor in the record); a ``redundant:k`` job's other
runs appear in the final record's attempts, not as events.

Each :class:`Listener` has a bounded buffer: a slow listener loses progress events first, never
``state`` or ``done`` (there are only a handful of those per job). Attempt events are few by
construction (``run_job`` tries at most ``MAX_ATTEMPTS`` candidates, and asks busy ones again for at
most ``BUSY_ROUNDS`` rounds, each waiting a floor that doubles from ``BUSY_MIN_WAIT_S`` and at most half
the time left),
and are bounded here as well: a reader ``max_attempts`` of them behind loses the newest (the ``done``
record still lists every attempt).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from lpnode.node.job_try import Attempt, ProgressCallback, TryWatcher
from lpnode.protocol.jobs import Progress

LISTENER_BUFFER = 32  # progress events a listener may fall behind by before losing some
ATTEMPT_BUFFER = 64  # attempt events a listener may fall behind by before losing some
ATTEMPT = "attempt"
DONE_OUTCOME = "done"  # an Attempt's outcome when its try made the verified result


@dataclass(frozen=True)
class JobEvent:
    kind: str  # "progress" | "state" | "attempt" | "done"
    data: Mapping[str, Any]


class EventSink(Protocol):
    def push(self, event: JobEvent) -> None: ...


def attempt_started(image: int, number: int, peer_id: str, model_id: str) -> JobEvent:
    return JobEvent(
        ATTEMPT, {"stage": "start", "image": image, "attempt": number, "peer_id": peer_id, "model_id": model_id}
    )


def attempt_ended(image: int, number: int, attempt: Attempt) -> JobEvent:
    data = {
        "stage": "end",
        "image": image,
        "attempt": number,
        "peer_id": attempt.peer_id,
        "model_id": attempt.model_id,
        "ok": attempt.outcome == DONE_OUTCOME,
        "outcome": attempt.outcome,
        "detail": attempt.detail,
        "price": attempt.price,
    }
    return JobEvent(ATTEMPT, data)


class TryEvents(TryWatcher):
    """One image's network job as the manager sees it: progress to ``progress``, its tries as attempt events."""

    def __init__(self, image: int, progress: ProgressCallback, push: Callable[[JobEvent], None]) -> None:
        self._image = image
        self._progress = progress
        self._push = push

    def __call__(self, peer_id: str, message: Progress) -> None:
        self._progress(peer_id, message)

    def try_started(self, number: int, peer_id: str, model_id: str) -> None:
        self._push(attempt_started(self._image, number, peer_id, model_id))

    def try_ended(self, number: int, attempt: Attempt) -> None:
        self._push(attempt_ended(self._image, number, attempt))


class Listener:
    """One watcher's queue of a job's events: progress and attempts bounded, state and done never dropped."""

    def __init__(self, max_progress: int = LISTENER_BUFFER, max_attempts: int = ATTEMPT_BUFFER) -> None:
        self._events: deque[JobEvent] = deque()
        self._queued = {"progress": 0, ATTEMPT: 0}  # bounded kinds: events of each in the queue
        self._max = {"progress": max_progress, ATTEMPT: max_attempts}
        self._wake = trio.Event()
        self.dropped = 0  # progress and attempt events lost to a slow reader

    def push(self, event: JobEvent) -> None:
        if event.kind in self._queued:
            if self._queued[event.kind] >= self._max[event.kind]:
                self.dropped += 1
                return
            self._queued[event.kind] += 1
        self._events.append(event)
        self._wake.set()

    async def next(self) -> JobEvent:
        while not self._events:
            await self._wake.wait()
            self._wake = trio.Event()
        event = self._events.popleft()
        if event.kind in self._queued:
            self._queued[event.kind] -= 1
        return event


class _Forward:
    """A listener stand-in that hands a child's progress and attempts to its workflow (states stay the child's own)."""

    def __init__(
        self, forward: Callable[[dict[str, Any]], None], forward_attempt: Callable[[dict[str, Any]], None]
    ) -> None:
        self._forward = forward
        self._forward_attempt = forward_attempt

    def push(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self._forward(dict(event.data))
        elif event.kind == ATTEMPT:
            self._forward_attempt(dict(event.data))


__all__ = [
    "ATTEMPT",
    "ATTEMPT_BUFFER",
    "LISTENER_BUFFER",
    "EventSink",
    "JobEvent",
    "Listener",
    "TryEvents",
    "attempt_ended",
    "attempt_started",
]
