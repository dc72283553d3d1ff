"""The job negotiation as two pure state machines, one per side of the stream.

The I/O layer owns the stream, the clock and the model pool; these classes only
decide. It feeds each decoded peer message to ``on_message(msg, now_ms)``, calls
the explicit methods for this node's own decisions (``offer``, ``accept``,
``finish``, ``cancel`` ...), calls ``on_tick(now_ms)`` by ``next_wakeup_ms``,
and carries out the returned actions in order::

    idle ─► requested ─► quoted ─► accepted ─► running ─► (delivering) ─► done
               │            │          │          │             │
               └────────────┴──────────┴──────────┴─────────────┴──► failed | cancelled

``delivering`` is the requester's: the Result and its receipt checked, output
chunks arriving, ended by ``outputs_received``. A request taken in advance
(``QuoteRequest.accept``) skips ``quoted``: the quote is accepted as it is sent
and received, and the inputs follow the request without an Accept, one round
trip less. Rules that keep it safe:

* A peer message the state does not allow raises :class:`ProtocolViolation`
  after the machine has moved to ``failed``; the exception carries the cleanup
  actions (stop the run, free the reservation, tell the peer).
* Once ended, a machine ignores peer messages and this node's late decisions:
  a Cancel crossing a Result on the wire, or a run finishing just as the
  requester gives up, is a race, not an error. A late ``offer`` answers with
  the release of the reservation it came with.
* On the worker, every end after a quote frees the reservation exactly once,
  and every end after ``StartRun`` other than ``done`` stops the run.
* Times are the caller's unix ms. Relative durations (deadline, quote lifetime)
  cross the wire, so the two peers' clocks need not agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from .errors import InvalidTransition, OutputMismatch, ProtocolViolation, ReceiptRejected
from .jobs import (
    Accept,
    Cancel,
    ErrorCode,
    JobError,
    JobMessage,
    Progress,
    Quote,
    QuoteRequest,
    Refusal,
    RefusalReason,
    Result,
)
from .jobspec import BlobDescriptor, job_id
from .receipts import Receipt, check_outputs, verify_receipt


class Phase(StrEnum):
    IDLE = "idle"
    REQUESTED = "requested"  # QuoteRequest sent / received; the worker is deciding
    QUOTED = "quoted"  # a quote stands; the worker holds capacity for it
    ACCEPTED = "accepted"  # quote taken; inputs in transit
    RUNNING = "running"  # the worker runs the job
    DELIVERING = "delivering"  # requester only: receipt checked, outputs in transit
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = frozenset({Phase.DONE, Phase.FAILED, Phase.CANCELLED})
_LIVE = (Phase.REQUESTED, Phase.QUOTED, Phase.ACCEPTED, Phase.RUNNING)  # phases the deadline bounds


@dataclass(frozen=True)
class Send:
    message: JobMessage  # write it to the stream (encode_job_message signs quotes)


@dataclass(frozen=True)
class ReleaseReservation:
    quote_id: str  # worker: free the capacity held for this quote


@dataclass(frozen=True)
class StartRun:
    job_id: str  # worker: inputs are in; hand the job to the model pool


@dataclass(frozen=True)
class AbortRun:
    job_id: str  # worker: cancel the running job (its CancelToken)


Action: TypeAlias = Send | ReleaseReservation | StartRun | AbortRun


class _Machine:
    phase: Phase = Phase.IDLE
    reason: str = ""  # once ended: "done", "deadline", "quote_expired", "refused:busy", "error:oom", ...
    job_id: str = ""
    deadline_at_ms: int | None = None  # unix ms, this node's clock

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    def _require(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise InvalidTransition(f"not allowed in phase {self.phase} (needs {', '.join(phases)})")

    def _deadline_passed(self, now_ms: int) -> bool:
        return self.phase in _LIVE and self.deadline_at_ms is not None and now_ms >= self.deadline_at_ms

    def _cleanup(self, ending: Phase) -> list[Action]:
        return []

    def _end(self, phase: Phase, reason: str, notify: JobMessage | None = None) -> list[Action]:
        # Local cleanup before the message to the peer: a send that fails must not leak capacity.
        actions = self._cleanup(phase)
        if notify is not None:
            actions.append(Send(notify))
        self.phase, self.reason = phase, reason
        return actions

    def _violation(self, reason: str, detail: str, notify: JobMessage | None) -> ProtocolViolation:
        return ProtocolViolation(reason, detail, tuple(self._end(Phase.FAILED, f"violation:{reason}", notify)))


class WorkerNegotiation(_Machine):
    """The worker's side of one job stream, opened by ``requester_peer_id``."""

    def __init__(self, worker_peer_id: str, requester_peer_id: str) -> None:
        self.worker_peer_id = worker_peer_id
        self.requester_peer_id = requester_peer_id  # the stream's authenticated remote peer
        self.request: QuoteRequest | None = None
        self.quote: Quote | None = None  # offered, capacity reserved
        self.accepted_at_ms = 0  # unix ms, for Progress.elapsed_ms
        self._run_started = False

    def next_wakeup_ms(self) -> int | None:
        """When ``on_tick`` must run next (unix ms), or None."""
        if self.ended or self.deadline_at_ms is None:
            return None
        if self.phase is Phase.QUOTED and self.quote is not None:
            return min(self.deadline_at_ms, self.quote.expires_at_ms)
        return self.deadline_at_ms

    def on_tick(self, now_ms: int) -> list[Action]:
        if self._deadline_passed(now_ms):
            return self._end(Phase.FAILED, "deadline", self._error(ErrorCode.DEADLINE_EXCEEDED, "deadline passed"))
        if self.phase is Phase.QUOTED and self.quote is not None and now_ms >= self.quote.expires_at_ms:
            return self._end(Phase.FAILED, "quote_expired", self._error(ErrorCode.QUOTE_EXPIRED, "quote expired"))
        return []

    def on_message(self, msg: JobMessage, now_ms: int) -> list[Action]:
        if self.ended:
            return []
        if ended := self.on_tick(now_ms):
            return ended  # an Accept after expiry gets quote_expired, not a violation
        if isinstance(msg, QuoteRequest) and self.phase is Phase.IDLE:
            self.request = msg
            self.job_id = job_id(msg.spec, self.requester_peer_id, msg.nonce)
            self.deadline_at_ms = now_ms + msg.deadline_ms
            self.phase = Phase.REQUESTED
            return []
        if isinstance(msg, Accept) and self.phase is Phase.QUOTED:
            assert self.quote is not None and self.request is not None
            if (msg.quote_id, msg.job_id) != (self.quote.quote_id, self.job_id):
                raise self._violating("wrong_quote", "Accept names another quote or job")
            if msg.inputs != self.request.spec.inputs:
                raise self._violating("wrong_inputs", "Accept lists inputs other than the spec's")
            self.accepted_at_ms = now_ms
            self.phase = Phase.ACCEPTED
            return []
        if isinstance(msg, Cancel) and self.phase is not Phase.IDLE:
            if msg.job_id != self.job_id:
                raise self._violating("wrong_job", "Cancel names another job")
            return self._end(Phase.CANCELLED, "cancelled_by_requester")
        raise self._violating("unexpected", f"{type(msg).__name__} in phase {self.phase}")

    # this node's decisions -------------------------------------------------------------------

    def offer(self, quote: Quote, now_ms: int) -> list[Action]:
        """Send ``quote``; the caller has reserved capacity for it already."""
        ended = self.on_tick(now_ms)
        if self.ended:
            return [*ended, ReleaseReservation(quote.quote_id)]  # nobody will take it up
        self._require(Phase.REQUESTED)
        assert self.request is not None
        spec_model = self.request.spec.model_id
        if quote.job_id != self.job_id or quote.worker_peer_id != self.worker_peer_id:
            raise InvalidTransition("quote for another job or worker")
        if quote.expires_at_ms <= now_ms or quote.price > self.request.max_price:
            raise InvalidTransition("quote already expired or above the requester's max_price")
        if spec_model and quote.model_id != spec_model:
            raise InvalidTransition(f"quote for model {quote.model_id}, job asks for {spec_model}")
        self.quote = quote
        self.phase = Phase.QUOTED
        if self.request.accept:  # taken in advance: the inputs are on their way already
            self.accepted_at_ms = now_ms
            self.phase = Phase.ACCEPTED
        return [Send(quote)]

    def refuse(self, reason: RefusalReason, message: str, now_ms: int, retry_after_ms: int = 0) -> list[Action]:
        if ended := self.on_tick(now_ms):
            return ended
        if self.ended:
            return []
        self._require(Phase.REQUESTED)
        return self._end(Phase.FAILED, f"refused:{reason}", Refusal(self.job_id, reason, message, retry_after_ms))

    def inputs_received(self, now_ms: int) -> list[Action]:
        """Every input arrived and matched its descriptor: start the run."""
        if ended := self.on_tick(now_ms):
            return ended
        if self.ended:
            return []
        self._require(Phase.ACCEPTED)
        self.phase = Phase.RUNNING
        self._run_started = True
        return [StartRun(self.job_id)]

    def progress(self, stage: str, step: int, total: int, now_ms: int) -> list[Action]:
        if ended := self.on_tick(now_ms):
            return ended
        if self.ended:
            return []
        self._require(Phase.RUNNING)
        elapsed = max(0, now_ms - self.accepted_at_ms)
        return [Send(Progress(self.job_id, stage, step, total, elapsed))]

    def finish(self, outputs: tuple[BlobDescriptor, ...], receipt: bytes, now_ms: int) -> list[Action]:
        """The run produced ``outputs`` and this node signed ``receipt``; output chunks follow the Result.

        No deadline check here: the work is done and paid for by the quote, so the
        requester decides whether a late result is still welcome.
        """
        if self.ended:
            return []
        self._require(Phase.RUNNING)
        return self._end(Phase.DONE, "done", Result(self.job_id, outputs, receipt))

    def fail(self, code: ErrorCode, message: str, now_ms: int) -> list[Action]:
        """Give up with a typed error (bad inputs, OOM, load failure, ...)."""
        if self.ended:
            return []
        self._require(Phase.QUOTED, Phase.ACCEPTED, Phase.RUNNING)
        return self._end(Phase.FAILED, f"error:{code}", self._error(code, message))

    def cancel(self, message: str, now_ms: int) -> list[Action]:
        """This worker gives up (shutdown, operator): tell the requester, stop, free the reservation."""
        if self.ended:
            return []
        notify = None if self.phase is Phase.IDLE else self._error(ErrorCode.CANCELLED, message)
        return self._end(Phase.CANCELLED, "cancelled_by_worker", notify)

    # ----------------------------------------------------------------------------------------

    def _error(self, code: ErrorCode, message: str) -> JobError:
        return JobError(self.job_id, code, message)

    def _violating(self, reason: str, detail: str) -> ProtocolViolation:
        """The requester broke the protocol: end the job, and tell it what it did (``detail``) in a JobError."""
        return self._violation(reason, detail, self._error(ErrorCode.PROTOCOL_VIOLATION, detail))

    def _cleanup(self, ending: Phase) -> list[Action]:
        actions: list[Action] = []
        if self.phase is Phase.RUNNING and ending is not Phase.DONE:
            actions.append(AbortRun(self.job_id))
        if self.quote is not None:
            actions.append(ReleaseReservation(self.quote.quote_id))
        return actions


