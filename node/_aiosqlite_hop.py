"""Run a function on an aiosqlite connection's own thread and await it from trio, without asyncio.

aiosqlite speaks asyncio: each call queues ``(future, function)`` for the connection's
thread, which runs the function and hands the outcome back with
``future.get_loop().call_soon_threadsafe(set_result, future, result)`` (or
``set_exception``), where ``set_result`` calls ``future.set_result`` unless
``future.done()``. From trio that meant a trio-asyncio round trip per call: an
asyncio task, the asyncio loop's turn inside trio's, then the wake-up of the trio
task, 0.5-1 ms per hop on a busy node (the job record's two writes sit on every
job's answer path). Here the "future" is :class:`_TrioFuture`, whose "loop" is the
trio run itself: the thread's outcome comes back through the run's token, as
:func:`trio.to_thread.run_sync` does it, one thread hop each way.

This leans on aiosqlite's private queue (``Connection._tx``) and on that protocol;
both are the same in 0.20.0, 0.21.0 and 0.22.1 (pyproject bounds the version) and
the store's tests drive every call through here. Opening and closing connections
still go through aiosqlite's public (asyncio) API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aiosqlite
import trio

_T = TypeVar("_T")


class _TrioFuture(Generic[_T]):
    """The part of an asyncio future aiosqlite's thread uses, resolved in the trio run of ``token``."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._result: _T | None = None
        self._exception: BaseException | None = None
        self._resolved = trio.Event()

    # -- what aiosqlite's connection thread calls

    def get_loop(self) -> _TrioFuture[_T]:
        return self

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        self._token.run_sync_soon(callback, *args)  # into the trio thread: Event.set is not thread-safe

    # -- what aiosqlite's set_result / set_exception call, now in the trio thread

    def done(self) -> bool:
        return self._resolved.is_set()

    def set_result(self, result: _T) -> None:
        self._result = result
        self._resolved.set()

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._resolved.set()

    async def result(self) -> _T:
        await self._resolved.wait()
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]  # set_result ran: a _T, None included


async def run_on_connection_thread(conn: aiosqlite.Connection, fn: Callable[[], _T]) -> _T:
    """Queue ``fn`` for ``conn``'s thread and wait for its outcome (its exception, re-raised here).

    Once queued, ``fn`` runs to its end whether or not anyone still waits: a cancelled caller
    stops waiting, nothing more (shield the wait to learn how it ended).
    """
    future: _TrioFuture[_T] = _TrioFuture(trio.lowlevel.current_trio_token())
    conn._tx.put_nowait((future, fn))  # type: ignore[arg-type]  # a future as aiosqlite uses one: module docstring
    return await future.result()


__all__ = ["run_on_connection_thread"]
