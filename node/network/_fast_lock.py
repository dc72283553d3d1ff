"""A trio lock that a free taker gets without a trip through the scheduler.

``trio.Lock.acquire`` always yields, even when nobody holds the lock: it is a full checkpoint, so
the task goes to the back of the run queue and every other ready task (gossip, pings, the other
streams) runs first. A job message used to take five such locks on its way out (the job's sender,
py-libp2p's stream state, the yamux stream, the yamux connection, the TCP stream), each a pass of
the scheduler, all on the job's critical path. Here the uncontended case costs nothing; the
write underneath still yields once, at the socket.

It is trio's lock all the same: a free lock has no waiters (``release`` hands it straight to the
next one), so taking it at once skips nobody, and a contended taker queues in trio's fair order.
Cancellation is still checked on entry, as at any checkpoint.
"""

from __future__ import annotations

from types import TracebackType

import trio


class FastLock:
    """``async with lock:`` as with :class:`trio.Lock`, without yielding when the lock is free."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


__all__ = ["FastLock"]
