"""The node's SQLite store: one database file, versioned schemas per component, transactional writes.

    async with open_store(data_dir / "node.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as store:
        await store.execute("INSERT INTO t (a) VALUES (?)", (1,))
        rows = await store.fetch_all("SELECT a FROM t WHERE a > ?", (0,))
        async with store.transaction() as tx:          # BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error
            await tx.execute("UPDATE t SET a = a + 1")
            row = await tx.fetch_one("SELECT count(*) AS n FROM t")
        n = await store.atomic(lambda tx: tx.execute("DELETE FROM t").rowcount)  # the same, one plain function

Each component (``"jobs"``, ``"reputation"``, ...) owns a line of :class:`Migration` s numbered
1, 2, 3, ...; opening applies the pending ones and refuses a database written by a newer lpnode
(:class:`SchemaTooNew`). How: :mod:`lpnode.node.store_migrations`.

Durability: WAL with ``synchronous=NORMAL`` by default. In WAL mode a commit has reached the
WAL file (the OS page cache) before it returns, so a killed process (kill -9, a crash) loses no
committed row; only a power cut or kernel panic can lose the last transactions, never corrupt the
file. ``synchronous="FULL"`` adds an fsync per commit for power-loss durability at a few ms per
commit on ordinary disks; the node's records (jobs, reputation evidence) are not worth that.
The job outputs the records name follow the same setting (:mod:`lpnode.node.output_files`).

Concurrency: one writer connection behind a ``trio.Lock`` (every write, and every transaction, is
serialised) and one query-only reader connection for :meth:`Store.fetch_all` / :meth:`Store.fetch_one`,
so reads never wait behind a transaction and never see its uncommitted rows (WAL snapshots).
Inside a transaction use the handle's methods: they run on the writer and see its own writes.

aiosqlite speaks asyncio only; lpnode runs on trio. The bridge (``trio_asyncio``) lives in the
store's modules and nowhere else: :func:`open_store` opens an asyncio loop on top of trio for as
long as the store is open, and the connections (:mod:`lpnode.node.store_connections`) route every
call to it or to aiosqlite's threads. A :class:`Store` must therefore be used from inside the
``trio.run`` (and while the ``async with`` block) that opened it; any task of that run may call it,
but not another thread or another ``trio.run``.

Cost: with aiosqlite, SQLite's work runs on a thread of its own, and each trip there and back
(a "hop") costs ~0.2 ms where a small statement takes ~0.02 ms. So every call here is one hop:
a statement with its fetch and cursor close, a transaction's BEGIN, its COMMIT (or ROLLBACK).
:meth:`Store.atomic` runs a whole transaction, a plain function over a :class:`SyncTransaction`,
as one hop: the way to write several statements that need not await anything between them;
:meth:`Store.transaction` pays a hop per statement.

Backends: ``backend="aiosqlite"`` (the default, above) keeps SQLite's work off the event loop.
``backend="inline"`` runs the same statements with plain :mod:`sqlite3` in the trio thread itself:
the same file format, pragmas, migrations and API, no threads and no asyncio loop. It is for callers
whose statements are small and who need every await to be a pure trio checkpoint, e.g. a simulation
under an autojump ``MockClock``, where virtual time would jump while a worker thread runs and the
interleaving would stop being repeatable (``lpnode.simnet``). The caller chooses; the store does not
know why.
"""

from __future__ import annotations

import inspect
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import trio
import trio_asyncio

from ._aiosqlite_hop import run_on_connection_thread
from .store_connections import (
    Params,
    Written,
    _AioConnection,
    _begin,
    _Bridge,
    _commit,
    _connect,
    _connect_inline,
    _Connection,
    _fetch,
    _fetch_one,
    _InlineConnection,
    _mapped,
    _rollback,
    _write,
    _write_many,
)
from .store_errors import ConstraintViolation, SchemaTooNew, StoreError
from .store_migrations import _VERSIONS, Migration, _migrate, _plan

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_MAX_ROWS",
    "Backend",
    "ConstraintViolation",
    "Migration",
    "Params",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "SyncTransaction",
    "Synchronous",
    "Transaction",
    "Written",
    "open_store",
]

DEFAULT_BUSY_TIMEOUT_MS = 5_000  # another process holding the write lock: wait this long, then fail
DEFAULT_MAX_ROWS = 10_000  # a query returning more than this is a bug (missing LIMIT), not a result

Backend = Literal["aiosqlite", "inline"]

# SQLite's synchronous pragma in WAL mode, and the node's durability rule (module docstring);
# lpnode.node.output_files keeps outputs by the same setting.
Synchronous = Literal["NORMAL", "FULL"]

_T = TypeVar("_T")


async def _hop(conn: aiosqlite.Connection, fn: Callable[[], _T]) -> _T:
    """The aiosqlite connections' one way to their thread. ``run_on_connection_thread`` is looked up
    in this module at each call, so a test can count the hops by patching it here
    (tests/node/test_store_atomic.py)."""
    return await run_on_connection_thread(conn, fn)


