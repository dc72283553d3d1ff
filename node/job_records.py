"""Persistent records of the node's RPC jobs (``/v1/jobs``), in the node's SQLite store.

One record per RPC request (a workflow is one record, each of its steps a child record);
signed receipts of the network jobs a record ran are kept beside it, by index. Records
survive restarts: at start the node calls :meth:`JobRecords.mark_interrupted`, which turns
every record the previous run left queued or running into ``interrupted``.

Timestamps are wall-clock unix seconds handed in by the caller (``now``); nothing here reads
a clock. Request/result/error/attempts/progress are JSON objects, each bounded in size.

Progress is cheap by design: the manager reports it a few times a second per job, and
nobody needs it after a crash (the record becomes ``interrupted``). So a progress-only
:meth:`JobRecords.update` of a live record touches memory only and reaches the database at
most once per ``progress_interval_s`` (of the caller's ``now``), and with the record's next
real change; :meth:`get` and :meth:`list` always answer the latest progress.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from lpnode.node.job_book import INTERRUPTED_ERROR, interrupted_attempts
from lpnode.node.store import ConstraintViolation, Migration, Store, SyncTransaction
from lpnode.protocol.errors import LpnodeError

__all__ = [
    "JOB_MIGRATIONS",
    "MAX_JSON_BYTES",
    "MAX_LIST",
    "MAX_RECEIPTS_PER_JOB",
    "MAX_RECEIPT_BYTES",
    "TERMINAL",
    "InvalidRecord",
    "JobFinished",
    "JobRecord",
    "JobRecordError",
    "JobRecords",
    "JobState",
    "RecordTooLarge",
    "UnknownJob",
]

MAX_JSON_BYTES = 1024 * 1024  # per JSON field of a record (request, result, ...), UTF-8 encoded
MAX_RECEIPT_BYTES = 256 * 1024  # a signed receipt is a few KiB
MAX_RECEIPTS_PER_JOB = 1024  # receipt indexes run 0 .. this - 1
MAX_LIST = 500  # most records one list() or children() call answers
MAX_LIVE_CACHED = 10_000  # live records whose progress is kept in memory; past this, progress goes to disk
DEFAULT_PROGRESS_INTERVAL_S = 1.0  # a live record's progress reaches the database at most this often


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the node stopped while the job was queued or running


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)
# SQL lists of state names, e.g. "('queued', 'running')"; the names are our own constants.
_LIVE_STATES = "(" + ", ".join(f"'{s.value}'" for s in JobState if s not in TERMINAL) + ")"
_TERMINAL_STATES = "(" + ", ".join(f"'{s.value}'" for s in JobState if s in TERMINAL) + ")"


def initial_progress() -> dict[str, Any]:
    return {"fraction": 0.0, "step": 0, "total": 0, "peer_id": None}


class JobRecordError(LpnodeError):
    """A job record cannot be created, changed or read as asked."""


class UnknownJob(JobRecordError):
    """No record has this id (RPC: 404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class JobFinished(JobRecordError):
    """The record is already in a terminal state and cannot change any more (RPC: 409)."""

    def __init__(self, job_id: str, state: JobState) -> None:
        super().__init__(f"job {job_id} already {state.value}")
        self.job_id = job_id
        self.state = state


class RecordTooLarge(JobRecordError):
    """A field of a record (or a receipt) is over its size bound (RPC: 413)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the {limit}-byte limit")
        self.what = what
        self.size = size
        self.limit = limit


class InvalidRecord(JobRecordError):
    """A value that cannot be stored: not JSON (NaN, bytes, objects), a bad kind, index or limit."""


@dataclass(frozen=True)
class JobRecord:
    """One RPC request's record. Its dicts are shared with the store's cache: treat them as read-only."""

    id: str  # "job_" + 24 hex digits
    kind: str  # "text-to-image", ..., "workflow"
    state: JobState
    created_at: float  # unix seconds
    updated_at: float  # unix seconds
    request: dict[str, Any]  # request fields; inputs as sha256 + size only
    result: dict[str, Any] | None  # the sync response object, once succeeded
    error: dict[str, Any] | None  # {"status", "error", "message"}, once failed
    attempts: list[dict[str, Any]]
    progress: dict[str, Any] = field(default_factory=initial_progress)  # {"fraction", "step", "total", "peer_id"}
    parent_id: str | None = None  # the workflow this record is a step of

    def to_json(self) -> dict[str, Any]:
        """The API's record shape (``GET /v1/jobs/{id}``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "request": self.request,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "parent_id": self.parent_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        """A record from the API's shape (the inverse of :meth:`to_json`); InvalidRecord when it does not fit."""
        try:
            record = cls(
                id=str(data["id"]),
                kind=str(data["kind"]),
                state=JobState(data["state"]),
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
                request=dict(data["request"]),
                result=None if data.get("result") is None else dict(data["result"]),
                error=None if data.get("error") is None else dict(data["error"]),
                attempts=[dict(a) for a in data.get("attempts", [])],
                progress=dict(data.get("progress") or initial_progress()),
                parent_id=None if data.get("parent_id") is None else str(data["parent_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRecord(f"not a job record: {exc!r}") from exc
        if not _JOB_ID.fullmatch(record.id):
            raise InvalidRecord(f"job id {record.id[:80]!r} is not 'job_' and 24 hex digits")
        return record


JOB_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "jobs",
        1,
        (
            # seq orders records by creation even when the caller's wall clock steps back.
            "CREATE TABLE jobs ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT NOT NULL UNIQUE,"
            " kind TEXT NOT NULL,"
            " state TEXT NOT NULL CHECK (state IN"
            " ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),"
            " created_at REAL NOT NULL,"
            " updated_at REAL NOT NULL,"
            " request TEXT NOT NULL,"
            " result TEXT,"
            " error TEXT,"
            " attempts TEXT NOT NULL,"
            " progress TEXT NOT NULL,"
            " parent_id TEXT REFERENCES jobs(id) ON DELETE CASCADE)",
            "CREATE INDEX jobs_by_state ON jobs (state, seq)",
            "CREATE INDEX jobs_by_parent ON jobs (parent_id, seq)",
            "CREATE TABLE job_receipts ("
            " job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
            " idx INTEGER NOT NULL CHECK (idx >= 0),"
            " receipt BLOB NOT NULL,"
            " PRIMARY KEY (job_id, idx)) WITHOUT ROWID",
        ),
    ),
)

_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_JOB_ID = re.compile(r"job_[0-9a-f]{24}")
_COLUMNS = "id, kind, state, created_at, updated_at, request, result, error, attempts, progress, parent_id"


@dataclass
class _Live:
    """A queued/running record created or changed by this process, with its freshest progress."""

    record: JobRecord
    persisted_at: float  # the caller's `now` when its progress last reached the database


class JobRecords:
    """The job records of one node, over an open :class:`Store` (opened with :data:`JOB_MIGRATIONS`)."""

    def __init__(self, store: Store, *, progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S) -> None:
        self._store = store
        self._progress_interval_s = progress_interval_s
        self._live: dict[str, _Live] = {}

    async def create(
        self,
        kind: str,
        request: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        now: float,
        state: JobState = JobState.QUEUED,
        job_id: str | None = None,
    ) -> JobRecord:
        """A new ``queued`` record (or ``running``, for a job that starts at once: one write, not two);
        ``parent_id`` must name an existing record; ``job_id``: the id to give it (a new one if None)."""
        if job_id is not None and not _JOB_ID.fullmatch(job_id):
            raise InvalidRecord(f"job id {job_id[:80]!r} is not 'job_' and 24 hex digits")
        if not _KIND.fullmatch(kind):
            raise InvalidRecord(f"job kind {kind!r} is not a short lowercase name")
        if JobState(state) in TERMINAL:
            raise InvalidRecord(f"a record starts queued or running, not {state}")
        request_json = _encode("request", dict(request))
        progress = initial_progress()
        record = JobRecord(
            id=job_id or "job_" + secrets.token_hex(12),
            kind=kind,
            state=JobState(state),
            created_at=now,
            updated_at=now,
            request=json.loads(request_json),  # a copy: the caller's dict may change after this
            result=None,
            error=None,
            attempts=[],
            progress=progress,
            parent_id=parent_id,
        )
        try:
            await self._store.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, '[]', ?, ?)",
                (record.id, kind, record.state.value, now, now, request_json, _encode("progress", progress), parent_id),
            )
        except ConstraintViolation as exc:
            if parent_id is not None and "FOREIGN KEY" in str(exc):
                raise UnknownJob(parent_id) from exc
            raise
        self._remember(record, persisted_at=now)
        return record

    async def update(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        attempts: list[dict[str, Any]] | None = None,
        progress: Mapping[str, Any] | None = None,
        receipts: Sequence[tuple[int, bytes]] = (),
        now: float,
    ) -> JobRecord:
        """Change the given fields (None = leave as is) and ``updated_at``; answer the new record.

        ``receipts`` ((index, signed bytes), as :meth:`add_receipt` takes them) are kept in the
        same transaction: a job's final record and its receipts land together or not at all.
        Raises :class:`UnknownJob`, or :class:`JobFinished` when the record is already terminal:
        a finished record is never reopened or rewritten.
        """
        for index, receipt in receipts:
            _check_receipt(index, receipt)
        progress_json = None if progress is None else _encode("progress", dict(progress))
        quiet = state is None and result is None and error is None and attempts is None and not receipts
        if quiet and progress_json is not None:
            live = self._live.get(job_id)
            if live is not None:
                return await self._progress_only(live, json.loads(progress_json), progress_json, now)
        changes: dict[str, str | float | None] = {"updated_at": now}
        if state is not None:
            changes["state"] = JobState(state).value
        if result is not None:
            changes["result"] = _encode("result", dict(result))
        if error is not None:
            changes["error"] = _encode("error", dict(error))
        if attempts is not None:
            changes["attempts"] = _encode("attempts", list(attempts))
        live = self._live.get(job_id)
        if progress_json is not None:
            changes["progress"] = progress_json
        elif live is not None:  # progress held back in memory goes out with this change
            changes["progress"] = _encode("progress", live.record.progress)
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        receipt_rows = [(job_id, index, bytes(receipt)) for index, receipt in receipts]

        def change(tx: SyncTransaction) -> tuple[sqlite3.Row | None, sqlite3.Row | None]:
            # one transaction, one hop: the final record and its receipts land together or not at all
            row = tx.fetch_one(
                f"UPDATE jobs SET {assignments} WHERE id = :id AND state IN {_LIVE_STATES} RETURNING {_COLUMNS}",
                {**changes, "id": job_id},
            )
            if row is None:  # why not: no such record, or a finished one
                return None, tx.fetch_one("SELECT state FROM jobs WHERE id = ?", (job_id,))
            if receipt_rows:
                try:
                    tx.executemany("INSERT INTO job_receipts (job_id, idx, receipt) VALUES (?, ?, ?)", receipt_rows)
                except ConstraintViolation as exc:
                    raise InvalidRecord(f"job {job_id} already has one of receipts {[i for i, _ in receipts]}") from exc
            return row, None

        row, found = await self._store.atomic(change)
        if row is None:
            if found is None:
                raise UnknownJob(job_id)
            self._live.pop(job_id, None)
            raise JobFinished(job_id, JobState(found["state"]))
        record = _record(row)
        self._remember(record, persisted_at=now)
        return record

    async def save(self, record: JobRecord) -> None:
        """Insert ``record`` as it is, or replace the stored one with the same id (for a manager that
        builds records itself). ``kind``, ``created_at``, ``request`` and ``parent_id`` of a stored
        record never change; a terminal stored record may only be saved again unchanged
        (:class:`JobFinished` otherwise)."""
        if not _KIND.fullmatch(record.kind):
            raise InvalidRecord(f"job kind {record.kind!r} is not a short lowercase name")
        if not _JOB_ID.fullmatch(record.id):
            raise InvalidRecord(f"job id {record.id[:80]!r} is not 'job_' and 24 hex digits")
        values = {
            "id": record.id,
            "kind": record.kind,
            "state": JobState(record.state).value,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "request": _encode("request", record.request),
            "result": None if record.result is None else _encode("result", record.result),
            "error": None if record.error is None else _encode("error", record.error),
            "attempts": _encode("attempts", record.attempts),
            "progress": _encode("progress", record.progress),
            "parent_id": record.parent_id,
        }
        saved = _record(values)  # a copy: the caller's dicts may change after this
        columns = ", ".join(values)
        placeholders = ", ".join(f":{column}" for column in values)
        changing = ("state", "updated_at", "result", "error", "attempts", "progress")
        assignments = ", ".join(f"{column} = excluded.{column}" for column in changing)
        try:
            written = await self._store.execute(
                f"INSERT INTO jobs ({columns}) VALUES ({placeholders})"
                f" ON CONFLICT (id) DO UPDATE SET {assignments} WHERE jobs.state IN {_LIVE_STATES}",
                values,
            )
        except ConstraintViolation as exc:
            if record.parent_id is not None and "FOREIGN KEY" in str(exc):
                raise UnknownJob(record.parent_id) from exc
            raise
        if written.rowcount == 0:
            stored = await self.get(record.id)
            if stored is not None and stored != saved:
                self._live.pop(record.id, None)
                raise JobFinished(record.id, stored.state)
        self._remember(saved, persisted_at=record.updated_at)

    async def _progress_only(self, live: _Live, progress: dict[str, Any], progress_json: str, now: float) -> JobRecord:
        live.record = replace(live.record, progress=progress, updated_at=now)
        if now - live.persisted_at >= self._progress_interval_s:
            live.persisted_at = now
            written = await self._store.execute(
                f"UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND state IN {_LIVE_STATES}",
                (progress_json, now, live.record.id),
            )
            if written.rowcount == 0:  # finished meanwhile by a change that raced this one
                self._live.pop(live.record.id, None)
                found = await self.get(live.record.id)
                if found is None:
                    raise UnknownJob(live.record.id)
                raise JobFinished(found.id, found.state)
        return live.record

    async def flush_progress(self) -> None:
        """Write every progress still held in memory (e.g. before a clean shutdown), in one transaction."""
        written = [(live, live.record) for live in self._live.values()]  # as they are now, not after the await
        if not written:
            return
        await self._store.executemany(
            f"UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND state IN {_LIVE_STATES}",
            [(_encode("progress", record.progress), record.updated_at, record.id) for _, record in written],
        )
        for live, record in written:
            live.persisted_at = record.updated_at

    async def get(self, job_id: str) -> JobRecord | None:
        live = self._live.get(job_id)
        if live is not None:
            return live.record
        row = await self._store.fetch_one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _record(row)

    async def list(
        self,
        *,
        limit: int = 50,
        state: JobState | None = None,
        parent_id: str | None = None,
        before: str | None = None,
    ) -> list[JobRecord]:
        """Records newest first, optionally only those in ``state`` / with ``parent_id``; 1 <= limit <= 500.

        ``before``: only records created before that one (the last id of a page gives the next page;
        an unknown id gives none).
        """
        _check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if before is not None:
            where.append("seq < (SELECT seq FROM jobs WHERE id = ?)")
            params.append(before)
        if state is not None:
            where.append("state = ?")
            params.append(JobState(state).value)
        if parent_id is not None:
            where.append("parent_id = ?")
            params.append(parent_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._store.fetch_all(
            f"SELECT {_COLUMNS} FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*params, limit), max_rows=MAX_LIST
        )
        return [self._freshest(_record(row)) for row in rows]

    async def children(self, parent_id: str) -> builtins.list[JobRecord]:
        """A workflow's step records, in the order they were created (at most 500)."""
        rows = await self._store.fetch_all(
            f"SELECT {_COLUMNS} FROM jobs WHERE parent_id = ? ORDER BY seq LIMIT ?",
            (parent_id, MAX_LIST),
            max_rows=MAX_LIST,
        )
        return [self._freshest(_record(row)) for row in rows]

    async def add_receipt(self, job_id: str, index: int, receipt: bytes) -> None:
        """Keep the signed receipt of the record's ``index``-th network job (0-based; once per index)."""
        _check_receipt(index, receipt)
        try:
            await self._store.execute(
                "INSERT INTO job_receipts (job_id, idx, receipt) VALUES (?, ?, ?)", (job_id, index, bytes(receipt))
            )
        except ConstraintViolation as exc:
            if "FOREIGN KEY" in str(exc):
                raise UnknownJob(job_id) from exc
            raise InvalidRecord(f"job {job_id} already has a receipt {index}") from exc

    async def receipt(self, job_id: str, index: int) -> bytes | None:
        row = await self._store.fetch_one(
            "SELECT receipt FROM job_receipts WHERE job_id = ? AND idx = ?", (job_id, index)
        )
        return None if row is None else bytes(row["receipt"])

    async def mark_interrupted(self, now: float) -> int:
        """Every queued or running record becomes ``interrupted`` (call once at node start); how many did.

        A try the record still shows running ran when the node stopped: it becomes ``interrupted`` too.
        """
        error = _encode("error", INTERRUPTED_ERROR)

        def mark(tx: SyncTransaction) -> int:
            # at most the requests and workflow steps one run of the node held at once
            rows = tx.fetch_all(f"SELECT id, attempts FROM jobs WHERE state IN {_LIVE_STATES}")
            tx.executemany(
                "UPDATE jobs SET state = ?, updated_at = ?, error = coalesce(error, ?), attempts = ? WHERE id = ?",
                [
                    (
                        JobState.INTERRUPTED.value,
                        now,
                        error,
                        _encode("attempts", interrupted_attempts(json.loads(row["attempts"]))),
                        row["id"],
                    )
                    for row in rows
                ],
            )
            return len(rows)

        marked = await self._store.atomic(mark)
        self._live.clear()
        return marked

    async def prune(self, *, keep: int) -> int:
        """Delete finished top-level records (with their steps and receipts) beyond the ``keep`` newest;
        how many top-level records went. Live records are never pruned."""
        if keep < 0:
            raise InvalidRecord(f"keep must be >= 0, not {keep}")
        written = await self._store.execute(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs"
            f" WHERE parent_id IS NULL AND state IN {_TERMINAL_STATES} ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (keep,),
        )
        return written.rowcount

    def _remember(self, record: JobRecord, *, persisted_at: float) -> None:
        if record.state in TERMINAL:
            self._live.pop(record.id, None)
        elif record.id in self._live or len(self._live) < MAX_LIVE_CACHED:
            self._live[record.id] = _Live(record, persisted_at)

    def _freshest(self, record: JobRecord) -> JobRecord:
        live = self._live.get(record.id)
        return record if live is None else live.record


def _check_receipt(index: int, receipt: bytes) -> None:
    if not 0 <= index < MAX_RECEIPTS_PER_JOB:
        raise InvalidRecord(f"receipt index {index} is outside 0..{MAX_RECEIPTS_PER_JOB - 1}")
    if len(receipt) > MAX_RECEIPT_BYTES:
        raise RecordTooLarge("receipt", len(receipt), MAX_RECEIPT_BYTES)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRecord(f"limit must be within 1..{MAX_LIST}, not {limit}")


def _encode(what: str, value: dict[str, Any] | list[dict[str, Any]]) -> str:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{what} is not storable as JSON: {exc}") from exc
    size = len(text.encode())
    if size > MAX_JSON_BYTES:
        raise RecordTooLarge(what, size, MAX_JSON_BYTES)
    return text


def _record(row: sqlite3.Row | Mapping[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        state=JobState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        request=json.loads(row["request"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=None if row["error"] is None else json.loads(row["error"]),
        attempts=json.loads(row["attempts"]),
        progress=json.loads(row["progress"]),
        parent_id=row["parent_id"],
    )
