"""The node's RPC jobs: one record per request, each run in its own task, watched, cancellable, persisted.

:func:`open_job_manager` gives a :class:`JobManager` whose nursery holds every
running request. ``submit`` checks the bounds (at most ``max_jobs`` queued or
running, refused with :class:`ManagerBusy` beyond; ``max_running`` at once),
saves a ``queued`` record and starts the task; the caller may wait for the end
(the sync endpoints) or answer at once (``Prefer: respond-async``).

A task runs the request's network jobs (one per image) through the one
:data:`JobRunner` it was given, writes the verified outputs to the output
store and each receipt to the records, and saves the final record. ``cancel``
cancels the task's scope: the requester's ``finally`` tells the worker, which
frees its reservation. A node that stops mid-job saves the record as
``interrupted`` (and a restarted node marks any record left unfinished so).

Progress, and each try's start and end on a peer (``attempt``), go to any number of
listeners (:meth:`JobManager.listen`). Each has a bounded buffer: a slow listener
loses progress events first, attempt events only past a bound of their own, never
``state`` or ``done`` (there are only a handful of those per job).

The parts live beside it: the record book and output sink in :mod:`job_book`,
listeners in :mod:`job_events`, the runner in :mod:`job_runner`, the record's
result and attempt entries in :mod:`job_results`; every public name is
importable from here as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from lpnode.node.job_book import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    INTERRUPTED_ERROR,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    MemoryRecordBook,
    OutputSink,
    Record,
    RecordBook,
    _copy,
    draft_record,
)
from lpnode.node.job_events import ATTEMPT, LISTENER_BUFFER, EventSink, JobEvent, Listener, TryEvents, _Forward
from lpnode.node.job_requester import JobFailed, JobOutcome, JobRequest, PriceBelowOffers, ProgressCallback
from lpnode.node.job_results import _attempt, _attempt_running, _b64, _cut_short, _snake, output_url, sha256_hex
from lpnode.node.job_runner import JobRunner, requester_runner
from lpnode.node.rpc_job_bodies import PreparedJob
from lpnode.node.store_errors import StoreError
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.jobs import Progress

log = logging.getLogger(__name__)

DEFAULT_MAX_JOBS = 64  # queued + running requests
DEFAULT_MAX_RUNNING = 16  # requests running at once
SAVE_GRACE_S = 5.0  # the final save still gets this long while the node shuts down
# A running job's record (its tries so far, its progress) is saved this long after it changes, at most once
# per such span: a node killed mid-job leaves the record saying who was running it and how far it got, and a
# job that ends sooner is written only at its start and its end, as before.
CHECKPOINT_DELAY_S = 1.0


class ManagerBusy(LpnodeError):
    """Too many requests queued or running on this node (HTTP 429); try again later."""


class JobNotFound(LpnodeError):
    """No record with that id (HTTP 404)."""


class JobAlreadyFinished(LpnodeError):
    """The job ended before the request could change it (HTTP 409)."""


class JobCancelled(LpnodeError):
    """The job was cancelled, or the node stopped, before it finished (HTTP 409)."""


# ---------------------------------------------------------------- the manager


@dataclass
class _Live:
    record: Record
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # the record holds its final state, result or error in memory (its save may still be under way)
    settled: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)  # ... and that record is saved
    listeners: set[EventSink] = field(default_factory=set)
    error: LpnodeError | None = None  # what a failed job raised, for the sync answer
    cancel_requested: bool = False
    receipts: int = 0  # receipts made so far (their n)
    # receipts not yet written: they go in one transaction with the final record
    pending_receipts: list[tuple[int, bytes]] = field(default_factory=list)
    slot: object | None = None  # the borrower holding a running slot since submit, if it got one at once
    changed: trio.Event = field(default_factory=trio.Event)  # the record changed since it was last saved
    # the start events of the tries under way, by (workflow step, image, attempt): a listener that
    # connects mid-try hears of them, not just of tries that start after it
    running_tries: dict[tuple[object, object, object], JobEvent] = field(default_factory=dict)
    # the record is in the book (or its first write failed): later writes wait for this one
    created: trio.Event = field(default_factory=trio.Event)
    create_error: LpnodeError | None = None  # why that first write failed: the job fails with it


StepWork = Callable[["_Live"], Awaitable[dict[str, Any]]]


class JobManager:
    def __init__(
        self,
        nursery: trio.Nursery,
        book: RecordBook,
        outputs: OutputSink,
        runner: JobRunner,
        *,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_running: int = DEFAULT_MAX_RUNNING,
        status_for: Callable[[LpnodeError], int] = lambda exc: 500,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._nursery = nursery
        self.book = book
        self.outputs = outputs
        self._runner = runner
        self._max_jobs = max_jobs
        self._running = trio.CapacityLimiter(max_running)
        self._status_for = status_for
        self._wall_clock = wall_clock
        self._live: dict[str, _Live] = {}  # queued or running (children included)
        self._admitting = 0  # requests admitted whose record is being written (not yet in _live)

    # ------------------------------------------------------------ queries

    async def get(self, job_id: str) -> Record:
        live = self._live.get(job_id)
        if live is not None:
            return _copy(live.record)
        found = await self.book.get(job_id)
        if found is None:
            raise JobNotFound(f"no job {job_id} on this node (GET /v1/jobs lists them)")
        return found

    async def list(
        self, limit: int = 50, state: str | None = None, parent_id: str | None = None, before: str | None = None
    ) -> list[Record]:
        """Newest first; a live job as ``get`` shows it (the book holds its progress only once it ends).

        ``parent_id``: only the steps of that workflow (a failed one's too, whose result names none).
        ``before``: the page after the one that ended with that job (JobNotFound for an unknown id).
        """
        if before is not None:
            await self.get(before)  # an unknown id is a 404, not an empty page that reads as "no more"
        records = await self.book.list(limit, state, parent_id, before)
        merged = [_copy(live.record) if (live := self._live.get(r["id"])) is not None else r for r in records]
        return [r for r in merged if state is None or r["state"] == state]

    async def receipt(self, job_id: str, n: int) -> bytes:
        record = await self.get(job_id)
        live = self._live.get(job_id)
        # a settled job's receipts are saved with its final record: until then they are only here
        pending = dict(live.pending_receipts) if live is not None else {}
        found = pending.get(n) or await self.book.receipt(job_id, n)
        if found is None:
            have = len((record.get("result") or {}).get("jobs", []))
            raise JobNotFound(f"job {job_id} has no receipt {n} (it has {have}, state {record['state']})")
        return found

    # ------------------------------------------------------------ submitting

    async def submit(self, prepared: PreparedJob, *, saved_first: bool = True) -> str:
        """Record ``prepared`` as queued and start it; its id. ManagerBusy when full.

        ``saved_first=False`` (a sync request: its answer is the result, not the record) starts the
        job while its record is being written, rather than after: the write takes a hop to the
        store's thread and back (~0.5-1 ms), and the job has nothing to wait for in it.
        """
        live = await self._admit(prepared.kind, prepared.request, None, saved_first=saved_first)

        async def work(live: _Live) -> dict[str, Any]:
            return await self.execute(live, prepared)

        self._start(live, work)
        return str(live.record["id"])

    def _start(self, live: _Live, work: StepWork) -> None:
        try:
            self._nursery.start_soon(self._run, live, work)
        except BaseException:  # the manager is closing: the task will never free its slot
            if live.slot is not None:
                self._running.release_on_behalf_of(live.slot)
            raise

    async def submit_work(self, kind: str, request: Record, work: StepWork) -> str:
        """A request whose work is a coroutine of its own (workflows); same bounds and lifecycle."""
        live = await self._admit(kind, request, None)
        self._start(live, work)
        return str(live.record["id"])

    async def wait(self, job_id: str) -> Record:
        """The final record of ``job_id`` once it ends."""
        live = self._live.get(job_id)
        if live is not None:
            await live.finished.wait()
            return _copy(live.record)
        return await self.get(job_id)

    async def wait_result(self, job_id: str) -> Record:
        """The sync endpoints: the result, or the job's own error raised (mapped to its status by the RPC).

        Answered once the record is settled in memory, while its final save is still under way: the
        save (a transaction in the store's thread, ~1 ms) is bookkeeping the answer does not need.
        The outputs the answer names are stored before this returns (``_response``); until the save
        lands, ``get`` and ``receipt`` answer from the live record.
        """
        live = self._live.get(job_id)
        try:
            if live is None:
                record = await self.get(job_id)
            else:
                await live.settled.wait()
                record = _copy(live.record)
        finally:
            # A sync request is its HTTP request: if that goes away (cancelled handler), so does the job.
            if live is not None and not live.settled.is_set():
                live.cancel_requested = True
                live.scope.cancel()
        if record["state"] == SUCCEEDED:
            return record
        if live is not None and live.error is not None:
            raise live.error
        raise JobCancelled(f"job {job_id} ended {record['state']}")

    async def cancel(self, job_id: str) -> Record:
        """Cancel a queued or running job and return its final record; JobAlreadyFinished if it had ended.

        A running workflow step cannot stop alone (the next step needs its output): its workflow is cancelled.
        """
        live = self._live.get(job_id)
        if live is None:
            record = await self.get(job_id)  # JobNotFound if unknown
            raise JobAlreadyFinished(f"job {job_id} already ended: {record['state']}")
        parent = self._live.get(live.record["parent_id"] or "")
        # A workflow's step runs in its workflow's task, inside no scope of its own: cancelling the step
        # cancels the workflow, and both end cancelled (cancelling only the step's scope did nothing).
        target = parent if parent is not None else live
        target.cancel_requested = True
        target.scope.cancel()
        await live.finished.wait()
        return _copy(live.record)

    @asynccontextmanager
    async def listen(self, job_id: str, max_progress: int = LISTENER_BUFFER) -> AsyncIterator[Listener]:
        """Events of ``job_id`` from now on; a finished job's listener holds just its ``done``."""
        listener = Listener(max_progress)
        live = self._live.get(job_id)
        if live is None:
            listener.push(JobEvent("done", await self.get(job_id)))
            yield listener
            return
        listener.push(JobEvent("state", {"state": live.record["state"]}))
        for started in live.running_tries.values():
            listener.push(started)
        live.listeners.add(listener)
        try:
            yield listener
        finally:
            live.listeners.discard(listener)

    # ------------------------------------------------------------ running

    async def _admit(self, kind: str, request: Record, parent_id: str | None, *, saved_first: bool = True) -> _Live:
        """A new live record: created ``running`` when it may start at once (a workflow's step runs in
        its parent's slot; a request takes a free slot now), so most jobs cost one write, not two.

        ``saved_first=False``: the record is live at once and written beside its job (``_create``, started
        by ``_run``); every later write of it waits for that one (``created``).
        """
        slot: object | None = None
        if parent_id is None:
            # Requests whose record is being written count too: they are not in _live until the write
            # returns, and a burst arriving together would all pass the check (QA: 20 of 20 admitted
            # against a limit of 5).
            active = self._admitting + sum(1 for live in self._live.values() if live.record["parent_id"] is None)
            if active >= self._max_jobs:
                raise ManagerBusy(
                    f"{active} requests are queued or running on this node (its limit is {self._max_jobs}); retry later"
                )
            slot = object()
            try:
                self._running.acquire_on_behalf_of_nowait(slot)  # WouldBlock also when others wait: fair
            except trio.WouldBlock:
                slot = None
        state = RUNNING if slot is not None or parent_id is not None else QUEUED
        if not saved_first:
            live = _Live(draft_record(kind, request, parent_id, self._wall_clock(), state), slot=slot)
            self._live[live.record["id"]] = live  # written by _run's _create
            return live
        counted = 1 if parent_id is None else 0  # a request counts against the limit; a workflow's step does not
        self._admitting += counted
        try:
            record = await self.book.create(kind, request, parent_id, self._wall_clock(), state)
        except BaseException:
            if slot is not None:
                self._running.release_on_behalf_of(slot)
            raise
        finally:
            self._admitting -= counted
        live = _Live(record, slot=slot)
        live.created.set()
        self._live[record["id"]] = live
        return live

    async def _create(self, live: _Live) -> None:
        """The first write of a record admitted before it was saved, beside its job.

        If it fails, so does the job, with the store's error: what a request whose record cannot be
        written got before its job ever started (the write came first then).
        """
        record = live.record
        # shielded like the final save: a record whose job started is written even while the node stops
        with trio.CancelScope(shield=True), trio.move_on_after(SAVE_GRACE_S) as grace:
            try:
                created = await self.book.create(
                    record["kind"],
                    record["request"],
                    record["parent_id"],
                    record["created_at"],
                    record["state"],
                    job_id=record["id"],
                )
                record["request"] = created["request"]  # as the book keeps it
            except LpnodeError as exc:
                live.create_error = exc
        if grace.cancelled_caught:
            live.create_error = StoreError(f"the job's record was not written within {SAVE_GRACE_S:.0f} s")
        if live.create_error is not None:
            log.error("job %s: its record could not be saved: %s", record["id"], live.create_error)
            live.scope.cancel()
        live.created.set()

    @asynccontextmanager
    async def _running_slot(self, live: _Live) -> AsyncIterator[None]:
        """Hold one of ``max_running`` slots: the one taken at submit, or the next free one (then say so)."""
        if live.slot is not None:
            try:
                yield
            finally:
                self._running.release_on_behalf_of(live.slot)
            return
        async with self._running:
            await self._set_state(live, RUNNING)
            yield

    async def _run(self, live: _Live, work: StepWork) -> None:
        """A request's task root: everything that can go wrong ends in the record."""
        if not live.created.is_set():
            # Started from here, not from _admit: its first step then runs once this task reaches its
            # first checkpoint, which for a network job is its first message on its way to the worker.
            self._nursery.start_soon(self._create, live)
        final = FAILED
        try:
            with live.scope:
                async with self._running_slot(live):
                    live.record["result"] = await work(live)
                    final = SUCCEEDED
            if live.scope.cancelled_caught:
                final = CANCELLED
        except LpnodeError as exc:
            self._fail(live, exc)
        except BaseException as exc:
            if _cancelled(exc):
                final = INTERRUPTED  # the node is stopping
                raise
            if not isinstance(exc, Exception):
                raise
            # a bug: the request fails, the node keeps serving
            log.error("job %s crashed", live.record["id"], exc_info=exc)
            self._fail(live, LpnodeError(f"internal error ({type(exc).__name__}); see the node's log"))
        finally:
            await self._finish(live, final)

    async def execute(self, live: _Live, prepared: PreparedJob) -> dict[str, Any]:
        """Run ``prepared``'s network jobs side by side; store outputs and receipts; the sync response."""
        count = len(prepared.jobs)
        outcomes: list[JobOutcome | None] = [None] * count
        steps = [(0, 0)] * count
        # Per image, the tries seen running (peer id by the try's job id, in order): the requester's
        # own attempt list dies with it when the job is cancelled, and the record should still say who ran it.
        tries: list[dict[str, str]] = [{} for _ in range(count)]

        seen: list[list[dict[str, Any]]] = [[] for _ in range(count)]  # per image, its tries so far

        def note_try(index: int, event: JobEvent) -> None:
            """The record's attempts while the job runs, from each try's start and end (saved by the keeper)."""
            self._push(live, event)
            data, tries_of = event.data, seen[index]
            if data["stage"] == "start":
                tries_of.append(_attempt_running(data["peer_id"], data["model_id"]))
            elif 0 < data["attempt"] <= len(tries_of):
                tries_of[data["attempt"] - 1] = {k: data[k] for k in ("peer_id", "outcome", "detail", "price")}
            live.record["attempts"] = [attempt for image in seen for attempt in image]
            live.changed.set()

        def progress_of(index: int) -> ProgressCallback:
            def on_progress(peer_id: str, message: Progress) -> None:
                tries[index].setdefault(message.job_id, peer_id)
                steps[index] = (message.step, message.total)
                step, total = sum(s for s, _ in steps), sum(t for _, t in steps)
                fraction = min(1.0, step / total) if total else 0.0
                self._progress(live, {"fraction": fraction, "step": step, "total": total, "peer_id": peer_id})

            # each try's start and end as `attempt` events (job_events), beside the progress
            return TryEvents(index, on_progress, lambda event: note_try(index, event))

        async def one(index: int) -> None:
            job = prepared.jobs[index]
            outcomes[index] = await self._runner(job, prepared.inputs, prepared.options, progress_of(index))

        keeper = trio.CancelScope()
        self._nursery.start_soon(self._keep_saved, live, keeper)
        # images run side by side; the first failure cancels the rest (the answer is all images or an error)
        try:
            if count == 1:
                await one(0)  # in this task: a child task costs a scheduler pass at its start and its end
            else:
                async with trio.open_nursery() as nursery:
                    for index in range(count):
                        nursery.start_soon(one, index)
        except BaseException as exc:
            if _cancelled(exc):
                live.record["attempts"] = _cut_short(outcomes, seen, tries, steps, self._cancel_requested(live))
                raise
            if isinstance(exc, LpnodeError):
                first = exc
            elif isinstance(exc, BaseExceptionGroup):
                failures, rest = exc.split(LpnodeError)
                if rest is not None or failures is None:
                    raise  # a bug: not the job's own error
                first = _leaves(failures)[0]
            else:
                raise
            if isinstance(first, JobFailed):
                live.record["attempts"] = [_attempt(a) for a in first.attempts]
            raise first from None
        finally:
            keeper.cancel()
        done = [o for o in outcomes if o is not None]
        live.record["attempts"] = [_attempt(a) for o in done for a in o.attempts]
        return await self._response(live, prepared.jobs, done)

    def _cancel_requested(self, live: _Live) -> bool:
        """Someone cancelled ``live``, or the workflow it is a step of (rather than the node stopping)."""
        parent = self._live.get(live.record["parent_id"] or "")
        return live.cancel_requested or (parent is not None and parent.cancel_requested)

    async def _response(self, live: _Live, jobs: Sequence[JobRequest], outcomes: Sequence[JobOutcome]) -> Record:
        images: list[dict[str, Any]] = []
        infos: list[dict[str, Any]] = []
        outputs: list[tuple[str, str, bytes]] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            for hashes, data in zip(outcome.receipt.outputs, outcome.outputs, strict=True):
                outputs.append((hashes.sha256, hashes.media_type, data))
                images.append({"url": output_url(hashes.sha256), "seed": job.seed, "nsfw": False})
            live.pending_receipts.append((live.receipts, outcome.receipt_bytes))
            live.receipts += 1
            infos.append(
                {
                    "job_id": outcome.job_id,
                    "worker_peer_id": outcome.worker_peer_id,
                    "model_id": outcome.model_id,
                    "price": outcome.price,
                    "receipt": _b64(outcome.receipt_bytes),
                    "attempts": [_attempt(a) for a in outcome.attempts],
                }
            )
        # The requester hashed every received byte against the signed receipt (JobOutcome.outputs):
        # stored without a second hash, in one batch. Stored as durably as the records when this
        # returns (a killed process loses neither; job_storage), and only then is the record saved
        # as succeeded (with the receipts, in one transaction): a record never names an output a
        # crash of this process could have lost.
        await self.outputs.put_verified(outputs)
        return {"images": images, "jobs": infos, "request_id": live.record["id"]}

    # ------------------------------------------------------------ children (workflow steps)

    async def run_child(self, parent: _Live, prepared: PreparedJob, share: tuple[int, int]) -> tuple[Record, bytes]:
        """Run ``prepared`` as a child record of ``parent``; the final child record and its first output.

        ``share`` = (step index, steps) scales the child's progress into the parent's.
        Runs in the parent's task (and slot): cancelling the parent cancels it.
        """
        child = await self._admit(prepared.kind, prepared.request, parent.record["id"])
        index, count = share

        def forward(progress: dict[str, Any]) -> None:
            self._progress(parent, progress | {"fraction": (index + progress["fraction"]) / count})

        def forward_attempt(data: dict[str, Any]) -> None:
            self._push(parent, JobEvent(ATTEMPT, data | {"workflow_step": index + 1, "step_id": child.record["id"]}))

        child.listeners.add(_Forward(forward, forward_attempt))
        final = FAILED
        try:  # created running (_admit): it runs in its parent's slot
            result = await self.execute(child, prepared)
            child.record["result"] = result
            final = SUCCEEDED
        except LpnodeError as exc:
            self._fail(child, exc)
            raise
        except BaseException as exc:
            if _cancelled(exc):
                final = CANCELLED if parent.cancel_requested else INTERRUPTED
            raise
        finally:
            parent.record["attempts"] = [*parent.record["attempts"], *child.record["attempts"]]
            await self._finish(child, final)
        if child.pending_receipts:  # the workflow's receipt n is step n's, saved with the workflow's record
            parent.pending_receipts.append((parent.receipts, child.pending_receipts[0][1]))
            parent.receipts += 1
        sha = result["images"][0]["url"].rsplit("/", 1)[-1]
        found = await self.outputs.get(sha)
        if found is None:  # the store evicted it already: bounded too small for one chain
            raise LpnodeError(f"output {sha} of step {index + 1} was evicted before the next step could read it")
        return _copy(child.record), found[1]

    # ------------------------------------------------------------ record changes

    def _fail(self, live: _Live, exc: LpnodeError) -> None:
        live.error = exc
        live.record["error"] = {
            "status": self._status_for(exc),
            "error": _snake(type(exc).__name__),
            "message": str(exc),
        }

    def _progress(self, live: _Live, progress: dict[str, Any]) -> None:
        live.record["progress"] = progress
        live.changed.set()
        self._push(live, JobEvent("progress", progress))

    async def _keep_saved(self, live: _Live, scope: trio.CancelScope) -> None:
        """While ``live``'s network jobs run: save its record ``CHECKPOINT_DELAY_S`` after it changes.

        Cancelled (``scope``) when they end; the final save is ``_finish``'s. A save already under way
        then still lands before it (the store serialises writes), and one that would come after it
        finds the record finished and is skipped, so the final record is always the last word.
        """
        with scope:
            while True:
                await live.changed.wait()
                await trio.sleep(CHECKPOINT_DELAY_S)
                live.changed = trio.Event()
                if live.record["state"] != RUNNING:
                    return
                try:
                    await self._update(live, self._wall_clock())
                except LpnodeError as exc:  # a lost checkpoint costs nothing the final save will not write
                    log.warning("job %s: could not save its progress: %s", live.record["id"], exc)

    def _push(self, live: _Live, event: JobEvent) -> None:
        if event.kind == ATTEMPT:
            data = event.data
            key = (data.get("workflow_step"), data.get("image"), data.get("attempt"))
            if data.get("stage") == "start":
                live.running_tries[key] = event
            else:
                live.running_tries.pop(key, None)
        for listener in list(live.listeners):
            listener.push(event)

    async def _set_state(self, live: _Live, state: str, receipts: Sequence[tuple[int, bytes]] = ()) -> None:
        live.record["state"] = state
        live.record["updated_at"] = now = self._wall_clock()
        for listener in list(live.listeners):
            listener.push(JobEvent("state", {"state": state}))
        await self._update(live, now, receipts)

    async def _update(self, live: _Live, now: float, receipts: Sequence[tuple[int, bytes]] = ()) -> None:
        """Save ``live``'s record, after its first write (``_admit``'s or ``_create``'s); not at all if that failed."""
        await live.created.wait()
        if live.create_error is not None:
            return  # logged by _create: there is no row to change
        await self.book.update(live.record, now, receipts)

    async def _finish(self, live: _Live, state: str) -> None:
        with trio.CancelScope(shield=True):
            await live.created.wait()  # at once but for a job that ended while its record was being written
        if live.create_error is not None:
            self._fail(live, live.create_error)
            state = FAILED
        if state == SUCCEEDED:
            live.record["progress"] = {**live.record["progress"], "fraction": 1.0}
        if state == INTERRUPTED and live.record["error"] is None:
            live.record["error"] = dict(INTERRUPTED_ERROR)  # as a killed node's record gets at the next start
        live.record["state"] = state
        live.settled.set()
        # shielded: the final record is saved even while the node stops (then as interrupted)
        with trio.CancelScope(shield=True), trio.move_on_after(SAVE_GRACE_S):
            try:
                await self._set_state(live, state, live.pending_receipts)
            except LpnodeError as exc:
                log.error("job %s ended %s but its record could not be saved: %s", live.record["id"], state, exc)
        record = _copy(live.record)
        for listener in list(live.listeners):
            listener.push(JobEvent("done", record))
        self._live.pop(live.record["id"], None)
        live.finished.set()


@asynccontextmanager
async def open_job_manager(
    book: RecordBook,
    outputs: OutputSink,
    runner: JobRunner,
    **options: Any,
) -> AsyncIterator[JobManager]:
    """A manager whose jobs live in its own nursery; leaving cancels them (records end ``interrupted``)."""
    async with trio.open_nursery() as nursery:
        manager = JobManager(nursery, book, outputs, runner, **options)
        try:
            yield manager
        finally:
            nursery.cancel_scope.cancel()


def _cancelled(exc: BaseException) -> bool:
    """A trio.Cancelled, bare or in exception groups (a nursery wraps it so)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _leaves(group: BaseExceptionGroup[LpnodeError]) -> list[LpnodeError]:
    out: list[LpnodeError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


__all__ = [
    "CANCELLED",
    "FAILED",
    "INTERRUPTED",
    "LISTENER_BUFFER",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "EventSink",
    "JobAlreadyFinished",
    "JobCancelled",
    "JobEvent",
    "JobManager",
    "JobNotFound",
    "JobRunner",
    "Listener",
    "ManagerBusy",
    "MemoryRecordBook",
    "OutputSink",
    "PriceBelowOffers",
    "Record",
    "RecordBook",
    "open_job_manager",
    "output_url",
    "requester_runner",
    "sha256_hex",
]
