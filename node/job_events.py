"""A job's events and the queues that carry them to its watchers.

Each :class:`Listener` has a bounded buffer: a slow listener loses progress events,
never ``state`` or ``done`` (there are only a handful of those per job).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

LISTENER_BUFFER = 32  # progress events a listener may fall behind by before losing some


@dataclass(frozen=True)
class JobEvent:
    kind: str  # "progress" | "state" | "done"
    data: Mapping[str, Any]


class EventSink(Protocol):
    def push(self, event: JobEvent) -> None: ...


class Listener:
    """One watcher's queue of a job's events: progress bounded, state and done never dropped."""

    def __init__(self, max_progress: int = LISTENER_BUFFER) -> None:
        self._events: deque[JobEvent] = deque()
        self._progress = 0  # progress events in the queue
        self._max_progress = max_progress
        self._wake = trio.Event()
        self.dropped = 0  # progress events lost to a slow reader

    def push(self, event: JobEvent) -> None:
        if event.kind == "progress":
            if self._progress >= self._max_progress:
                self.dropped += 1
                return
            self._progress += 1
        self._events.append(event)
        self._wake.set()

    async def next(self) -> JobEvent:
        while not self._events:
            await self._wake.wait()
            self._wake = trio.Event()
        event = self._events.popleft()
        if event.kind == "progress":
            self._progress -= 1
        return event


class _Forward:
    """A listener stand-in that hands a child's progress to its workflow (states stay the child's own)."""

    def __init__(self, forward: Callable[[dict[str, Any]], None]) -> None:
        self._forward = forward

    def push(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self._forward(dict(event.data))


__all__ = ["LISTENER_BUFFER", "EventSink", "JobEvent", "Listener"]
