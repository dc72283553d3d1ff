"""FastLock: trio's lock without the scheduler pass when free, and trio's lock in every other respect."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing
from lpnode.node.network._fast_lock import FastLock


async def test_a_free_lock_is_taken_without_letting_other_tasks_run() -> None:
    lock = FastLock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        async with lock:
            assert lock.locked()
            assert ran == []  # no pass of the scheduler: the other task has not run yet
        await trio.testing.wait_all_tasks_blocked()
    assert ran == ["other"] and not lock.locked()


async def test_takers_of_a_held_lock_queue_in_order() -> None:
    lock = FastLock()
    order: list[int] = []

    async def take(i: int) -> None:
        async with lock:
            order.append(i)
            await trio.lowlevel.checkpoint()  # hold it across a checkpoint

    async with trio.open_nursery() as nursery, lock:
        for i in range(4):
            nursery.start_soon(take, i)
            await trio.testing.wait_all_tasks_blocked()  # each queued before the next starts
    assert order == [0, 1, 2, 3]


async def test_a_cancelled_taker_is_cancelled_at_entry_even_when_the_lock_is_free() -> None:
    lock = FastLock()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            async with lock:
                pytest.fail("entered under a cancelled scope")
    assert not lock.locked()


async def test_a_waiter_cancelled_while_queued_leaves_the_lock_to_the_next() -> None:
    lock = FastLock()
    got: list[str] = []
    impatient = trio.CancelScope()

    async def take(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with lock:
                got.append(name)

    async with trio.open_nursery() as nursery, lock:
        nursery.start_soon(take, "impatient", impatient)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "patient", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        impatient.cancel()
        await trio.testing.wait_all_tasks_blocked()
    assert got == ["patient"] and not lock.locked()