class RequesterNegotiation(_Machine):
    """The requester's side of one job stream to ``worker_peer_id``."""

    def __init__(self, request: QuoteRequest, requester_peer_id: str, worker_peer_id: str) -> None:
        self.request = request
        self.requester_peer_id = requester_peer_id
        self.worker_peer_id = worker_peer_id  # the stream's authenticated remote peer
        self.job_id = job_id(request.spec, requester_peer_id, request.nonce)
        self.quote: Quote | None = None
        self.quote_expires_at_ms = 0  # unix ms, this node's clock: arrival + the quote's lifetime
        self.progress: Progress | None = None  # the latest
        self.refusal: Refusal | None = None
        self.error: JobError | None = None
        self.receipt: Receipt | None = None
        self.receipt_bytes = b""  # as signed, for storage and ``lpnode receipt verify``

    def start(self, now_ms: int) -> list[Action]:
        self._require(Phase.IDLE)
        self.deadline_at_ms = now_ms + self.request.deadline_ms
        self.phase = Phase.REQUESTED
        return [Send(self.request)]

    def next_wakeup_ms(self) -> int | None:
        if self.phase not in _LIVE or self.deadline_at_ms is None:
            return None
        if self.phase is Phase.QUOTED:
            return min(self.deadline_at_ms, self.quote_expires_at_ms)
        return self.deadline_at_ms

    def on_tick(self, now_ms: int) -> list[Action]:
        if self._deadline_passed(now_ms):
            return self._end(Phase.FAILED, "deadline", Cancel(self.job_id, "deadline"))
        if self.phase is Phase.QUOTED and now_ms >= self.quote_expires_at_ms:
            return self._end(Phase.FAILED, "quote_expired", Cancel(self.job_id, "quote_expired"))
        return []

    def on_message(self, msg: JobMessage, now_ms: int) -> list[Action]:
        if self.ended:
            return []
        if ended := self.on_tick(now_ms):
            return ended
        claimed = getattr(msg, "job_id", self.job_id)  # a JobError may say "" (job unknown to the worker)
        if claimed != self.job_id and not (isinstance(msg, JobError) and claimed == ""):
            raise self._violation("wrong_job", f"{type(msg).__name__} names another job", self._cancel())
        if isinstance(msg, Quote) and self.phase is Phase.REQUESTED:
            self._check_quote(msg)
            self.quote = msg
            self.quote_expires_at_ms = now_ms + msg.ttl_ms
            # a request taken in advance is accepted by the quote itself (its inputs went with it)
            self.phase = Phase.ACCEPTED if self.request.accept else Phase.QUOTED
            return []
        if isinstance(msg, Refusal) and self.phase is Phase.REQUESTED:
            self.refusal = msg
            return self._end(Phase.FAILED, f"refused:{msg.reason}")
        if isinstance(msg, Progress) and self.phase in (Phase.ACCEPTED, Phase.RUNNING):
            self.progress = msg
            self.phase = Phase.RUNNING
            return []
        if isinstance(msg, Result) and self.phase in (Phase.ACCEPTED, Phase.RUNNING):
            self.receipt = self._check_result(msg)
            self.receipt_bytes = msg.receipt
            self.phase = Phase.DELIVERING
            return []
        if isinstance(msg, JobError) and self.phase is not Phase.IDLE:
            self.error = msg
            return self._end(Phase.FAILED, f"error:{msg.code}")
        raise self._violation("unexpected", f"{type(msg).__name__} in phase {self.phase}", self._cancel())

    # this node's decisions -------------------------------------------------------------------

    def accept(self, now_ms: int) -> list[Action]:
        """Take the standing quote; the input chunks follow the Accept."""
        if ended := self.on_tick(now_ms):
            return ended
        if self.ended:
            return []
        self._require(Phase.QUOTED)
        assert self.quote is not None
        self.phase = Phase.ACCEPTED
        return [Send(Accept(self.quote.quote_id, self.job_id, self.request.spec.inputs))]

    def outputs_received(self, outputs_sha256: Sequence[str], now_ms: int) -> list[Action]:
        """Every output arrived; ``outputs_sha256`` are the hashes of the bytes received.

        Raises :class:`OutputMismatch` (the machine is ``failed`` then) when they are
        not the ones the worker signed: the requester rejects the result.
        """
        if self.ended:
            return []
        self._require(Phase.DELIVERING)
        assert self.receipt is not None
        try:
            check_outputs(self.receipt, outputs_sha256)
        except OutputMismatch:
            self._end(Phase.FAILED, "output_mismatch")
            raise
        return self._end(Phase.DONE, "done")

    def cancel(self, reason: str, now_ms: int) -> list[Action]:
        """Give up on the job: tell the worker unless it never heard of it or has finished."""
        if self.ended:
            return []
        notify = Cancel(self.job_id, reason) if self.phase in _LIVE else None
        return self._end(Phase.CANCELLED, "cancelled_by_requester", notify)

    # ----------------------------------------------------------------------------------------

    def _cancel(self) -> Cancel | None:
        return Cancel(self.job_id, "protocol_violation") if self.phase in _LIVE else None

    def _check_quote(self, quote: Quote) -> None:
        spec_model = self.request.spec.model_id
        if quote.worker_peer_id != self.worker_peer_id:
            raise self._violation("wrong_worker", f"quote signed for {quote.worker_peer_id}", self._cancel())
        if quote.price > self.request.max_price:
            raise self._violation("over_price", f"{quote.price} > max {self.request.max_price}", self._cancel())
        if spec_model and quote.model_id != spec_model:
            raise self._violation("wrong_model", f"quote for {quote.model_id}, asked {spec_model}", self._cancel())

    def _check_result(self, result: Result) -> Receipt:
        """The receipt verifies and binds this job, this quote and exactly the outputs announced."""
        assert self.quote is not None
        try:
            receipt = verify_receipt(result.receipt)
        except ReceiptRejected as exc:
            raise self._violation("bad_receipt", str(exc), self._cancel()) from exc
        # verify_receipt recomputed receipt.job_id from its spec, requester and nonce, so an
        # equal id means the receipt is for this spec, asked by this node, with this nonce.
        problems = {
            "job": receipt.job_id != self.job_id,
            "worker": receipt.worker_peer_id != self.worker_peer_id,
            "quote": (receipt.quote_id, receipt.price) != (self.quote.quote_id, self.quote.price),
            "model": (receipt.model_id, receipt.weights_sha256) != (self.quote.model_id, self.quote.weights_sha256),
            "outputs": [(o.name, o.media_type, o.size_bytes, o.sha256) for o in receipt.outputs]
            != [(o.name, o.media_type, o.size_bytes, o.sha256) for o in result.outputs],
            "media_type": any(o.media_type != self.request.spec.output.media_type for o in result.outputs),
            "size": sum(o.size_bytes for o in result.outputs) > self.request.spec.output.max_total_bytes,
        }
        wrong = [name for name, bad in problems.items() if bad]
        if wrong:
            raise self._violation("receipt_mismatch", f"receipt disagrees on {', '.join(wrong)}", self._cancel())
        return receipt


__all__ = [
    "ENDED",
    "AbortRun",
    "Action",
    "Phase",
    "ReleaseReservation",
    "RequesterNegotiation",
    "Send",
    "StartRun",
    "WorkerNegotiation",
]
