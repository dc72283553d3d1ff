"""The node's SQLite store: one database file, versioned schemas per component, transactional writes.

    async with open_store(data_dir / "node.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as store:
        await store.execute("INSERT INTO t (a) VALUES (?)", (1,))
        rows = await store.fetch_all("SELECT a FROM t WHERE a > ?", (0,))
        async with store.transaction() as tx:          # BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error
            await tx.execute("UPDATE t SET a = a + 1")
            row = await tx.fetch_one("SELECT count(*) AS n FROM t")
        n = await store.atomic(lambda tx: tx.execute("DELETE FROM t").rowcount)  # the same, one plain function

Each component (``"jobs"``, ``"reputation"``, ...) owns a line of :class:`Migration` s numbered
1, 2, 3, ...; ``schema_versions`` records how far each component's schema is. Opening applies the
pending ones, each in its own transaction, and refuses a database whose schema for a component is
newer than this code (:class:`SchemaTooNew`): an older binary must not write into a newer layout.

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

aiosqlite speaks asyncio only; lpnode runs on trio. The bridge (``trio_asyncio``) lives in this
module and nowhere else: :func:`open_store` opens an asyncio loop on top of trio for as long as
the store is open, and every call is routed to that loop explicitly. A :class:`Store` must
therefore be used from inside the ``trio.run`` (and while the ``async with`` block) that opened
it; any task of that run may call it, but not another thread or another ``trio.run``.

Cost: with aiosqlite, SQLite's work runs on a thread of its own, and each trip there and back
through trio-asyncio (a "hop") costs ~0.2 ms where a small statement takes ~0.02 ms. So every
call here is one hop: a statement with its fetch and cursor close, a transaction's BEGIN, its
COMMIT (or ROLLBACK). :meth:`Store.atomic` runs a whole transaction, a plain function over a
:class:`SyncTransaction`, as one hop: the way to write several statements that need not await
anything between them; :meth:`Store.transaction` pays a hop per statement.

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
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import trio
import trio_asyncio
from lpnode.protocol.errors import LpnodeError

from ._aiosqlite_hop import run_on_connection_thread

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

# Positional (``?``) or named (``:name``) parameters, as sqlite3 takes them.
Params = Sequence[Any] | Mapping[str, Any]

Backend = Literal["aiosqlite", "inline"]

# SQLite's synchronous pragma in WAL mode, and the node's durability rule (module docstring);
# lpnode.node.output_files keeps outputs by the same setting.
Synchronous = Literal["NORMAL", "FULL"]

_VERSIONS = "SELECT component, version FROM schema_versions"
_COMPONENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_T = TypeVar("_T")


class StoreError(LpnodeError):
    """The database cannot be opened, migrated, read or written."""


class SchemaTooNew(StoreError):
    """The database holds a newer schema for ``component`` than this code knows: refuse to touch it."""

    def __init__(self, path: Path, component: str, found: int, known: int) -> None:
        super().__init__(
            f"{path}: schema of {component!r} is at version {found}, this lpnode knows up to {known}; "
            "upgrade lpnode or use another data directory"
        )
        self.component = component
        self.found = found
        self.known = known


class ConstraintViolation(StoreError):
    """A write broke a UNIQUE, FOREIGN KEY, CHECK or NOT NULL constraint (sqlite3.IntegrityError)."""


@dataclass(frozen=True)
class Migration:
    """One step of one component's schema: its ``statements`` run in one transaction.

    Versions of a component start at 1 and have no gaps; a released migration is never edited,
    a change is a new version. Statements that SQLite refuses inside a transaction
    (``VACUUM``, ``PRAGMA journal_mode``) do not belong here.
    """

    component: str  # who owns the tables, e.g. "jobs", "reputation"
    version: int  # 1, 2, 3, ... per component
    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _COMPONENT.fullmatch(self.component):
            raise ValueError(f"migration component {self.component!r} is not a short lowercase identifier")
        if self.version < 1:
            raise ValueError(f"migration {self.component} version {self.version}: versions start at 1")
        if not self.statements:
            raise ValueError(f"migration {self.component} v{self.version} has no statements")


@dataclass(frozen=True)
class Written:
    """What a write did: rows changed, and the rowid of the last INSERT (None when nothing was inserted)."""

    rowcount: int
    lastrowid: int | None


def _mapped_error(path: Path, exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return ConstraintViolation(f"{path}: {exc}")
    return StoreError(f"{path}: {exc}")


def _bounded(rows: list[sqlite3.Row], max_rows: int, sql: str) -> list[sqlite3.Row]:
    if len(rows) > max_rows:
        raise StoreError(f"query returned more than {max_rows} rows (add a LIMIT): {sql[:200]}")
    return rows


# -- statements as plain functions of a sqlite3 connection: each runs whole in one hop ------------------


def _write(conn: sqlite3.Connection, sql: str, params: Params) -> Written:
    cursor = conn.execute(sql, params)
    try:
        return Written(cursor.rowcount, cursor.lastrowid or None)
    finally:
        cursor.close()


def _write_many(conn: sqlite3.Connection, sql: str, params: list[Params]) -> Written:
    cursor = conn.executemany(sql, params)
    try:
        return Written(cursor.rowcount, cursor.lastrowid or None)
    finally:
        cursor.close()


def _fetch_one(conn: sqlite3.Connection, sql: str, params: Params) -> sqlite3.Row | None:
    # "the first row", as sqlite3's fetchone: a query matching several rows is not an error here
    cursor = conn.execute(sql, params)
    try:
        row: sqlite3.Row | None = cursor.fetchone()
        return row
    finally:
        cursor.close()


def _fetch(conn: sqlite3.Connection, sql: str, params: Params, max_rows: int) -> list[sqlite3.Row]:
    cursor = conn.execute(sql, params)
    try:
        rows = list(cursor.fetchmany(max_rows + 1))
    finally:
        cursor.close()
    return _bounded(rows, max_rows, sql)


def _begin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE").close()


def _commit(conn: sqlite3.Connection) -> None:
    try:
        conn.commit()
    except BaseException:
        # a failed COMMIT (SQLITE_BUSY, disk full) can leave the transaction open;
        # sqlite3's rollback() is a no-op when it is not
        conn.rollback()
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    conn.rollback()


def _mapped(path: Path, fn: Callable[..., _T], conn: sqlite3.Connection, args: tuple[Any, ...]) -> _T:
    """``fn(conn, *args)`` with sqlite3's errors turned into ours (where it runs: thread or trio)."""
    try:
        return fn(conn, *args)
    except sqlite3.Error as exc:
        raise _mapped_error(path, exc) from exc


