"""The SQLite store: migrations, the schema-too-new refusal, transactions, errors, concurrency (real files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing
from lpnode.node.store import (
    Backend,
    ConstraintViolation,
    Migration,
    SchemaTooNew,
    StoreError,
    open_store,
)

# the tests marked so run on both backends: aiosqlite threads, and plain sqlite3 in the trio thread
BOTH = pytest.mark.parametrize("backend", ["aiosqlite", "inline"])


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


NOTES_V1 = Migration("notes", 1, ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)",))
NOTES_V2 = Migration("notes", 2, ("ALTER TABLE notes ADD COLUMN stars INTEGER NOT NULL DEFAULT 0",))
TAGS_V1 = Migration(
    "tags",
    1,
    (
        "CREATE TABLE tags (note_id INTEGER NOT NULL REFERENCES notes(id), tag TEXT NOT NULL)",
        "CREATE INDEX tags_note ON tags(note_id)",
    ),
)


@BOTH
async def test_fresh_database_is_wal_with_foreign_keys_and_versions(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "sub" / "node.db"  # the parent folder is created
    async with open_store(path, [NOTES_V1, TAGS_V1], backend=backend) as store:
        assert await store.versions() == {"notes": 1, "tags": 1}
        row = await store.fetch_one("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
        fk = await store.fetch_one("PRAGMA foreign_keys")
        assert fk is not None and fk[0] == 1
        with pytest.raises(ConstraintViolation, match="FOREIGN KEY"):
            await store.execute("INSERT INTO tags (note_id, tag) VALUES (?, ?)", (99, "x"))
        assert await store.integrity_check() == "ok"


@BOTH
async def test_migrations_apply_once_and_in_order(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "node.db"
    async with open_store(path, [NOTES_V1], backend=backend) as store:
        await store.execute("INSERT INTO notes (body) VALUES (?)", ("kept",))
    # Given out of order: the store sorts each component's versions; v1 is not re-run (it would fail).
    async with open_store(path, [NOTES_V2, NOTES_V1, TAGS_V1], backend=backend) as store:
        assert await store.versions() == {"notes": 2, "tags": 1}
        rows = await store.fetch_all("SELECT body, stars FROM notes")
        assert [(r["body"], r["stars"]) for r in rows] == [("kept", 0)]
    async with open_store(path, [NOTES_V1, NOTES_V2, TAGS_V1], backend=backend) as store:
        assert await store.versions() == {"notes": 2, "tags": 1}


@BOTH
async def test_a_failing_migration_rolls_back_and_refuses_to_open(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "node.db"
    broken = Migration("notes", 2, ("CREATE TABLE half (x)", "THIS IS NOT SQL"))
    with pytest.raises(StoreError, match="migration notes v2 failed"):
        async with open_store(path, [NOTES_V1, broken], backend=backend):
            raise AssertionError("must not open")
    async with open_store(path, [NOTES_V1], backend=backend) as store:
        assert await store.versions() == {"notes": 1}
        assert await store.fetch_one("SELECT name FROM sqlite_master WHERE name = 'half'") is None


async def test_newer_schema_than_the_code_knows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with open_store(path, [NOTES_V1, NOTES_V2]):
        pass
    with pytest.raises(SchemaTooNew, match=r"'notes' is at version 2, this lpnode knows up to 1") as caught:
        async with open_store(path, [NOTES_V1]):
            raise AssertionError("must not open")
    assert (caught.value.component, caught.value.found, caught.value.known) == ("notes", 2, 1)
    # A component this code does not use at all is someone else's business: no refusal.
    async with open_store(path, [TAGS_V1]) as store:
        assert await store.versions() == {"notes": 2, "tags": 1}


def test_migration_lists_are_checked() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        Migration("notes", 0, ("SELECT 1",))
    with pytest.raises(ValueError, match="identifier"):
        Migration("../x", 1, ("SELECT 1",))
    with pytest.raises(ValueError, match="no statements"):
        Migration("notes", 1, ())


async def test_gaps_and_duplicates_in_migrations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without gaps"):
        async with open_store(tmp_path / "a.db", [NOTES_V2]):
            pass
    with pytest.raises(ValueError, match="given twice"):
        async with open_store(tmp_path / "b.db", [NOTES_V1, NOTES_V1]):
            pass


@BOTH
async def test_not_a_database_is_a_store_error(tmp_path: Path, backend: Backend) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the database"):
        async with open_store(path, [NOTES_V1], backend=backend):
            pass


@BOTH
async def test_transaction_commits_at_exit_and_rolls_back_on_error(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES_V1], backend=backend) as store:
        async with store.transaction() as tx:
            first = await tx.execute("INSERT INTO notes (body) VALUES (?)", ("a",))
            await tx.execute("INSERT INTO notes (body) VALUES (:body)", {"body": "b"})
            # the handle sees its own uncommitted rows; the store's reader does not
            seen = await tx.fetch_one("SELECT count(*) FROM notes")
            outside = await store.fetch_one("SELECT count(*) FROM notes")
            assert seen is not None and seen[0] == 2
            assert outside is not None and outside[0] == 0
        assert first.rowcount == 1 and first.lastrowid == 1

        with pytest.raises(ConstraintViolation, match="UNIQUE"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO notes (body) VALUES (?)", ("c",))
                await tx.execute("INSERT INTO notes (body) VALUES (?)", ("a",))  # duplicate

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM notes")
                raise Boom
        with pytest.raises(StoreError, match="already ended"):
            await tx.execute("DELETE FROM notes")

        rows = await store.fetch_all("SELECT body FROM notes ORDER BY id")
        assert [r["body"] for r in rows] == ["a", "b"]


@BOTH
async def test_cancelled_transaction_rolls_back_and_the_store_stays_usable(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES_V1], backend=backend) as store:
        with trio.CancelScope() as scope:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO notes (body) VALUES (?)", ("lost",))
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        await store.execute("INSERT INTO notes (body) VALUES (?)", ("kept",))
        rows = await store.fetch_all("SELECT body FROM notes")
        assert [r["body"] for r in rows] == ["kept"]


@BOTH
async def test_writes_from_many_tasks_are_serialised(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES_V1], backend=backend) as store:

        async def add_pair(i: int) -> None:
            async with store.transaction() as tx:
                row = await tx.fetch_one("SELECT count(*) FROM notes")
                assert row is not None and row[0] % 2 == 0  # nobody else is mid-pair
                await tx.execute("INSERT INTO notes (body) VALUES (?)", (f"{i}a",))
                await trio.lowlevel.checkpoint()
                await tx.execute("INSERT INTO notes (body) VALUES (?)", (f"{i}b",))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(add_pair, i)
            nursery.start_soon(store.executemany, "INSERT INTO notes (body) VALUES (?)", [("x",), ("y",)])
        row = await store.fetch_one("SELECT count(*) FROM notes")
        assert row is not None and row[0] == 42


@BOTH
async def test_reads_are_bounded_and_read_only(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES_V1], backend=backend) as store:
        await store.executemany("INSERT INTO notes (body) VALUES (?)", [(str(i),) for i in range(11)])
        with pytest.raises(StoreError, match="more than 10 rows"):
            await store.fetch_all("SELECT * FROM notes", max_rows=10)
        assert len(await store.fetch_all("SELECT * FROM notes", max_rows=11)) == 11
        with pytest.raises(StoreError, match="readonly"):
            await store.fetch_all("DELETE FROM notes RETURNING id")
        row = await store.fetch_one("SELECT body FROM notes ORDER BY id")
        assert isinstance(row, sqlite3.Row) and row["body"] == "0"


@BOTH
async def test_closed_store_refuses(tmp_path: Path, backend: Backend) -> None:
    async with open_store(tmp_path / "node.db", [NOTES_V1], backend=backend) as store:
        pass
    with pytest.raises(StoreError, match="closed"):
        await store.fetch_all("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        await store.execute("DELETE FROM notes")


async def test_two_stores_in_one_run_and_a_task_started_before_the_store(tmp_path: Path) -> None:
    # A task spawned before open_store (e.g. the RPC server's) must be able to use it too.
    send, receive = trio.open_memory_channel[object](1)
    done = trio.Event()
    counted: list[int] = []

    async def early_task() -> None:
        store = await receive.receive()
        assert hasattr(store, "fetch_one")
        row = await store.fetch_one("SELECT count(*) FROM notes")
        assert row is not None
        counted.append(row[0])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(early_task)
        await trio.testing.wait_all_tasks_blocked()
        async with (
            open_store(tmp_path / "a.db", [NOTES_V1]) as a,
            open_store(tmp_path / "b.db", [NOTES_V1, NOTES_V2]) as b,
        ):
            await a.execute("INSERT INTO notes (body) VALUES ('a')")
            await b.execute("INSERT INTO notes (body, stars) VALUES ('b', 3)")
            await send.send(b)
            await done.wait()
    assert counted == [1]


async def test_errors_and_cancellation_in_the_callers_block_pass_through_unwrapped(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with open_store(tmp_path / "node.db", [NOTES_V1]):
            raise Boom
    with trio.CancelScope() as scope:
        async with open_store(tmp_path / "node.db", [NOTES_V1]) as store:
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(StoreError, match="closed"):
        await store.fetch_one("SELECT 1")


async def test_inline_backend_spends_no_virtual_time_and_shares_the_file_format(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # inline statements are pure trio checkpoints: under an autojump clock no deadline can fire while one runs
    path = tmp_path / "node.db"
    start = trio.current_time()
    async with open_store(path, [NOTES_V1], backend="inline") as store:
        async with store.transaction() as tx:
            await tx.executemany("INSERT INTO notes (body) VALUES (?)", [(str(i),) for i in range(100)])
        assert len(await store.fetch_all("SELECT * FROM notes")) == 100
    assert trio.current_time() == start
    # the same database, migrations and all, opened by the default backend and back again
    async with open_store(path, [NOTES_V1, NOTES_V2]) as store:
        await store.execute("UPDATE notes SET stars = 5 WHERE body = '7'")
    async with open_store(path, [NOTES_V1, NOTES_V2], backend="inline") as store:
        assert await store.versions() == {"notes": 2}
        row = await store.fetch_one("SELECT stars FROM notes WHERE body = '7'")
        assert row is not None and row["stars"] == 5
