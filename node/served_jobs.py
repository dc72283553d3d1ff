"""What this node's worker served, kept: one row per job a requester accepted, for ``GET /v1/served``.

A worker's operator wants to know what the GPU did and earned. The worker logs one line
per accepted job (``job_worker._log_served``); this keeps the same facts in the node's
SQLite database, with the signed receipt of each delivered job (the seller's proof of the
work, as the requester's copy is the buyer's). A job earns its price only when its output
was delivered; a job that failed, was cancelled or abandoned is kept with what it was quoted.

The worker must never wait on the database: :meth:`ServedBook.note` queues a row without
blocking (a bounded queue; when it is full a row is dropped and counted, and the log line
still says what happened), and :func:`serve_served_book` writes the queue in the
background. The worker starts before the database opens (``run.py``): rows wait in the
queue until the writer starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from lpnode.protocol.errors import LpnodeError

from .store import Migration, Store, SyncTransaction

log = logging.getLogger(__name__)

PENDING_ROWS = 1024  # rows queued for the writer; a burst past it loses rows, never blocks the worker
MAX_PAGE = 500
DELIVERED = "delivered"
OUTCOMES = (DELIVERED, "cancelled", "failed", "abandoned")

SERVED_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "served",
        1,
        (
            "CREATE TABLE served ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " job_id TEXT NOT NULL,"
            " requester_peer_id TEXT NOT NULL,"
            " pipeline TEXT NOT NULL,"
            " model_id TEXT NOT NULL,"
            " outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'cancelled', 'failed', 'abandoned')),"
            " detail TEXT NOT NULL,"
            " price INTEGER NOT NULL,"  # what the worker quoted; earned only when delivered
            " run_ms INTEGER,"
            " ended_at REAL NOT NULL,"
            " receipt BLOB)",
            "CREATE INDEX served_by_outcome ON served (outcome, seq)",
        ),
    ),
    Migration(
        "served",
        2,
        (
            # Totals kept as rows land (and as old rows are pruned, they stay): a scan of the whole
            # table on every GET cost 240 ms at 400k rows (review).
            "CREATE TABLE served_totals ( outcome TEXT PRIMARY KEY, jobs INTEGER NOT NULL, price INTEGER NOT NULL)",
            "INSERT INTO served_totals SELECT outcome, count(*), coalesce(sum(price), 0) FROM served GROUP BY outcome",
        ),
    ),
)
# Rows kept, newest first; older ones are pruned (their totals stay). A row with its receipt is ~1.4 kB.
MAX_ROWS = 100_000
PRUNE_EVERY = 1_000  # rows written between prunes
_COLUMNS = "seq, job_id, requester_peer_id, pipeline, model_id, outcome, detail, price, run_ms, ended_at, receipt"


@dataclass(frozen=True)
class ServedJob:
    job_id: str
    requester_peer_id: str
    pipeline: str
    model_id: str
    outcome: str  # one of OUTCOMES
    detail: str  # why it ended so, for the ones that did not deliver ("" otherwise)
    price: int  # micro-credits quoted
    run_ms: int | None  # None: it never ran
    ended_at: float  # wall clock, seconds
    receipt: bytes | None  # the signed receipt, when one was made

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")


class ServedBook:
    """The queue the worker notes into, and the queries the RPC answers from (once a store is attached)."""

    def __init__(self, pending: int = PENDING_ROWS) -> None:
        self._send, self._receive = trio.open_memory_channel[ServedJob](pending)
        self._store: Store | None = None
        self.dropped = 0  # rows not kept: the queue was full, or the database refused them
        self._written = trio.Event()  # set (and replaced) each time a row lands: long-polls wait on it
        self._noted = 0  # rows queued so far
        self._settled = 0  # of them, written or given up on

    def note(self, job: ServedJob) -> None:
        """Queue ``job`` for the database; never blocks (the worker calls this at each job's end)."""
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("served-jobs queue full: job %s not kept (%d lost so far)", job.job_id[:12], self.dropped)
            return
        self._noted += 1

    async def flush(self) -> None:
        """Return once every row queued so far is written (or given up on): the node calls this
        as it stops, after the worker has ended its jobs, so their rows are not lost with the queue."""
        goal = self._noted
        while self._settled < goal:
            await self._written.wait()

    async def page(
        self, limit: int = 50, before: int | None = None, outcome: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows newest first, as the API shows them; ``before``: the ``seq`` that ended the previous page."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}")
        where: list[str] = []
        params: list[Any] = []
        if before is not None:
            where.append("seq < ?")
            params.append(before)
        if outcome is not None:
            where.append("outcome = ?")
            params.append(outcome)
        rows = await self._open().fetch_all(
            f"SELECT {_COLUMNS} FROM served {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
            max_rows=MAX_PAGE,
        )
        return [_row(row) for row in rows]

    async def totals(self) -> dict[str, int]:
        """Jobs served by outcome, and micro-credits earned (the prices of the delivered ones), since the
        database began: pruned rows still count."""
        rows = await self._open().fetch_all("SELECT outcome, jobs, price FROM served_totals")
        counts = {outcome: 0 for outcome in OUTCOMES}
        earned = 0
        for outcome, count, price in rows:
            counts[outcome] = count
            earned += price if outcome == DELIVERED else 0
        return {**counts, "earned": earned, "not_kept": self.dropped}

    async def wait_rows_above(self, seq: int) -> None:
        """Return once a row newer than ``seq`` is in the database (a client waiting for a job it saw end)."""
        while True:
            landed = self._written  # taken before the read: a row landing during it still wakes us
            row = await self._open().fetch_one("SELECT max(seq) FROM served")
            if row is not None and row[0] is not None and row[0] > seq:
                return
            await landed.wait()

    def _landed(self) -> None:
        self._written.set()
        self._written = trio.Event()

    async def receipt(self, seq: int) -> bytes | None:
        row = await self._open().fetch_one("SELECT receipt FROM served WHERE seq = ?", (seq,))
        return None if row is None else row[0]

    def _open(self) -> Store:
        if self._store is None:
            raise RuntimeError("the served-jobs book has no database yet")
        return self._store


async def serve_served_book(
    book: ServedBook,
    store: Store,
    *,
    max_rows: int = MAX_ROWS,
    prune_every: int = PRUNE_EVERY,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write what the worker notes into ``store`` (opened with :data:`SERVED_MIGRATIONS`) until cancelled.

    Keeps the newest ``max_rows`` rows (pruned every ``prune_every`` rows written); the totals keep all.
    A row the database refuses is counted as not kept and logged: the writer, and the node, go on.
    """
    book._store = store
    task_status.started()
    written = 0
    async for job in book._receive:
        try:
            prune = max_rows if written % prune_every == prune_every - 1 else None
            await store.atomic(partial(_insert, job, prune=prune))
            written += 1
        except LpnodeError as exc:  # locked past its timeout, disk full: this row is lost, the node serves on
            book.dropped += 1
            log.warning("served job %s not kept: %s (%d lost so far)", job.job_id[:12], exc, book.dropped)
        book._settled += 1
        book._landed()


def _insert(job: ServedJob, tx: SyncTransaction, *, prune: int | None) -> None:
    """The row and its totals in one transaction; then, when ``prune`` says how many to keep, the oldest go."""
    tx.execute(
        "INSERT INTO served (job_id, requester_peer_id, pipeline, model_id, outcome, detail, price, run_ms,"
        " ended_at, receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.job_id,
            job.requester_peer_id,
            job.pipeline,
            job.model_id,
            job.outcome,
            job.detail[:500],
            job.price,
            job.run_ms,
            job.ended_at,
            job.receipt,
        ),
    )
    tx.execute(
        "INSERT INTO served_totals (outcome, jobs, price) VALUES (?, 1, ?)"
        " ON CONFLICT (outcome) DO UPDATE SET jobs = jobs + 1, price = price + excluded.price",
        (job.outcome, job.price),
    )
    if prune is not None:
        tx.execute("DELETE FROM served WHERE seq <= (SELECT max(seq) FROM served) - ?", (prune,))


def _row(row: Any) -> dict[str, Any]:
    seq, job_id, requester, pipeline, model_id, outcome, detail, price, run_ms, ended_at, receipt = row
    return {
        "seq": seq,
        "job_id": job_id,
        "requester_peer_id": requester,
        "pipeline": pipeline,
        "model_id": model_id,
        "outcome": outcome,
        "detail": detail,
        "price": price,
        "earned": price if outcome == DELIVERED else 0,
        "run_ms": run_ms,
        "ended_at": ended_at,
        "has_receipt": receipt is not None,
    }


__all__ = ["DELIVERED", "OUTCOMES", "SERVED_MIGRATIONS", "ServedBook", "ServedJob", "serve_served_book"]
