"""The worker's book of jobs served: queued without blocking, written in the background, paged back."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing
from lpnode.node.served_jobs import SERVED_MIGRATIONS, ServedBook, ServedJob, serve_served_book
from lpnode.node.store import open_store


def served(n: int, outcome: str = "delivered", price: int = 10) -> ServedJob:
    return ServedJob(
        job_id=f"{n:064x}",
        requester_peer_id="12D3KooWrequester",
        pipeline="text-to-image",
        model_id="lpnode/tiny-sdxl",
        outcome=outcome,
        detail="" if outcome == "delivered" else "failed (deadline)",
        price=price,
        run_ms=None if outcome == "cancelled" else 120,
        ended_at=1_700_000_000.0 + n,
        receipt=b"signed %d" % n if outcome == "delivered" else None,
    )


async def test_rows_land_in_the_background_and_page_back_newest_first(tmp_path: Path) -> None:
    book = ServedBook()
    # noted before the database is open, as the worker does while the node starts (run.py)
    book.note(served(1))
    book.note(served(2, "failed", price=50))
    async with open_store(tmp_path / "node.db", SERVED_MIGRATIONS) as store, trio.open_nursery() as nursery:
        await nursery.start(serve_served_book, book, store)
        book.note(served(3, "cancelled", price=70))
        book.note(served(4, price=5))
        with trio.fail_after(10):
            await book.wait_rows_above(3)
        page = await book.page(limit=3)
        assert [(r["seq"], r["outcome"], r["earned"]) for r in page] == [
            (4, "delivered", 5),
            (3, "cancelled", 0),  # quoted 70, earned nothing
            (2, "failed", 0),
        ]
        assert page[1]["run_ms"] is None and page[0]["has_receipt"] and not page[2]["has_receipt"]
        assert [r["seq"] for r in await book.page(limit=3, before=page[-1]["seq"])] == [1]
        assert [r["seq"] for r in await book.page(outcome="delivered")] == [4, 1]
        totals = await book.totals()
        assert totals == {"delivered": 2, "cancelled": 1, "failed": 1, "abandoned": 0, "earned": 15, "not_kept": 0}
        assert await book.receipt(4) == b"signed 4" and await book.receipt(2) is None
        assert await book.receipt(99) is None
        with pytest.raises(ValueError, match="limit"):
            await book.page(limit=0)
        nursery.cancel_scope.cancel()


async def test_a_full_queue_loses_rows_and_counts_them_but_never_blocks() -> None:
    book = ServedBook(pending=1)
    book.note(served(1))
    book.note(served(2))  # nobody writes: the queue is full
    assert book.dropped == 1


async def test_a_waiter_wakes_for_the_row_it_waits_for(tmp_path: Path) -> None:
    book = ServedBook()
    async with open_store(tmp_path / "node.db", SERVED_MIGRATIONS) as store, trio.open_nursery() as nursery:
        await nursery.start(serve_served_book, book, store)
        woke = trio.Event()

        async def wait() -> None:
            await book.wait_rows_above(0)
            woke.set()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        book.note(served(1))
        with trio.fail_after(10):
            await woke.wait()
        nursery.cancel_scope.cancel()


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        served(1, "paid")


async def test_a_row_the_database_refuses_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    # review: one INSERT failing (the database locked past its timeout) stopped the whole node
    book = ServedBook()
    path = tmp_path / "node.db"
    async with (
        open_store(path, SERVED_MIGRATIONS, busy_timeout_ms=50) as store,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_served_book, book, store)
        with contextlib.closing(sqlite3.connect(path, timeout=0)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: sqlite3, a backup
            book.note(served(1))
            with trio.fail_after(10):
                await book.flush()
            other.rollback()
        assert book.dropped == 1 and await book.page() == []
        book.note(served(2))
        with trio.fail_after(10):
            await book.flush()
        assert [r["job_id"] for r in await book.page()] == [served(2).job_id]
        assert (await book.totals())["not_kept"] == 1
        nursery.cancel_scope.cancel()


async def test_old_rows_are_pruned_and_the_totals_keep_them(tmp_path: Path) -> None:
    book = ServedBook()
    async with (
        open_store(tmp_path / "node.db", SERVED_MIGRATIONS) as store,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(functools.partial(serve_served_book, book, store, max_rows=3, prune_every=2))
        for n in range(1, 8):
            book.note(served(n, price=n))
        with trio.fail_after(10):
            await book.flush()
        kept = [r["seq"] for r in await book.page()]
        assert kept[:3] == [7, 6, 5] and len(kept) <= 4  # pruned every second row down to the newest 3
        assert (await book.totals())["delivered"] == 7 and (await book.totals())["earned"] == sum(range(1, 8))
        nursery.cancel_scope.cancel()
