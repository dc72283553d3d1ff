"""The store's connection layer: SQLite connections, and the statements run on them, one hop each.

Every statement, transaction boundary and :meth:`lpnode.node.store.Store.atomic` body is a plain
function of a ``sqlite3.Connection`` (``_write``, ``_fetch``, ``_begin``, ...) that
:meth:`_Connection.call` runs whole where that connection lives, its sqlite3 errors mapped to the
store's own (:mod:`lpnode.node.store_errors`). Two backends:

- :class:`_AioConnection`: aiosqlite's thread per connection. Opening and closing go through
  aiosqlite's public (asyncio) API on the asyncio-over-trio loop that
  :func:`lpnode.node.store.open_store` opens; :class:`_Bridge` routes each such coroutine to that
  loop explicitly. Every statement in between is sent straight to the thread
  (``_aiosqlite_hop``): a "hop" there and back costs ~0.2 ms where a small statement takes ~0.02 ms.
- :class:`_InlineConnection`: plain :mod:`sqlite3` in the trio thread (``backend="inline"``):
  each call is one checkpoint, then the work.

Both open their connections with the same settings (:func:`_pragmas`): WAL first, so the writer,
opened first, switches the file to WAL before the reader opens it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import trio

from .store_errors import ConstraintViolation, StoreError

__all__ = ["Params", "Written"]

# Positional (``?``) or named (``:name``) parameters, as sqlite3 takes them.
Params = Sequence[Any] | Mapping[str, Any]

_T = TypeVar("_T")

_REAP_TIMEOUT_S = 5.0  # a failed connection's thread ends at once; never wait on a stuck one for long


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


class _Hop(Protocol):
    """How :class:`_AioConnection` sends a function to its aiosqlite thread and awaits the outcome:
    :func:`lpnode.node._aiosqlite_hop.run_on_connection_thread`, as :func:`lpnode.node.store.open_store` passes it."""

    def __call__(self, conn: aiosqlite.Connection, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


class _AioConnection(_Connection):
    """aiosqlite's thread per connection: opened and closed through the trio-asyncio bridge, every
    statement in between sent straight to the thread by ``hop`` (``_aiosqlite_hop``)."""

    def __init__(self, bridge: _Bridge, conn: aiosqlite.Connection, hop: _Hop) -> None:
        self._bridge = bridge
        self._conn = conn
        self._hop = hop
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

        return await self._hop(aconn, on_thread)

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
    # isolation_level=None: sqlite3 never opens transactions behind our back; Store.transaction does.
    proxy = aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)

    async def connect() -> aiosqlite.Connection:
        conn = await proxy
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
        await _reap_thread(proxy)
        detail = str(exc).removeprefix(f"{path}: ")  # _mapped_error named the path already
        raise StoreError(f"cannot open the database {path}: {detail}") from exc
    except BaseException:
        await _reap_thread(proxy)
        raise


async def _reap_thread(proxy: aiosqlite.Connection) -> None:
    """Wait (briefly) for the thread of a connection that failed to open to end.

    When sqlite3.connect fails (the path is a directory, unreadable, ...), aiosqlite stops the
    connection's thread without waiting for it; the thread then reports back to the asyncio loop,
    which :func:`lpnode.node.store.open_store` closes right after: two stray "Exception in thread"
    tracebacks on the terminal after the clean error. Joined here, the thread reports while the
    loop is still open. (0.22 keeps the thread in ``_thread``; before, the connection is the thread.)
    """
    thread = getattr(proxy, "_thread", proxy)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join, _REAP_TIMEOUT_S)


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
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