class _Connection:
    """One SQLite connection as the store uses it; :class:`_AioConnection` or :class:`_InlineConnection`.

    :meth:`call` is the one way in: a plain function of the ``sqlite3.Connection`` runs whole where
    that connection lives, its sqlite3 errors mapped to ours. Every statement, transaction boundary
    and :meth:`Store.atomic` body is one such call: one hop to aiosqlite's thread and back.
    """

    path: Path

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        raise NotImplementedError

    async def call_to_end(self, fn: Callable[..., _T], *args: Any) -> _T:
        """:meth:`call`, but once ``fn`` is submitted a cancelled caller still waits for its end
        (SQLite's busy timeout bounds that): it learns whether ``fn`` returned or raised."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _Bridge:
    """Runs aiosqlite coroutines on the store's asyncio-over-trio loop, mapping sqlite errors to ours."""

    def __init__(self, loop: Any, path: Path) -> None:
        self._loop = loop
        self.path = path

    async def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            result: _T = await self._loop.run_aio_coroutine(coro)
        except sqlite3.Error as exc:
            raise _mapped_error(self.path, exc) from exc
        return result


class _AioConnection(_Connection):
    """aiosqlite's thread per connection: opened and closed through the trio-asyncio bridge, every
    statement in between sent straight to the thread (``_aiosqlite_hop``)."""

    def __init__(self, bridge: _Bridge, conn: aiosqlite.Connection) -> None:
        self._bridge = bridge
        self._conn = conn
        self.path = bridge.path

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        # aiosqlite has no public way to run a function on its connection thread: each public call
        # (execute, fetchone, cursor close, commit, ...) is a hop of its own, ~0.2 ms each where the SQL
        # itself takes ~0.02 ms. The function goes to that thread the way aiosqlite's own methods send
        # theirs, minus asyncio (``_aiosqlite_hop``); Connection._conn is the raw sqlite3 connection, to be
        # used on that thread only. Checked against aiosqlite 0.20.0, 0.21.0 and 0.22.1 (pyproject bounds
        # the version). Once queued, fn runs to its end whether or not anyone still awaits it.
        aconn = self._conn
        path = self.path

        def on_thread() -> _T:
            return _mapped(path, fn, aconn._conn, args)

        return await run_on_connection_thread(aconn, on_thread)

    async def call_to_end(self, fn: Callable[..., _T], *args: Any) -> _T:
        with trio.CancelScope(shield=True):
            result = await self.call(fn, *args)
        return result

    async def close(self) -> None:
        await self._bridge.run(self._conn.close())


