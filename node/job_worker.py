"""The worker's side of ``JOB_PROTOCOL``: quote, reserve, receive inputs, run on the pool, prove, deliver.

One stream is one job. The handler drives :class:`WorkerNegotiation` (the pure
state machine decides; this module does the I/O and carries out its actions):

    QuoteRequest → checks (model served? params within the preset's limits?
    price? deadline?) → reserve a slot → signed Quote  |  Refusal
    Accept → input transfers, each checked against the spec's descriptor
    → pool.run with Progress messages, while a watcher reads Cancel / notices
    the requester vanishing → Result + signed Receipt → output transfers

Everything that can go wrong before a run refuses before capacity is reserved,
and nothing touches the device before inputs are in. Capacity is a bounded set
of reservations (quoted or running jobs): a full worker refuses ``busy`` at
once instead of queueing without bound. A failure inside one job ends that job
with a typed JobError; the handler root catches the rest with a log line, so a
peer sending garbage never takes the node down.

Every job a requester accepted ends with one log line (:func:`_log_served`):
INFO when it was delivered or the requester cancelled it, WARNING when it failed
or was abandoned. It names the job, the requester, the pipeline, the model, the
outcome, the run time and the price, never the prompt (it may be private).
Quotes that were refused or never taken are not jobs served: no line.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from lpnode.models.base import StepProgress
from lpnode.models.errors import ModelError, PoolBusy
from lpnode.models.outputs import ImageOutput, VideoOutput
from lpnode.protocol.errors import (
    InvalidTransition,
    NetworkError,
    ProtocolError,
)
from lpnode.protocol.jobs import ErrorCode, JobError, Quote, QuoteRequest, RefusalReason
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.negotiation import (
    Action,
    Phase,
    Send,
    WorkerNegotiation,
)
from lpnode.protocol.receipts import Receipt, Timings, sign_receipt
from lpnode.protocol.signing import NodeKey

from .framing import FramedStream
from .gossip import WallClock
from .inference import InferencePool
from .job_convert import EncodedOutput, encode_output, model_request
from .job_proof import ReceiptSequence, error_code, runtime_facts
from .job_quote import Decline, WorkerConfig, decide_quote
from .job_stream import await_peer_close, receive_job_message
from .network.base import ByteStream, Network
from .served_jobs import ServedBook, ServedJob
from .transfer import DEFAULT_MAX_CHUNK_BYTES, TransferLimits, receive_transfer, send_transfer
from .worker_job import WorkerJob

log = logging.getLogger(__name__)

RATE_LIMITED_RETRY_MS = 1_000  # a requester over its standing quotes may ask again this soon
# On a stop, how long the notices to requesters and the deliveries under way may take before what is
# left is cut off: within run.py's bound on the whole hook, with time to spare for the rows.
STOP_NOTICE_S = 0.75


@dataclass
class WorkerHooks:
    """Test-only seams; production leaves them empty."""

    tamper_output: Callable[[bytes], bytes] | None = None  # applied to output bytes after they were signed
    forge_output: Callable[[bytes], bytes] | None = None  # applied before they are hashed and signed
    tamper_receipt: Callable[[Receipt], Receipt] | None = None  # applied to the receipt before it is signed
    run_started: Callable[[], None] | None = None  # called when a job is handed to the pool
    upload_started: Callable[[], None] | None = None  # called when an accepted job's inputs start to be read


class JobWorker:
    """Serves ``JOB_PROTOCOL`` for one node; see the module docstring."""

    def __init__(
        self,
        key: NodeKey,
        pool: InferencePool,
        config: WorkerConfig,
        *,
        wall_clock: WallClock,
        sequence: ReceiptSequence,
        hooks: WorkerHooks | None = None,
        served: ServedBook | None = None,
        on_capacity_change: Callable[[], None] | None = None,
    ) -> None:
        self.key = key
        # called when a reservation is taken or freed: the advert's queue depth counts them
        self._on_capacity_change = on_capacity_change
        self.served = served  # where each accepted job's end is kept (None: only logged)
        self.pool = pool
        self.config = config
        self.wall_clock = wall_clock
        self.sequence = sequence
        self.hooks = hooks or WorkerHooks()
        self.reservations: set[str] = set()
        self.completed = 0
        self.open_streams = 0
        self._streams_by_peer: collections.Counter[str] = collections.Counter()
        self.turned_away = 0  # streams closed at once because max_streams were open
        self.stopping = False  # the node is shutting down: no new quotes
        self._jobs: set[WorkerJob] = set()  # the jobs of the open streams
        # Quote ids must stay unique across restarts too: prefix them with the start time.
        self._quote_prefix = f"{self.now_ms():x}"
        self._quote_ids = itertools.count(1)
        self._runtime = runtime_facts(pool)

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def release(self, quote_id: str) -> None:
        if quote_id in self.reservations:
            self.reservations.discard(quote_id)
            self._capacity_changed()

    def _capacity_changed(self) -> None:
        if self._on_capacity_change is not None:
            self._on_capacity_change()

    async def handle(self, stream: ByteStream) -> None:
        """The stream handler root: nothing escapes it (an escaping exception kills a libp2p host)."""
        peer = stream.remote_peer
        if (
            self.open_streams >= self.config.max_streams
            or self._streams_by_peer[peer] >= self.config.max_streams_per_peer
        ):
            self.turned_away += 1
            await _close(stream)
            return
        self.open_streams += 1
        self._streams_by_peer[peer] += 1
        try:
            asked = await self._serve(stream)
            # Not torn down under the requester: it closes once it holds the outputs (or our
            # last word), and only then do we close. The reservation is already released.
            # A stream that never asked anything is owed nothing: it ends now (docs/protocol.md §8.3).
            if asked and not await await_peer_close(stream, self.config.linger_s):
                log.info(
                    "job stream from %s: the requester kept it open past %s s", stream.remote_peer, self.config.linger_s
                )
        except Exception:
            log.exception("job stream from %s failed", stream.remote_peer)
        finally:
            self.open_streams -= 1
            self._streams_by_peer[peer] -= 1
            if not self._streams_by_peer[peer]:
                del self._streams_by_peer[peer]
            await _close(stream)

    async def _serve(self, stream: ByteStream) -> bool:
        """One job stream; False when the requester never sent a message (silent, or gone at once)."""
        framed = FramedStream(stream, self.config.framing)
        job = WorkerJob(self, framed, WorkerNegotiation(self.key.peer_id, stream.remote_peer))
        self._jobs.add(job)
        try:
            return await self._serve_job(job)
        finally:
            self._jobs.discard(job)
            job.done.set()

    async def stop(self) -> None:
        """The node is shutting down: refuse new quotes, and tell each requester whose job is under way.

        Called before the network goes (``run.py``, bounded there): once the host is cancelled its
        connections close at once, and a requester read the dropped stream as a crash (QA). Told,
        it moves on knowing why (``error:cancelled``, "the worker is shutting down").

        It returns once those jobs have ended here too (their ``served`` rows are queued), so the
        caller can flush them before the database closes. The caller's bound covers all of it:
        the notices are not shielded, as a requester that stopped reading must not hold a stopping node.
        """
        self.stopping = True
        under_way = [job for job in self._jobs if job.machine.phase is not Phase.IDLE and not job.done.is_set()]
        told = [job for job in under_way if not job.machine.ended]
        delivering = [job for job in under_way if job.machine.ended]  # signed and sent: its output on its way
        with trio.move_on_after(STOP_NOTICE_S):
            async with trio.open_nursery() as nursery:
                for job in told:
                    job.note = "the worker is shutting down"
                    actions = job.machine.cancel(job.note, self.now_ms())
                    nursery.start_soon(functools.partial(self._tell_stopping, job, actions))
                for job in delivering:  # a delivery under way gets the notice's time to finish
                    nursery.start_soon(job.done.wait)
        for job in under_way:
            if not job.done.is_set():
                job.note = job.note or "the worker stopped while delivering the output"
                job.io_scope.cancel()
        for job in under_way:
            await job.done.wait()  # at once: cancelled, each task only notes its row

    async def _tell_stopping(self, job: WorkerJob, actions: Sequence[Action]) -> None:
        await job.apply(actions, shield_errors=False)
        job.io_scope.cancel()  # told: whatever its task waits on (an Accept, an upload) ends now

    async def _serve_job(self, job: WorkerJob) -> bool:
        framed = job.framed
        try:
            msg = await receive_job_message(framed, timeout_s=self.config.request_timeout_s)
        except ProtocolError as exc:
            # garbage before any job exists: answer once if the stream is still framed, then drop it
            if framed.broken is None:
                await job.apply([Send(JobError("", ErrorCode.PROTOCOL_VIOLATION, str(exc)[:400]))])
            return True
        except NetworkError:
            return False  # never asked anything within request_timeout_s, or left at once
        if not isinstance(msg, QuoteRequest):
            await job.apply(
                [Send(JobError("", ErrorCode.PROTOCOL_VIOLATION, "a job stream starts with a QuoteRequest"))]
            )
            return True
        await job.on_message(msg)
        try:
            with job.io_scope:
                await self._serve_accepted(job, msg)
                await job.send_held_quote()  # a job that ended before its run started still says what it quoted
            return True
        finally:
            # Every end of the machine releases its reservation; this covers a bug or an
            # exception between the quote and that end, so capacity can never leak.
            if job.machine.quote is not None:
                self.release(job.machine.quote.quote_id)
            if job.machine.accepted_at_ms:
                served = _log_served(job, msg, self.wall_clock())
                if self.served is not None:
                    self.served.note(served)

    async def _serve_accepted(self, job: WorkerJob, request: QuoteRequest) -> None:
        """Quote; then, once accepted, receive the inputs, run and deliver."""
        await self._quote(job, request)
        while job.machine.phase is Phase.QUOTED:
            if (incoming := await job.next_message()) is not None:
                await job.on_message(incoming)
        if job.machine.phase is not Phase.ACCEPTED:
            return
        inputs = await self._receive_inputs(job, request)
        if inputs is None:
            return
        await job.apply(job.machine.inputs_received(self.now_ms()))
        if not job.machine.ended:
            await self._run(job, request, inputs)

    async def _quote(self, job: WorkerJob, request: QuoteRequest) -> None:
        now = self.now_ms()
        if self.stopping:
            await job.apply(job.machine.refuse(RefusalReason.SHUTTING_DOWN, "the worker is shutting down", now, 0))
            return
        limit = self.config.max_standing_quotes_per_peer
        if not request.accept and (standing := self._standing_quotes(job.peer)) >= limit:
            message = f"{standing} quotes to this requester are unanswered (at most {limit})"
            await job.apply(job.machine.refuse(RefusalReason.RATE_LIMITED, message, now, RATE_LIMITED_RETRY_MS))
            return
        decision = decide_quote(request, self.pool.status(), self.config, held=len(self.reservations))
        if isinstance(decision, Decline):
            await job.apply(job.machine.refuse(decision.reason, decision.message[:500], now, decision.retry_after_ms))
            return
        quote_id = f"{self._quote_prefix}-{next(self._quote_ids)}"
        quote = Quote(
            quote_id=quote_id,
            job_id=job.machine.job_id,
            worker_peer_id=self.key.peer_id,
            price=decision.price,
            eta_ms=decision.eta_ms,
            warm=decision.row.warm,
            model_id=decision.row.model_id,
            weights_sha256=decision.row.weights_sha256,
            issued_at_ms=now,
            expires_at_ms=now + self.config.quote_ttl_ms,
        )
        self.reservations.add(quote_id)  # reserved before the quote leaves: capacity is promised, not hoped for
        self._capacity_changed()
        job.model_name = decision.row.name
        offered = job.machine.offer(quote, now)
        if request.accept and not request.spec.inputs and not job.machine.ended:
            # Taken in advance with nothing to upload: the run starts now, and the Quote's send (its seal,
            # the Noise write, a scheduler pass) waits until the model has the job (_run); the requester
            # waits on the model either way. Any message sent before then carries the Quote first.
            job.hold_quote(offered)
            return
        await job.apply(offered)

    def _standing_quotes(self, peer: str) -> int:
        """Quotes ``peer`` holds that it has neither accepted nor let go."""
        return sum(1 for job in self._jobs if job.peer == peer and job.machine.phase is Phase.QUOTED)

    async def _receive_inputs(self, job: WorkerJob, request: QuoteRequest) -> dict[str, bytes] | None:
        """The accepted job's inputs, each checked against its descriptor; None when the job ended instead.

        Bounded by the requester's deadline and by the worker's own upload allowance (``input_grace_s``
        plus the inputs' size at ``min_input_bytes_per_s``), whichever comes first. Past that bound the
        requester is told why first, and only then is the upload cut off (which resets the stream): it
        may still be sending, and it reads what came before the reset.
        """
        if not request.spec.inputs:
            return {}  # text-to-image: nothing to wait for, and no timer to start
        if self.hooks.upload_started is not None:
            self.hooks.upload_started()
        total = sum(blob.size_bytes for blob in request.spec.inputs)
        upload_s = self.config.input_grace_s + total / self.config.min_input_bytes_per_s
        deadline = job.machine.deadline_at_ms or self.now_ms()
        deadline_s = max(0.0, (deadline - self.now_ms()) / 1000)
        receiving = trio.CancelScope()

        async def cut_off_when_late() -> None:
            await trio.sleep(min(upload_s, deadline_s))
            if upload_s < deadline_s:
                job.note = f"inputs not in within {upload_s:.0f} s"
                allowance = f"{self.config.input_grace_s:g} s plus their size at "
                allowance += f"{self.config.min_input_bytes_per_s // 1024} KiB/s"
                message = f"the inputs ({total} bytes) did not arrive within {upload_s:.0f} s: this worker allows "
                await job.apply(job.machine.fail(ErrorCode.DEADLINE_EXCEEDED, message + allowance, self.now_ms()))
            else:
                await job.apply(job.machine.on_tick(max(self.now_ms(), deadline)))
            receiving.cancel()

        inputs: dict[str, bytes] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut_off_when_late)
            with receiving:
                inputs = await self._receive_each_input(job, request)
            nursery.cancel_scope.cancel()
        # the machine ended (a bad input, or the bound passed while the last bytes came in): no run
        return None if job.machine.ended else inputs

    async def _receive_each_input(self, job: WorkerJob, request: QuoteRequest) -> dict[str, bytes] | None:
        """The inputs in the spec's order, each checked against its descriptor; None once one fails (told)."""
        inputs: dict[str, bytes] = {}
        for blob in request.spec.inputs:
            limits = TransferLimits(max_total_bytes=blob.size_bytes, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES)
            try:
                # The hash is compared after the transfer, not from its header: a whole transfer
                # leaves the stream framed, so the requester hears input_mismatch instead of a reset.
                got = await receive_transfer(job.framed, limits)
            except NetworkError as exc:
                job.note = f"requester went away while sending inputs: {exc}"
                await job.apply(job.machine.cancel(f"requester went away: {exc}", self.now_ms()))
                return None
            except ProtocolError as exc:
                job.note = f"input {blob.name}: {exc}"[:200]
                await job.apply(job.machine.fail(ErrorCode.INPUT_MISMATCH, str(exc)[:400], self.now_ms()))
                return None
            announced = (got.header.total_bytes, got.header.media_type, got.header.sha256.hex())
            if announced != (blob.size_bytes, blob.media_type, blob.sha256):
                job.note = f"input {blob.name} differs from its descriptor"
                await job.apply(job.machine.fail(ErrorCode.INPUT_MISMATCH, f"{blob.name} differs", self.now_ms()))
                return None
            inputs[blob.name] = got.data
        return inputs

    async def _run(self, job: WorkerJob, request: QuoteRequest, inputs: dict[str, bytes]) -> None:
        machine = job.machine
        assert machine.quote is not None
        started = trio.current_time()
        send_progress, receive_progress = trio.open_memory_channel[StepProgress](16)

        def on_progress(step: StepProgress) -> None:
            # progress is advisory: drop a step rather than slow the run
            with contextlib.suppress(trio.WouldBlock):
                send_progress.send_nowait(step)

        # what the requester last heard, and when: a job waits in the pool's queue before it runs
        said = StepProgress("queued", 0, 0)
        said_at = trio.current_time()

        async def say(step: StepProgress) -> None:
            nonlocal said, said_at
            said, said_at = step, trio.current_time()
            # Shielded: the run ending cancels this task, and a frame send cancelled halfway
            # aborts the framed stream, so the Result right behind it would never arrive.
            # The send is bounded by the framing's write timeout.
            with trio.CancelScope(shield=True):
                await job.apply(machine.progress(step.stage[:32], step.step, step.total, self.now_ms()))

        async def forward_progress() -> None:
            async for step in receive_progress:
                await say(step)

        async def keep_alive() -> None:
            # The pool reports only while the job is on the device: queued behind other jobs, or
            # behind a model's load, it would look silent, and requesters give up on a worker
            # silent for 60 s (docs/protocol.md §8.8). Say the last word again meanwhile.
            interval_s = self.config.progress_keepalive_s
            while not machine.ended:
                await trio.sleep_until(said_at + interval_s)
                if trio.current_time() >= said_at + interval_s and not machine.ended:
                    await say(said)

        async def watch_requester() -> None:
            while not machine.ended:
                if (msg := await job.next_message()) is not None:
                    await job.on_message(msg)

        output = None
        failure: tuple[ErrorCode, str] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_requester)
            nursery.start_soon(forward_progress)
            nursery.start_soon(keep_alive)
            with job.run_scope:
                try:
                    request_for_pool = model_request(request.spec, inputs, request.input_shape)
                    if self.hooks.run_started is not None:
                        self.hooks.run_started()
                    if job.holds_quote:  # it leaves once the pool has handed the job on (its first pass; see _quote)
                        nursery.start_soon(_after_a_pass, job.send_held_quote)
                    output = await self.pool.run(job.model_name, request_for_pool, progress=on_progress)
                except PoolBusy as exc:
                    failure = ErrorCode.CANCELLED, f"busy: {exc}"
                except ModelError as exc:
                    failure = error_code(exc), str(exc)
                except Exception as exc:  # a bug in a model: this job fails with a word, the node serves on
                    log.exception("job %s: the run failed", machine.job_id[:12])
                    failure = ErrorCode.INTERNAL, f"the worker's run failed ({type(exc).__name__})"
                finally:  # a run cut short by the node stopping ran too (its log line says how long)
                    job.run_ms = int((trio.current_time() - started) * 1000)
            if failure is not None:
                job.note = failure[1][:200]
                # Outside run_scope: failing the machine aborts the run (cancels run_scope), and a
                # JobError sent inside that scope would be cancelled on its way out, so the
                # requester would read a bare end of stream instead of the typed error.
                await job.apply(machine.fail(failure[0], failure[1][:400], self.now_ms()))
            send_progress.close()
            # The Result goes out before the helpers above are torn down: cancelling them takes a scheduler
            # pass or two that the requester need not wait for. Progress sends are done by then (same lock).
            encoded = None if output is None or machine.ended else await self._send_result(job, request, output)
            nursery.cancel_scope.cancel()
        if encoded is None:
            return
        data = encoded.data if self.hooks.tamper_output is None else self.hooks.tamper_output(encoded.data)
        # the pool hashed the output already (and the receipt signs that hash): not again on the answer's path
        known_sha256 = bytes.fromhex(encoded.blob.sha256) if data is encoded.data else None
        try:
            await send_transfer(job.framed, data, encoded.blob.media_type, sha256=known_sha256)
        except NetworkError as exc:
            job.note = f"requester left before the output arrived: {exc}"
            return
        job.delivered = True
        self.completed += 1

    async def _send_result(
        self, job: WorkerJob, request: QuoteRequest, output: ImageOutput | VideoOutput
    ) -> EncodedOutput | None:
        """Sign the receipt of ``output`` and send the Result; the encoded output to send after it
        (None: the job ended meanwhile)."""
        machine = job.machine
        assert machine.quote is not None
        run_ms = job.run_ms or 0
        encoded = encode_output(output)
        if self.hooks.forge_output is not None:
            encoded = _forged(encoded, self.hooks.forge_output(encoded.data))
        receipt = Receipt(
            job_id=machine.job_id,
            requester_peer_id=machine.requester_peer_id,
            worker_peer_id=self.key.peer_id,
            nonce=request.nonce,
            spec=request.spec,
            quote_id=machine.quote.quote_id,
            price=machine.quote.price,
            model_id=machine.quote.model_id,
            weights_sha256=machine.quote.weights_sha256,
            runtime=self._runtime,
            outputs=(encoded.hashes,),
            # The pool's public API reports neither queueing nor load time apart from the run,
            # so run_ms holds all three; saying 0 for the parts is honest about what was measured.
            timings=Timings(queue_ms=0, load_ms=0, run_ms=run_ms),
            seq=self.sequence.next(),
            issued_at_ms=self.now_ms(),
        )
        if self.hooks.tamper_receipt is not None:
            receipt = self.hooks.tamper_receipt(receipt)
        try:
            job.receipt = sign_receipt(self.key, receipt)
            await job.apply(machine.finish((encoded.blob,), job.receipt, self.now_ms()))
        except InvalidTransition:
            return None  # ended meanwhile (cancel crossed the finish)
        return encoded


