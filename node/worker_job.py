"""One job stream on the worker's side: its negotiation machine, its framed stream, and the machine's actions carried out.

:class:`~.job_worker.JobWorker` makes one per stream and drives it: the machine decides, a
:class:`WorkerJob` sends what it says (a held Quote always first), frees the reservation it names,
aborts the run it ends, and reads the requester's next message against the machine's next wakeup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio
from lpnode.protocol.errors import NetworkError, ProtocolError, ProtocolViolation, StreamTimeout
from lpnode.protocol.jobs import ErrorCode, JobError, JobMessage, Quote
from lpnode.protocol.negotiation import AbortRun, Action, ReleaseReservation, Send, StartRun, WorkerNegotiation
from lpnode.protocol.signing import NodeKey

from .framing import FramedStream
from .job_stream import receive_job_message, send_job_message
from .network._fast_lock import FastLock

__all__ = ["JobHost", "WorkerJob"]

log = logging.getLogger("lpnode.node.job_worker")  # its lines read as the worker's, as before the split


class JobHost(Protocol):
    """What a job needs of its worker (:class:`~.job_worker.JobWorker`)."""

    @property
    def key(self) -> NodeKey: ...

    def now_ms(self) -> int: ...

    def release(self, quote_id: str) -> None: ...


class WorkerJob:
    """One stream's job: its machine, its stream, and the scope of its run."""

    def __init__(self, worker: JobHost, framed: FramedStream, machine: WorkerNegotiation) -> None:
        self.worker = worker
        self.framed = framed
        self.machine = machine
        self.run_scope = trio.CancelScope()
        # Everything the job's task waits on after its QuoteRequest (the Accept, the inputs, the run, the
        # output's delivery): a stopping worker cancels it once the requester is told, so the task ends
        # and notes its row at once instead of waiting out a quote's life or a slow upload (review s11).
        self.io_scope = trio.CancelScope()
        self.send_lock = FastLock()  # progress, cancel answers and the result share one writer
        self.model_name = ""  # the preset that will run it, chosen at quote time
        self.run_ms: int | None = None  # the run's length, once it ran (whatever its end)
        self.delivered = False  # the output's bytes all went out
        self.note = ""  # why it ended, when the machine's reason alone does not say (for the log line)
        self.receipt: bytes | None = None  # the signed receipt, once made
        self.done = trio.Event()  # its handler is past its end (logged, its served row queued)
        # A Quote held back until the run is under way (JobWorker._quote): it goes out before any other message
        self._held_quote: list[Action | object] = []

    def hold_quote(self, actions: Sequence[Action | object]) -> None:
        """Keep the Quote's send (``offer``'s actions) for :meth:`send_held_quote`, or any send before it."""
        self._held_quote.extend(actions)

    @property
    def holds_quote(self) -> bool:
        return bool(self._held_quote)

    async def send_held_quote(self) -> None:
        await self.apply([], flush=True)

    async def apply(
        self, actions: Sequence[Action | object], *, shield_errors: bool = True, flush: bool = False
    ) -> None:
        """Carry out the machine's actions. ``shield_errors=False``: a JobError's send may be cut short
        by the caller's own bound (a stopping node's, which must not wait on a requester that stopped reading).

        A held Quote goes first whenever anything is sent (``flush``: even when nothing else is), so the
        requester always reads it before any Progress, Result or JobError.
        """
        if self._held_quote and (flush or any(isinstance(action, Send) for action in actions)):
            actions = [*self._held_quote, *actions]
            self._held_quote.clear()
        for action in actions:
            if isinstance(action, Send):
                # Our last word goes out even as the job is torn down around it: a violation read while
                # the model runs aborts the run, whose end cancels the very task sending the JobError
                # (QA3 Q13). So does a held Quote, sent by a task of the run (a frame cut short resets the
                # stream, and the requester would read a crash). Bounded all the same, by the framing's
                # write timeout.
                with trio.CancelScope(shield=shield_errors and isinstance(action.message, JobError | Quote)):
                    async with self.send_lock:
                        try:
                            await send_job_message(self.framed, action.message, self.worker.key)
                        except NetworkError as exc:  # the requester is gone; cleanup continues regardless
                            log.debug("job %s: could not send %s: %s", self.machine.job_id[:12], action.message, exc)
            elif isinstance(action, ReleaseReservation):
                self.worker.release(action.quote_id)
            elif isinstance(action, AbortRun):
                self.run_scope.cancel()
            elif isinstance(action, StartRun):
                pass  # the caller starts the run right after inputs_received

    async def on_message(self, msg: JobMessage) -> None:
        try:
            await self.apply(self.machine.on_message(msg, self.worker.now_ms()))
        except ProtocolViolation as exc:
            log.info("job %s: requester %s violated the protocol: %s", self.machine.job_id[:12], self.peer, exc)
            await self.apply(exc.actions)

    @property
    def peer(self) -> str:
        return self.machine.requester_peer_id

    async def next_message(self) -> JobMessage | None:
        """The requester's next message before the machine's next wakeup; None after a tick or a failure."""
        wakeup = self.machine.next_wakeup_ms()
        timeout_s = None if wakeup is None else max(0.0, (wakeup - self.worker.now_ms()) / 1000)
        try:
            return await receive_job_message(self.framed, timeout_s=timeout_s)
        except StreamTimeout:
            if self.framed.broken is None:  # nothing arrived by the wakeup: time to tick
                await self.apply(self.machine.on_tick(max(self.worker.now_ms(), wakeup or 0)))
            else:  # a frame started and stalled: the stream is reset
                await self.apply(self.machine.cancel("requester stalled mid-frame", self.worker.now_ms()))
        except NetworkError as exc:
            self.note = self.note or f"requester went away: {exc}"
            await self.apply(self.machine.cancel(f"requester went away: {exc}", self.worker.now_ms()))
        except ProtocolError as exc:
            self.note = self.note or str(exc)[:200]
            await self.apply(self.machine.fail(ErrorCode.PROTOCOL_VIOLATION, str(exc)[:400], self.worker.now_ms()))
        return None