class _InlineConnection(_Connection):
    """Plain sqlite3 in the trio thread (``backend="inline"``): each call is one checkpoint, then the work."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        await trio.lowlevel.checkpoint()
        return _mapped(self.path, fn, self._conn, args)

    async def call_to_end(self, fn: Callable[..., _T], *args: Any) -> _T:
        # fn runs after the checkpoint, synchronously: a cancel lands before it starts or not at all
        return await self.call(fn, *args)

    async def close(self) -> None:
        await self.call(sqlite3.Connection.close)


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
            yield Store(path, _AioConnection(bridge, writer), _AioConnection(bridge, reader))
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


def _plan(migrations: Sequence[Migration]) -> list[Migration]:
    """Migrations in the order to apply: components in order of first appearance, versions ascending."""
    by_component: dict[str, dict[int, Migration]] = {}
    for migration in migrations:
        versions = by_component.setdefault(migration.component, {})
        if migration.version in versions:
            raise ValueError(f"migration {migration.component} v{migration.version} given twice")
        versions[migration.version] = migration
    plan: list[Migration] = []
    for component, versions in by_component.items():
        if sorted(versions) != list(range(1, len(versions) + 1)):
            raise ValueError(f"migrations of {component!r} must be numbered 1..n without gaps: {sorted(versions)}")
        plan.extend(versions[v] for v in sorted(versions))
    return plan


_WAL = "PRAGMA journal_mode=WAL"


def _pragmas(synchronous: str, busy_timeout_ms: int, query_only: bool) -> tuple[str, ...]:
    """Every connection's settings, WAL first (both backends)."""
    return (
        _WAL,
        f"PRAGMA synchronous={synchronous}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        f"PRAGMA query_only={'ON' if query_only else 'OFF'}",
    )


async def _connect(
    bridge: _Bridge, path: Path, synchronous: str, busy_timeout_ms: int, *, query_only: bool
) -> aiosqlite.Connection:
    async def connect() -> aiosqlite.Connection:
        # isolation_level=None: sqlite3 never opens transactions behind our back; Store.transaction does.
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        try:
            conn.row_factory = sqlite3.Row
            for pragma in _pragmas(synchronous, busy_timeout_ms, query_only):
                async with conn.execute(pragma) as cursor:
                    mode = await cursor.fetchone()
                if pragma == _WAL and (mode is None or str(mode[0]).lower() != "wal"):
                    raise StoreError(f"{path}: SQLite refused WAL mode (got {mode and mode[0]!r})")
        except BaseException:
            await conn.close()
            raise
        return conn

    try:
        return await bridge.run(connect())
    except StoreError as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc


def _connect_inline(path: Path, synchronous: str, busy_timeout_ms: int, *, query_only: bool) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        for pragma in _pragmas(synchronous, busy_timeout_ms, query_only):
            mode = conn.execute(pragma).fetchone()
            if pragma == _WAL and (mode is None or str(mode[0]).lower() != "wal"):
                raise StoreError(f"cannot open the database {path}: SQLite refused WAL mode (got {mode and mode[0]!r})")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open the database {path}: {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


async def _migrate(store: Store, plan: list[Migration]) -> None:
    known: dict[str, int] = {}
    for migration in plan:
        known[migration.component] = max(known.get(migration.component, 0), migration.version)
    async with store.transaction() as tx:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL CHECK (version >= 1)) WITHOUT ROWID"
        )
        found = {str(row["component"]): int(row["version"]) for row in await tx.fetch_all(_VERSIONS)}
    for component, version in found.items():
        if component in known and version > known[component]:
            raise SchemaTooNew(store.path, component, version, known[component])
    for migration in plan:
        if found.get(migration.component, 0) >= migration.version:
            continue
        try:
            async with store.transaction() as tx:
                # Re-read under the write lock: another process may have migrated meanwhile.
                row = await tx.fetch_one(
                    "SELECT version FROM schema_versions WHERE component = ?", (migration.component,)
                )
                if row is not None and int(row["version"]) >= migration.version:
                    continue
                for statement in migration.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                    " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (migration.component, migration.version),
                )
        except StoreError as exc:
            raise StoreError(
                f"{store.path}: migration {migration.component} v{migration.version} failed: {exc}"
            ) from exc
