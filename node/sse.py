"""Server-sent events (the WHATWG ``text/event-stream`` format) of one job's :class:`Listener`.

Each event is ``event: <kind>`` + ``data: <JSON>`` + a blank line; the stream
ends after ``done``. A comment line every ``keepalive_s`` keeps proxies and
idle-timeouts from closing a stream that waits on a long job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio
from lpnode.node.job_events import Listener

KEEPALIVE_S = 15.0
KEEPALIVE = b": keep-alive\n\n"


def format_event(kind: str, data: Mapping[str, Any]) -> bytes:
    # compact JSON holds no newline, so one data line carries it whole
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(listener: Listener, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """The listener's events as SSE frames, until ``done``."""
    while True:
        event = None
        # no yield inside the cancel scope: a generator may be suspended outside it
        with trio.move_on_after(keepalive_s):
            event = await listener.next()
        if event is None:
            yield KEEPALIVE
            continue
        yield format_event(event.kind, event.data)
        if event.kind == "done":
            return


__all__ = ["KEEPALIVE", "KEEPALIVE_S", "event_stream", "format_event"]
