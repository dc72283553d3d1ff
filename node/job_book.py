"""Where a job's record and outputs live: the record shape, its states, and the two stores' interfaces.

:class:`RecordBook` keeps one record per request (:class:`StoredRecords` over SQLite
in production; :class:`MemoryRecordBook` here, for tests and a node without a
database). :class:`OutputSink` keeps the verified outputs by hex sha256.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Protocol

Record = dict[str, Any]  # the contract's record shape (GET /v1/jobs/{id})

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, INTERRUPTED})

# The error an interrupted record carries, in the API's error shape: whether the node stopped cleanly
# (the manager ends the record) or was killed (the next start marks it), a reader finds the same error.
INTERRUPTED_ERROR: dict[str, Any] = {
    "status": 503,
    "error": "interrupted",
    "message": "the node stopped while this job was queued or running",
}


class RecordBook(Protocol):
    """Persistent job records (:class:`StoredRecords` over SQLite; :class:`MemoryRecordBook` in tests)."""

    # state: "queued", or "running" for a job that starts at once; job_id: one from new_job_id(), or a new one
    async def create(
        self,
        kind: str,
        request: Record,
        parent_id: str | None,
        now: float,
        state: str = ...,
        *,
        job_id: str | None = ...,
    ) -> Record: ...
    # state, result, error, attempts, progress; receipts ((n, bytes)) in the same transaction
    async def update(self, record: Record, now: float, receipts: Sequence[tuple[int, bytes]] = ...) -> None: ...
    async def get(self, job_id: str) -> Record | None: ...
    # newest first; ``parent_id``: only the steps of that workflow; ``before``: only records older than that one
    async def list(
        self, limit: int, state: str | None, parent_id: str | None = None, before: str | None = None
    ) -> list[Record]: ...
    async def add_receipt(self, job_id: str, n: int, receipt: bytes) -> None: ...
    async def receipt(self, job_id: str, n: int) -> bytes | None: ...
    async def mark_interrupted(self, now: float) -> int: ...  # unfinished records → interrupted; how many


class OutputSink(Protocol):
    """Verified outputs by hex sha256 (content-addressed files on disk; a dict in tests)."""

    async def put(self, sha256: str, media_type: str, data: bytes) -> None: ...
    # (sha256, media type, bytes) whose hashes the caller checked; as durable as the records when it returns
    async def put_verified(self, outputs: Sequence[tuple[str, str, bytes]]) -> None: ...
    async def get(self, sha256: str) -> tuple[str, bytes] | None: ...


class MemoryRecordBook:
    """Records in a dict: for tests and for a node without a database."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._receipts: dict[tuple[str, int], bytes] = {}

    async def create(
        self,
        kind: str,
        request: Record,
        parent_id: str | None,
        now: float,
        state: str = QUEUED,
        *,
        job_id: str | None = None,
    ) -> Record:
        record = draft_record(kind, request, parent_id, now, state, job_id=job_id)
        self._records[record["id"]] = _copy(record)
        return record

    async def update(self, record: Record, now: float, receipts: Sequence[tuple[int, bytes]] = ()) -> None:
        self._records[record["id"]] = _copy(record) | {"updated_at": now}
        for n, receipt in receipts:
            self._receipts[(record["id"], n)] = receipt

    async def get(self, job_id: str) -> Record | None:
        found = self._records.get(job_id)
        return None if found is None else _copy(found)

    async def list(
        self, limit: int, state: str | None, parent_id: str | None = None, before: str | None = None
    ) -> list[Record]:
        order = list(self._records)  # insertion order: creation order, as the database's seq
        older = order[: order.index(before)] if before in self._records else ([] if before is not None else order)
        rows = [
            self._records[job_id]
            for job_id in reversed(older)
            if (state is None or self._records[job_id]["state"] == state)
            and (parent_id is None or self._records[job_id]["parent_id"] == parent_id)
        ]
        return [_copy(r) for r in rows[:limit]]

    async def add_receipt(self, job_id: str, n: int, receipt: bytes) -> None:
        self._receipts[(job_id, n)] = receipt

    async def receipt(self, job_id: str, n: int) -> bytes | None:
        return self._receipts.get((job_id, n))

    async def mark_interrupted(self, now: float) -> int:
        unfinished = [r for r in self._records.values() if r["state"] not in TERMINAL]
        for record in unfinished:
            record["state"] = INTERRUPTED
            record["updated_at"] = now
            record["error"] = dict(INTERRUPTED_ERROR)
            record["attempts"] = interrupted_attempts(record["attempts"])
        return len(unfinished)


def new_job_id() -> str:
    """A fresh record id: ``job_`` and 24 hex digits."""
    return "job_" + secrets.token_hex(12)


def draft_record(
    kind: str, request: Record, parent_id: str | None, now: float, state: str = QUEUED, *, job_id: str | None = None
) -> Record:
    """A new record as a book creates it, before any book has it."""
    return {
        "id": job_id or new_job_id(),
        "kind": kind,
        "state": state,
        "created_at": now,
        "updated_at": now,
        "request": request,
        "progress": {"fraction": 0.0, "step": 0, "total": 0, "peer_id": None},
        "result": None,
        "error": None,
        "attempts": [],
        "parent_id": parent_id,
    }


def interrupted_attempts(attempts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stopped record's attempts: the tries it still showed running were cut off by the stop."""
    return [
        {**attempt, "outcome": "interrupted", "detail": "interrupted: the node stopped while this try ran"}
        if attempt.get("outcome") == "running"
        else dict(attempt)
        for attempt in attempts
    ]


def _copy(record: Record) -> Record:
    """A copy deep enough that a caller's edits never reach the live record."""
    return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in record.items()}


__all__ = [
    "CANCELLED",
    "FAILED",
    "INTERRUPTED",
    "INTERRUPTED_ERROR",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "MemoryRecordBook",
    "OutputSink",
    "Record",
    "RecordBook",
    "interrupted_attempts",
]