class _Statements:
    """execute / executemany / fetch_all / fetch_one over one connection; shared by Store reads and Transaction."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def _execute(self, sql: str, params: Params = ()) -> Written:
        return await self._conn.call(_write, sql, params)

    async def _executemany(self, sql: str, params: Iterable[Params]) -> Written:
        return await self._conn.call(_write_many, sql, list(params))

    async def _fetch_all(self, sql: str, params: Params = (), *, max_rows: int = DEFAULT_MAX_ROWS) -> list[sqlite3.Row]:
        return await self._conn.call(_fetch, sql, params, max_rows)

    async def _fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        return await self._conn.call(_fetch_one, sql, params)


class Transaction(_Statements):
    """The handle :meth:`Store.transaction` gives: statements on the writer, inside one transaction.

    It sees its own uncommitted writes. It is dead once the ``async with`` block ends.
    """

    def __init__(self, conn: _Connection) -> None:
        super().__init__(conn)
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise StoreError("transaction already ended: use the handle only inside its `async with` block")

    async def execute(self, sql: str, params: Params = ()) -> Written:
        self._check()
        return await self._execute(sql, params)

    async def executemany(self, sql: str, params: Iterable[Params]) -> Written:
        self._check()
        return await self._executemany(sql, params)

    async def fetch_all(self, sql: str, params: Params = (), *, max_rows: int = DEFAULT_MAX_ROWS) -> list[sqlite3.Row]:
        """Rows of a query (or of a write with ``RETURNING``); more than ``max_rows`` is a StoreError."""
        self._check()
        return await self._fetch_all(sql, params, max_rows=max_rows)

    async def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row, or None."""
        self._check()
        return await self._fetch_one(sql, params)


class SyncTransaction:
    """The handle :meth:`Store.atomic` hands its function: the same statements as :class:`Transaction`,
    as plain blocking calls, inside the one transaction. Errors are already ours (a broken constraint
    is a :class:`ConstraintViolation` the function may catch). Dead once the function returns.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._open = True

    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if not self._open:
            raise StoreError("transaction already ended: use the handle only inside its function")
        return _mapped(self._path, fn, self._conn, args)

    def execute(self, sql: str, params: Params = ()) -> Written:
        return self._run(_write, sql, params)

    def executemany(self, sql: str, params: Iterable[Params]) -> Written:
        return self._run(_write_many, sql, list(params))

    def fetch_all(self, sql: str, params: Params = (), *, max_rows: int = DEFAULT_MAX_ROWS) -> list[sqlite3.Row]:
        """Rows of a query (or of a write with ``RETURNING``); more than ``max_rows`` is a StoreError."""
        return self._run(_fetch, sql, params, max_rows)

    def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row, or None."""
        return self._run(_fetch_one, sql, params)


def _atomically(conn: sqlite3.Connection, path: Path, fn: Callable[[SyncTransaction], _T]) -> _T:
    """BEGIN IMMEDIATE, ``fn``, COMMIT; ROLLBACK and re-raise on any error: :meth:`Store.atomic`'s one hop."""
    _begin(conn)
    tx = SyncTransaction(conn, path)
    try:
        result = fn(tx)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "coroutine was never awaited" warning on top of the error
            raise TypeError("Store.atomic takes a plain function; it returned an awaitable (an async def?)")
        _commit(conn)
    except BaseException:
        tx._open = False
        conn.rollback()  # a no-op when _commit's own rollback already ended it
        raise
    tx._open = False
    return result