async def _after_a_pass(work: Callable[[], Awaitable[None]]) -> None:
    """``work``, after one more pass of the scheduler: the tasks woken beside this one go first."""
    await trio.lowlevel.checkpoint()
    await work()


def _forged(encoded: EncodedOutput, data: bytes) -> EncodedOutput:
    """``encoded`` with other bytes, hashed as if they were the output: a worker signing what it sends."""
    digest = hashlib.sha256(data).hexdigest()
    blob = dataclasses.replace(encoded.blob, size_bytes=len(data), sha256=digest)
    hashes = dataclasses.replace(encoded.hashes, size_bytes=len(data), sha256=digest)
    return EncodedOutput(data, blob, hashes)


def _log_served(job: WorkerJob, request: QuoteRequest, now: float) -> ServedJob:
    """The one line for a job the requester accepted (see the module docstring): no prompt in it.

    Returns the same facts as a row for the served-jobs book.
    """
    machine = job.machine
    price = machine.quote.price if machine.quote is not None else 0
    model = machine.quote.model_id if machine.quote is not None else request.spec.model_id
    if job.delivered:
        outcome, level, kept = "done", logging.INFO, "delivered"
    elif machine.reason == "done":  # signed and sent, but the output never reached the requester
        outcome, level, kept = "abandoned", logging.WARNING, "abandoned"
    elif machine.reason == "cancelled_by_requester":
        outcome, level, kept = "cancelled by the requester", logging.INFO, "cancelled"
    elif machine.reason == "cancelled_by_worker" or not machine.ended:  # not ended: this node stopped, or a bug
        outcome, level, kept = "abandoned", logging.WARNING, "abandoned"
    else:  # error:<code>, deadline, violation:<reason>
        outcome, level, kept = f"failed ({machine.reason})", logging.WARNING, "failed"
    run = "not run" if job.run_ms is None else f"run {job.run_ms} ms"
    log.log(
        level,
        "job %s for %s: %s %s %s, %s, %s %d%s",
        machine.job_id[:12],
        machine.requester_peer_id[-12:],
        request.spec.pipeline,
        model,
        outcome,
        run,
        "price" if job.delivered else "quoted",  # only a delivered job earned its price
        price,
        f": {job.note}" if job.note and not job.delivered else "",
    )
    why = outcome[len(kept) :].strip(" ()") if outcome.startswith(kept) else outcome  # "error:deadline", ...
    detail = "" if job.delivered else "; ".join(x for x in (why, job.note) if x)
    return ServedJob(
        job_id=machine.job_id,
        requester_peer_id=machine.requester_peer_id,
        pipeline=str(request.spec.pipeline),
        model_id=model,
        outcome=kept,
        detail=detail,
        price=price,
        run_ms=job.run_ms,
        ended_at=now,
        receipt=job.receipt,
    )


