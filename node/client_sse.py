"""Server-sent events (``text/event-stream``) parsed from bytes, bounded, with no I/O.

Only what ``GET /v1/jobs/{id}/events`` sends is needed: ``event:`` and
``data:`` fields, comment lines (``: keep-alive``) and a blank line ending each
event (https://html.spec.whatwg.org/multipage/server-sent-events.html). Every
``data`` is one JSON object. Lines and events are bounded so a broken or hostile
server cannot make the client buffer without limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lpnode.protocol.errors import LpnodeError

MAX_LINE_BYTES = 16 * 1024 * 1024  # a `done` event carries the whole record, receipts in base64 included
MAX_EVENT_BYTES = 16 * 1024 * 1024


class EventStreamError(LpnodeError):
    """The node's event stream broke the format or its bounds."""


@dataclass(frozen=True)
class Event:
    name: str  # "progress", "state", "done" (SSE's default name is "message")
    data: dict[str, Any]  # the JSON object of its data lines


class EventParser:
    """Feed it chunks as they arrive; it hands back every event a chunk completes."""

    def __init__(self) -> None:
        self._pending = b""  # an incomplete line
        self._name = ""
        self._data: list[bytes] = []
        self._data_bytes = 0

    def feed(self, chunk: bytes) -> list[Event]:
        self._pending += chunk
        events: list[Event] = []
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line, self._pending = self._pending[:end], self._pending[end + 1 :]
            event = self._line(line.removesuffix(b"\r"))
            if event is not None:
                events.append(event)
        if len(self._pending) > MAX_LINE_BYTES:
            raise EventStreamError(f"an event stream line is over {MAX_LINE_BYTES} bytes")
        return events

    def _line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None  # a comment: keep-alive
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"event":
            self._name = value.decode("utf-8", "replace")
        elif field == b"data":
            self._data.append(value)
            self._data_bytes += len(value) + 1
            if self._data_bytes > MAX_EVENT_BYTES:
                raise EventStreamError(f"an event is over {MAX_EVENT_BYTES} bytes")
        return None  # id, retry and unknown fields mean nothing here

    def _dispatch(self) -> Event | None:
        name, data = self._name or "message", b"\n".join(self._data)
        had_data = bool(self._data)
        self._name, self._data, self._data_bytes = "", [], 0
        if not had_data:
            return None  # the spec drops an event without data
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise EventStreamError(f"event {name!r} carries data that is not JSON: {data[:80]!r}") from exc
        if not isinstance(body, dict):
            raise EventStreamError(f"event {name!r} carries JSON that is not an object")
        return Event(name, body)


__all__ = ["Event", "EventParser", "EventStreamError"]