class Store:
    """An open database; built by :func:`open_store` only. See the module docstring for the rules."""

    def __init__(self, path: Path, writer: _Connection, reader: _Connection) -> None:
        self.path = path
        self._writer = writer
        self._reads = _Statements(reader)
        self._write_lock = trio.Lock()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")

    async def execute(self, sql: str, params: Params = ()) -> Written:
        """One write statement, committed on its own (SQLite autocommit) before this returns.

        Like :meth:`atomic`, a write once under way is waited for even by a cancelled caller:
        it returns (committed) or raises, never leaves the outcome unknown.
        """
        self._check()
        async with self._write_lock:
            self._check()
            return await self._writer.call_to_end(_write, sql, params)

    async def executemany(self, sql: str, params: Iterable[Params]) -> Written:
        """One statement for each parameter set, all committed together."""
        rows = list(params)
        return await self.atomic(lambda tx: tx.executemany(sql, rows))

    async def fetch_all(self, sql: str, params: Params = (), *, max_rows: int = DEFAULT_MAX_ROWS) -> list[sqlite3.Row]:
        """Rows of a read-only query on the latest committed state; more than ``max_rows`` is a StoreError."""
        self._check()
        return await self._reads._fetch_all(sql, params, max_rows=max_rows)

    async def fetch_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        """The first row of a read-only query on the latest committed state, or None."""
        self._check()
        return await self._reads._fetch_one(sql, params)

    async def atomic(self, fn: Callable[[SyncTransaction], _T]) -> _T:
        """Run ``fn(tx)`` in one transaction (BEGIN IMMEDIATE ... COMMIT) and answer what it returns;
        on any error in it, ROLLBACK and re-raise.

        ``fn`` is a plain (not async) function: with the aiosqlite backend it runs on the writer's
        thread, so it must only run statements on ``tx`` and compute, never touch trio or block
        on anything else. The whole transaction costs one hop there and back, where
        :meth:`transaction` pays one per statement: use this when the statements do not need
        to await anything between them.

        Cancellation: once submitted, ``fn`` runs to its end on the thread, so this waits for it
        shielded (SQLite's busy timeout bounds the wait): the caller learns committed (a return)
        or not (a raise), never "unknown". A cancel before submission leaves nothing done.
        """
        self._check()
        async with self._write_lock:
            self._check()
            result: _T = await self._writer.call_to_end(_atomically, self.path, fn)
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` (the write lock up front, so no upgrade deadlock with another process);
        COMMIT when the block ends, ROLLBACK when it raises (cancellation included) and re-raise.

        For statements that must await something between them; otherwise :meth:`atomic` costs
        one hop in all instead of one per statement. Writes wait for each other here. Calling
        the Store's own ``execute`` inside the block is a bug (trio refuses to re-acquire the
        lock): use the handle.
        """
        self._check()
        async with self._write_lock:
            self._check()
            tx = Transaction(self._writer)
            try:
                # BEGIN inside the try: a cancel landing while it runs on the thread must still roll back
                await self._writer.call(_begin)
                yield tx
            except BaseException:
                tx._open = False
                # Shielded: a cancelled task must still leave the connection outside any transaction.
                # SQLite's busy timeout bounds how long this can take.
                with trio.CancelScope(shield=True):
                    await self._writer.call(_rollback)
                raise
            tx._open = False
            with trio.CancelScope(shield=True):
                await self._writer.call(_commit)  # COMMIT, or ROLLBACK and raise: one hop either way

    async def versions(self) -> dict[str, int]:
        """Schema version of every component this database has seen."""
        rows = await self.fetch_all(_VERSIONS)
        return {row["component"]: row["version"] for row in rows}

    async def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` or the first problems found."""
        rows = await self.fetch_all("PRAGMA integrity_check", max_rows=100)
        return "\n".join(str(row[0]) for row in rows)


@asynccontextmanager
async def open_store(
    path: Path,
    migrations: Sequence[Migration],
    *,
    synchronous: Synchronous = "NORMAL",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    backend: Backend = "aiosqlite",
) -> AsyncIterator[Store]:
    """Open (create) the database at ``path``, bring each component's schema up to date, yield the Store.

    ``backend`` picks how statements run (module docstring): aiosqlite threads, or ``"inline"`` sqlite3.

    Raises :class:`SchemaTooNew` for a database written by a newer lpnode, :class:`StoreError`
    when the file cannot be opened or is not a database, or a migration fails (that
    migration is rolled back; the ones before it stay).
    """
    plan = _plan(migrations)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a directory in its place: SQLite's own word for it is "unable to open database file"
    # a stat, not worth a thread hop (and a simulation under a virtual clock opens stores: a thread lets it jump)
    if os.path.isdir(path):  # noqa: ASYNC240
        raise StoreError(f"cannot open the database {path}: it is a directory, not a file; move it away")
    if backend == "inline":
        async with _inline_connections(path, synchronous, busy_timeout_ms) as store:
            await _migrate(store, plan)
            try:
                yield store
            finally:
                store._closed = True
        return
    try:
        async with (
            trio_asyncio.open_loop() as loop,
            _connections(_Bridge(loop, path), synchronous, busy_timeout_ms) as store,
        ):
            await _migrate(store, plan)
            try:
                yield store
            finally:
                store._closed = True
    except BaseExceptionGroup as group:
        # open_loop runs our body inside its own nurseries, which wrap every exception (the
        # caller's included) in groups; hand the caller back the one exception it raised.
        single = _sole_exception(group)
        if single is None:
            raise
        raise single from single.__cause__


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def _connections(bridge: _Bridge, synchronous: str, busy_timeout_ms: int) -> AsyncIterator[Store]:
    path = bridge.path
    # The writer first: it switches the file to WAL before the reader opens it.
    writer = await _connect(bridge, path, synchronous, busy_timeout_ms, query_only=False)
    try:
        reader = await _connect(bridge, path, synchronous, busy_timeout_ms, query_only=True)
        try:
            yield Store(path, _AioConnection(bridge, writer, _hop), _AioConnection(bridge, reader, _hop))
        finally:
            with trio.CancelScope(shield=True):
                await bridge.run(reader.close())
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(writer.close())


@asynccontextmanager
async def _inline_connections(path: Path, synchronous: str, busy_timeout_ms: int) -> AsyncIterator[Store]:
    """The same two connections as :func:`_connections` (writer first, for WAL), as plain sqlite3 ones."""
    await trio.lowlevel.checkpoint()
    writer = _InlineConnection(_connect_inline(path, synchronous, busy_timeout_ms, query_only=False), path)
    try:
        reader = _InlineConnection(_connect_inline(path, synchronous, busy_timeout_ms, query_only=True), path)
        try:
            yield Store(path, writer, reader)
        finally:
            with trio.CancelScope(shield=True):
                await reader.close()
    finally:
        with trio.CancelScope(shield=True):
            await writer.close()
