"""The store's one-hop paths: Store.atomic (results, errors, rollback, cancellation) and one hop per call."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import trio
import trio.testing
from lpnode.node.store import (
    Backend,
    ConstraintViolation,
    Migration,
    StoreError,
    SyncTransaction,
    Written,
    open_store,
)

BOTH = pytest.mark.parametrize("backend", ["aiosqlite", "inline"])
NOTES = Migration("notes", 1, ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)",))


class Boom(Exception):
    pass


@BOTH
async def test_atomic_answers_what_its_function_returns_and_commits(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES], backend=backend) as store:

        def add(tx: SyncTransaction) -> tuple[Written, Written, list[sqlite3.Row], sqlite3.Row | None]:
            first = tx.execute("INSERT INTO notes (body) VALUES (?)", ("a",))
            many = tx.executemany("INSERT INTO notes (body) VALUES (:body)", [{"body": "b"}, {"body": "c"}])
            rows = tx.fetch_all("UPDATE notes SET body = upper(body) WHERE body != 'a' RETURNING body")
            return first, many, rows, tx.fetch_one("SELECT count(*) AS n FROM notes")  # its own uncommitted rows

        first, many, rows, count = await store.atomic(add)
        assert first == Written(rowcount=1, lastrowid=1)
        assert many.rowcount == 2
        assert sorted(r["body"] for r in rows) == ["B", "C"]
        assert count is not None and count["n"] == 3
        stored = await store.fetch_all("SELECT body FROM notes ORDER BY id")  # the reader: committed
        assert [r["body"] for r in stored] == ["a", "B", "C"]
        nothing = await store.atomic(lambda tx: tx.execute("DELETE FROM notes WHERE body = 'zzz'"))
        assert nothing.rowcount == 0


@BOTH
async def test_atomic_rolls_back_on_any_error_and_maps_sqlite_errors(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES], backend=backend) as store:
        await store.execute("INSERT INTO notes (body) VALUES ('kept')")

        def duplicate(tx: SyncTransaction) -> None:
            tx.execute("INSERT INTO notes (body) VALUES ('lost')")
            tx.execute("INSERT INTO notes (body) VALUES ('kept')")

        with pytest.raises(ConstraintViolation, match="UNIQUE") as caught:
            await store.atomic(duplicate)
        assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)

        def boom(tx: SyncTransaction) -> None:
            tx.execute("DELETE FROM notes")
            raise Boom

        with pytest.raises(Boom):
            await store.atomic(boom)
        with pytest.raises(StoreError, match="syntax error"):
            await store.atomic(lambda tx: tx.execute("THIS IS NOT SQL"))

        def too_many(tx: SyncTransaction) -> None:
            tx.execute("INSERT INTO notes (body) VALUES ('lost too')")
            tx.fetch_all("SELECT * FROM notes", max_rows=1)

        with pytest.raises(StoreError, match="more than 1 rows"):
            await store.atomic(too_many)
        assert [r["body"] for r in await store.fetch_all("SELECT body FROM notes")] == ["kept"]

        # the function may catch our error and go on: what it did besides stays, once committed
        def tolerant(tx: SyncTransaction) -> bool:
            tx.execute("INSERT INTO notes (body) VALUES ('new')")
            try:
                tx.execute("INSERT INTO notes (body) VALUES ('kept')")
            except ConstraintViolation:
                return False
            return True

        assert await store.atomic(tolerant) is False
        assert len(await store.fetch_all("SELECT body FROM notes")) == 2


@BOTH
async def test_atomic_handle_dies_with_its_function_and_async_functions_are_refused(
    tmp_path: Path, backend: Backend
) -> None:
    async with open_store(tmp_path / "node.db", [NOTES], backend=backend) as store:
        kept: list[SyncTransaction] = []
        await store.atomic(kept.append)
        with pytest.raises(StoreError, match="already ended"):
            kept[0].execute("DELETE FROM notes")

        async def not_plain(tx: SyncTransaction) -> None:
            tx.execute("INSERT INTO notes (body) VALUES ('x')")

        with pytest.raises(TypeError, match="plain function"):
            await store.atomic(not_plain)  # type: ignore[arg-type]
        assert await store.fetch_all("SELECT * FROM notes") == []
        await store.execute("INSERT INTO notes (body) VALUES ('usable')")


async def test_a_cancelled_caller_waits_for_its_atomic_write_and_learns_it_landed(tmp_path: Path) -> None:
    """aiosqlite: the function is on the thread when the cancel comes; the caller still gets its result."""
    started, release = threading.Event(), threading.Event()
    answers: list[int] = []

    def slow_write(tx: SyncTransaction) -> int:
        tx.execute("INSERT INTO notes (body) VALUES ('landed')")
        started.set()
        release.wait(10)
        return 7

    async with open_store(tmp_path / "node.db", [NOTES]) as store:
        scope = trio.CancelScope()

        async def write() -> None:
            with scope:
                answers.append(await store.atomic(slow_write))
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            assert await trio.to_thread.run_sync(started.wait, 10)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []  # still waiting, shielded, for the thread
            release.set()
        assert scope.cancelled_caught and answers == [7]
        assert [r["body"] for r in await store.fetch_all("SELECT body FROM notes")] == ["landed"]

        # a function that fails after the cancel rolls back just the same, and the caller learns that
        started.clear()
        release.clear()
        raised: list[BaseException] = []

        def slow_failure(tx: SyncTransaction) -> None:
            tx.execute("DELETE FROM notes")
            started.set()
            release.wait(10)
            raise Boom

        failing = trio.CancelScope()

        async def fail() -> None:
            with failing:
                try:
                    await store.atomic(slow_failure)
                except Boom as exc:
                    raised.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            assert await trio.to_thread.run_sync(started.wait, 10)
            failing.cancel()
            release.set()
        assert len(raised) == 1
        assert [r["body"] for r in await store.fetch_all("SELECT body FROM notes")] == ["landed"]
        await store.execute("INSERT INTO notes (body) VALUES ('usable')")


@BOTH
async def test_an_atomic_write_cancelled_before_it_starts_does_nothing(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES], backend=backend) as store:
        ran: list[bool] = []

        def write(tx: SyncTransaction) -> None:
            ran.append(True)
            tx.execute("INSERT INTO notes (body) VALUES ('never')")

        waiting = trio.CancelScope()

        async def queued() -> None:
            with waiting:
                await store.atomic(write)

        # the transaction holds the write lock: the atomic write queues behind it
        async with trio.open_nursery() as nursery, store.transaction() as tx:
            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
            await trio.testing.wait_all_tasks_blocked()
            await tx.execute("INSERT INTO notes (body) VALUES ('first')")
        assert waiting.cancelled_caught
        with trio.CancelScope() as cancelled:
            cancelled.cancel()
            await store.atomic(write)
        assert ran == [] and cancelled.cancelled_caught
        assert [r["body"] for r in await store.fetch_all("SELECT body FROM notes")] == ["first"]


async def test_every_call_is_one_hop_to_aiosqlites_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the one-hop paths: count the functions queued on aiosqlite's connection threads, all
    sent straight from trio (``_aiosqlite_hop``), none through aiosqlite's asyncio methods."""
    from lpnode.node import store as store_module

    hops: list[str] = []
    direct = store_module.run_on_connection_thread

    async def counted(conn: aiosqlite.Connection, fn: Callable[[], Any]) -> Any:
        hops.append(getattr(fn, "__name__", "?"))
        return await direct(conn, fn)

    def through_asyncio(self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{fn!r} went through aiosqlite's asyncio path")

    async with open_store(tmp_path / "node.db", [NOTES]) as store:
        monkeypatch.setattr(store_module, "run_on_connection_thread", counted)
        monkeypatch.setattr(aiosqlite.Connection, "_execute", through_asyncio)

        async def hops_of(call: Callable[[], Any]) -> int:
            hops.clear()
            await call()
            return len(hops)

        assert await hops_of(lambda: store.execute("INSERT INTO notes (body) VALUES ('a')")) == 1
        assert await hops_of(lambda: store.fetch_one("SELECT body FROM notes")) == 1
        assert await hops_of(lambda: store.fetch_all("SELECT body FROM notes")) == 1
        assert await hops_of(lambda: store.executemany("INSERT INTO notes (body) VALUES (?)", [("b",), ("c",)])) == 1

        def two(tx: SyncTransaction) -> None:
            tx.fetch_one("UPDATE notes SET body = 'x' WHERE body = 'a' RETURNING body")
            tx.execute("UPDATE notes SET body = 'y' WHERE body = 'b'")

        assert await hops_of(lambda: store.atomic(two)) == 1

        async def two_awaited() -> None:
            async with store.transaction() as tx:
                await tx.fetch_one("UPDATE notes SET body = 'a' WHERE body = 'x' RETURNING body")
                await tx.execute("UPDATE notes SET body = 'b' WHERE body = 'y'")

        assert await hops_of(two_awaited) == 4  # BEGIN, two statements, COMMIT
        monkeypatch.undo()  # closing the connections is aiosqlite's own (asyncio) business