async def _close(stream: ByteStream) -> None:
    # Shielded and not cut short by a timeout of ours: on libp2p a close is one small write under
    # the connection's write lock, and a write cancelled halfway would leave part of a Noise frame
    # on the connection that every stream to this peer shares. It is bounded by that connection's
    # health pings, which drop a peer that stops reading.
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except Exception:  # closing a reset stream may fail; it is gone either way
            log.debug("closing a job stream failed", exc_info=True)


async def serve_job_worker(
    network: Network,
    key: NodeKey,
    pool: InferencePool,
    config: WorkerConfig | None = None,
    *,
    wall_clock: WallClock,
    sequence_path: Path | None = None,
    hooks: WorkerHooks | None = None,
    served: ServedBook | None = None,
    on_capacity_change: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[JobWorker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve jobs until cancelled; ``task_status.started`` hands back the :class:`JobWorker`.

    ``served``: where each accepted job's end is kept (``lpnode served``), beside its log line.
    ``on_capacity_change``: called when a reservation is taken or freed (the advert counts them).
    """
    worker = JobWorker(
        key,
        pool,
        config or WorkerConfig(),
        wall_clock=wall_clock,
        sequence=ReceiptSequence(wall_clock, sequence_path),
        hooks=hooks,
        served=served,
        on_capacity_change=on_capacity_change,
    )
    network.set_stream_handler(JOB_PROTOCOL, worker.handle)
    task_status.started(worker)
    await trio.sleep_forever()


__all__ = ["JobWorker", "WorkerConfig", "WorkerHooks", "serve_job_worker"]
