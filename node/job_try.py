"""One try of a job on one candidate: one stream, driven by :class:`RequesterNegotiation`.

:class:`CandidateTry` opens the stream (over the network, on a spare stream opened ahead, or in
process to this node's own worker), runs the negotiation, sends the inputs, receives and checks the
outputs, and says how the try ended as an :class:`Attempt`. Choosing the candidates, retrying the
next one and asking busy workers again is ``job_requester.run_job``'s.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from lpnode.protocol.errors import NetworkError, OutputMismatch, ProtocolError, ProtocolViolation, StreamTimeout
from lpnode.protocol.jobs import ACCEPT_IN_ADVANCE, InputShape, JobMessage, Progress, QuoteRequest, Result
from lpnode.protocol.jobspec import JobSpec
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.negotiation import Action, Phase, RequesterNegotiation, Send
from lpnode.protocol.receipts import Receipt

from .daemon import Node
from .framing import FramedStream, FramingConfig
from .job_stream import receive_job_message, send_job_message
from .network.base import ByteStream
from .output_check import PngCheck, expected_size, output_problem
from .peer_choice import Candidate, work_is_known
from .spare_streams import SpareStreams
from .transfer import TransferLimits, receive_transfer, send_transfer

if TYPE_CHECKING:  # local_jobs imports the worker, and with it torch: only for the annotation
    from .local_jobs import LocalWorker

# A worker that says nothing for this long is given up on, so one stalled peer cannot eat the
# whole deadline: a quote needs no device work and comes fast; once running, workers send
# progress after every step, but a cold model may load for a while before the first.
DEFAULT_QUOTE_TIMEOUT_S = 10.0
DEFAULT_SILENCE_S = 60.0
CANCEL_GRACE_S = 1.0  # time given to telling a worker we gave up
LAST_WORD_S = 1.0  # time given to reading what a worker said before it cut our upload off (it is buffered by then)
# Inputs up to this size follow the QuoteRequest at once (QuoteRequest.accept). Well under what a
# refusing worker drops while it waits for our close (job_stream.MAX_LINGER_BYTES) and under one
# yamux window, so sending them never blocks on a worker that is not reading.
ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES = 32 * 1024
QUOTE_ABOVE_ADVERT = "violation:quote_above_advert"  # a quote dearer than the peer's advert says: not accepted
BAD_OUTPUT = "violation:bad_output"  # a signed output that is not the file the job asked for (output_check)

# Whose doing a failed try was, as the reputation store counts it (``Attempt.fault``; docs/verification.md,
# "Failed tries"). Only what the worker itself signed or sent on its own authenticated stream is proof: a network
# or our own deadline can cut a try short, but neither can make a worker sign a receipt for the wrong bytes.
FAULT_CHEAT = "cheat"  # it signed a result that is not this job's (receipt or outputs): proof; counts to a ban
FAULT_VIOLATION = "violation"  # it broke the protocol on its stream before any result (a quote over the price...)
FAULT_UNPROVEN = "unproven"  # it took the job (quoted) and then went away, fell silent, failed or ran out of time
# outcomes, by class. Not the worker's doing: "unreachable", a refusal (it may say "no" or "not now"), a spare
# stream that broke unanswered, a stream lost before it answered, our own cancel, the quote expiring in our hands.
CHEAT_OUTCOMES = frozenset(
    {"output_mismatch", BAD_OUTPUT, "violation:receipt_mismatch", "violation:bad_receipt"}
)  # the first two with a receipt that verifies: kept as evidence
VIOLATION_OUTCOMES = frozenset(
    {
        "garbage",  # undecodable frames, or a quote whose signature does not verify
        "violation:over_price",  # a signed quote above the request's max_price (it should have refused "price")
        QUOTE_ABOVE_ADVERT,  # a signed quote above its own signed advert: bait and switch
        "violation:wrong_job",  # a message naming another job
        "violation:wrong_worker",  # a quote signed by another peer
        "violation:wrong_model",  # a quote for another model than the one asked
        "violation:unexpected",  # a message out of turn
    }
)
# errors a worker reports after quoting that are the request's doing, or ours (the rest are its own: out of memory,
# model load failed, internal, its own deadline, shutting down with a job it took)
NOT_ITS_ERRORS = frozenset(
    {"error:invalid_input", "error:input_mismatch", "error:quote_expired", "error:protocol_violation"}
)

ProgressCallback = Callable[[str, Progress], None]  # (worker peer id, latest progress)
# When a worker was lost, as people read it (an attempt's detail): how far the job had got there, as far as
# the requester had heard (a worker that started running may be lost before its word of it arrives)
_WHEN = {
    Phase.REQUESTED: "waiting for its quote",
    Phase.ACCEPTED: "after its quote was accepted",
    Phase.RUNNING: "while running",
}


@dataclass(frozen=True)
class Attempt:
    peer_id: str
    model_id: str  # the model asked of this peer (the job's, or the one the router chose there)
    job_id: str  # this try's job id (fresh nonce per try)
    outcome: str  # "done", "refused:busy", "error:out_of_memory", "disconnected", "violation:bad_receipt", ...
    detail: str  # for people
    price: int | None  # quoted micro-credits, when a quote came
    fault: str = ""  # FAULT_CHEAT, FAULT_VIOLATION or FAULT_UNPROVEN when the failure was the worker's doing
    receipt: bytes = b""  # the signed receipt of a failed try that had one (evidence of a FAULT_CHEAT)


class TryWatcher:
    """A progress callback that also hears each of a job's tries start and end (``run_job`` tells it).

    Passed as ``run_job``'s ``on_progress``: it is a :data:`ProgressCallback` itself, so it goes through
    every runner that hands that callback on (the job manager's ``JobRunner``, the spot checker) with
    no signature changed, and the requester knows nothing of who shows the tries or how. A plain
    callable still gets progress alone. A spot check's copies run with a callback of their own: a
    watcher hears the job's own tries, never the checks.
    """

    def __call__(self, peer_id: str, message: Progress) -> None:
        """A try's latest progress."""

    def try_started(self, number: int, peer_id: str, model_id: str) -> None:
        """Try ``number`` (counted from 1) starts on ``peer_id``, which is asked to run ``model_id``."""

    def try_ended(self, number: int, attempt: Attempt) -> None:
        """Try ``number`` ended as ``attempt`` records it (outcome ``done``: a verified result).

        Not called for a try cut short by a cancel (the job's, or the node stopping).
        """


class CandidateTry:
    """One candidate, one stream."""

    def __init__(
        self,
        node: Node,
        candidate: Candidate,
        spec: JobSpec,
        inputs: Mapping[str, bytes],
        max_price: int,
        time_left_s: float,
        on_progress: ProgressCallback | None,
        framing: FramingConfig,
        *,
        input_shape: InputShape | None = None,
    ) -> None:
        self.node = node
        self.candidate = candidate
        self.inputs = inputs
        self.time_left_s = time_left_s
        self.on_progress = on_progress
        self.framing = framing
        # Small inputs (none, for text-to-image) go right behind the request, taken in advance: one
        # round trip less. Large ones wait for a quote, so a refusing worker is not sent megabytes.
        small = sum(blob.size_bytes for blob in spec.inputs) <= ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES
        in_advance = small and ACCEPT_IN_ADVANCE in candidate.job_features
        deadline_ms = max(1, int(time_left_s * 1000))
        request = QuoteRequest(
            spec, secrets.token_bytes(16), max_price, deadline_ms, accept=in_advance, input_shape=input_shape
        )
        self.machine = RequesterNegotiation(request, node.peer_id, candidate.peer_id)
        self.outcome = ""  # set when this try ended for a reason the machine does not know
        self.detail = ""
        self.framed: FramedStream | None = None
        self.quote_timeout_s = DEFAULT_QUOTE_TIMEOUT_S
        self.silence_s = DEFAULT_SILENCE_S
        self.local: LocalWorker | None = None  # set when the candidate is this node itself
        self.send_error = ""  # the first send that failed, if any
        self.spares: SpareStreams | None = None  # take the worker's spare stream, and open the next one
        self.take_spare = True  # False: open a stream now even if a spare is held
        self.on_spare = False  # this try runs on a spare stream (opened before the job)
        self.check_output_size = True  # False: outputs are checked for structure only (simnet's stand-ins)
        self.offload_checks = True  # False: a video's check runs on the event loop (simnet's virtual clock)
        self.refused_receipt = b""  # a Result's receipt the machine refused (receipt_mismatch): evidence
        self.uploading = False  # the inputs are on their way and not all sent yet

    def attempt(self) -> Attempt:
        machine = self.machine
        outcome = self.outcome or machine.reason or ("disconnected" if self.send_error else str(machine.phase))
        detail = self.detail
        if not detail and machine.refusal is not None:
            detail = machine.refusal.message
        if not detail and machine.error is not None:
            detail = machine.error.message
        if not detail:
            detail = self.send_error
        price = machine.quote.price if machine.quote is not None else None
        fault = self.fault(outcome)
        receipt = (machine.receipt_bytes or self.refused_receipt) if fault == FAULT_CHEAT else b""
        return Attempt(
            self.candidate.peer_id, self.candidate.model_id, machine.job_id, outcome, detail, price, fault, receipt
        )

    def fault(self, outcome: str) -> str:
        """Whose doing a try that ended as ``outcome`` was: a ``FAULT_*`` class, or "" (done, or not the worker's).

        Proof (``FAULT_CHEAT``, ``FAULT_VIOLATION``) is what the worker signed or sent on its own stream, which the
        connection authenticates. Past its quote a worker has taken the job with our deadline in hand, so losing it,
        falling silent, failing it or missing the deadline is its doing (``FAULT_UNPROVEN``: a network can look the
        same, so it weighs less); before any answer a lost stream or silence may be the network's, or a restart.
        """
        if outcome in CHEAT_OUTCOMES:
            return FAULT_CHEAT
        if outcome in VIOLATION_OUTCOMES or outcome.startswith("violation:"):
            return FAULT_VIOLATION
        if outcome == "timeout":  # the stream opened, so the path to it works: the silence is its own
            return FAULT_UNPROVEN
        if self.machine.quote is None or outcome == "done" or outcome.startswith("refused:"):
            return ""
        if outcome == "error:deadline_exceeded" and self.uploading:
            return ""  # our upload outran the worker's allowance for it (or our own deadline): the slow side was ours
        if outcome in ("disconnected", "deadline"):
            return FAULT_UNPROVEN
        if outcome.startswith("error:") and outcome not in NOT_ITS_ERRORS:
            return FAULT_UNPROVEN
        return ""

    def spare_was_dead(self) -> bool:
        """This try ran on a spare that broke before the worker said anything: not the worker's doing."""
        machine = self.machine
        unanswered = machine.quote is None and machine.refusal is None and machine.error is None
        return self.on_spare and unanswered and self.outcome == "disconnected"

    def _end(self, outcome: str, detail: str) -> None:
        if not self.outcome:
            self.outcome, self.detail = outcome, detail

    async def run(self) -> tuple[Receipt, tuple[bytes, ...]] | None:
        with trio.move_on_after(self.time_left_s) as scope:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    stream = await self._open(stack)
                except NetworkError as exc:
                    self._end("unreachable", str(exc))
                    return None
                self.framed = FramedStream(stream, self.framing)
                try:
                    return await self._negotiate()
                finally:
                    # Tell the worker we gave up (deadline, a bad result, our caller's cancel),
                    # briefly and shielded: this may run while a cancellation unwinds.
                    with trio.CancelScope(shield=True):
                        if not self.machine.ended:
                            with trio.move_on_after(CANCEL_GRACE_S):
                                await self._apply(self.machine.cancel("requester gave up", self.node.now_ms()))
                        # Our close is the worker's signal that the outputs arrived; not cut short by a
                        # timeout (a libp2p close cancelled halfway can damage the shared connection).
                        # Off the answer's path where a spare-stream keeper can do it.
                        if self.spares is not None and self.candidate.peer_id != self.node.peer_id:
                            self.spares.close_soon(stream)
                        else:
                            with contextlib.suppress(NetworkError):  # already reset by the peer or by us
                                await stream.aclose()
        if scope.cancelled_caught:
            self._end("deadline", f"no verified result within {self.time_left_s:.1f} s")
        return None

    async def _open(self, stack: contextlib.AsyncExitStack) -> ByteStream:
        """A job stream to the candidate: over the network, or in process to this node's own worker."""
        if self.candidate.peer_id != self.node.peer_id:
            spares = self.spares if self.take_spare else None
            if spares is not None and (spare := await spares.take(self.candidate.peer_id)) is not None:
                self.on_spare = True
                return spare
            return await self.node.network.open_stream(self.candidate.peer_id, JOB_PROTOCOL, self.candidate.addrs)
        if self.local is None:  # run_job never ranks this node without a local worker; kept as a guard
            raise NetworkError("this node has no local worker to run the job on")
        return await stack.enter_async_context(self.local.open_stream())

    async def _negotiate(self) -> tuple[Receipt, tuple[bytes, ...]] | None:
        machine = self.machine
        in_advance = machine.request.accept
        await self._apply(machine.start(self.node.now_ms()))
        if in_advance and not await self._send_inputs():
            return None
        while machine.phase is Phase.REQUESTED:
            await self._next()
        if machine.phase not in (Phase.QUOTED, Phase.ACCEPTED):
            return None
        if self._quote_above_advert():
            await self._apply(machine.cancel("quote above the advertised price", self.now()))
            return None
        if not in_advance:
            await self._apply(machine.accept(self.node.now_ms()))
            if not await self._send_inputs():
                return None
        if self.spares is not None and self.local is None:
            # The worker now runs the job: the time to open the stream the next job to it will take.
            # Hidden behind the run, the open costs the next job nothing, not even its round trip
            # (spare_streams; opened after the job instead, it only moved into the answer's path).
            self.spares.replenish(self.candidate.peer_id, self.candidate.addrs)
        while machine.phase in (Phase.ACCEPTED, Phase.RUNNING):
            await self._next()
        if machine.phase is not Phase.DELIVERING:  # type: ignore[comparison-overlap]  # _next moved it
            return None
        return await self._receive_outputs()

    async def _send_inputs(self) -> bool:
        assert self.framed is not None
        self.uploading = True
        try:
            for blob in self.machine.request.spec.inputs:
                await send_transfer(self.framed, self.inputs[blob.name], blob.media_type)
            self.uploading = False
        except NetworkError as exc:
            # A worker that cuts an upload off (it is stopping, or the upload outran its allowance) says why
            # first, and that word is still readable: it names the try's end, where "disconnected" would
            # read as the worker dropping a job it took.
            await self._read_last_word()
            if not self.machine.ended:
                self._end("disconnected", f"while sending inputs: {exc}")
            return False
        return True

    async def _read_last_word(self) -> None:
        """After the worker cut a send off: what it had sent first (a JobError, a Refusal), fed to the machine."""
        assert self.framed is not None
        with trio.move_on_after(LAST_WORD_S):
            while not self.machine.ended:
                try:
                    msg = await receive_job_message(self.framed)
                except (NetworkError, ProtocolError):
                    return  # it said nothing more: the stream's end is all there is
                try:
                    await self._apply(self.machine.on_message(msg, self.now()))
                except ProtocolViolation:
                    return

    async def _receive_outputs(self) -> tuple[Receipt, tuple[bytes, ...]] | None:
        machine = self.machine
        receipt = machine.receipt
        assert receipt is not None and self.framed is not None
        outputs: list[bytes] = []
        received: list[str] = []
        checks: list[PngCheck | None] = []
        try:
            for out in receipt.outputs:
                limits = TransferLimits(max_total_bytes=out.size_bytes)
                parts: list[bytes] = []
                # an image is checked chunk by chunk as it arrives, in the waits between chunks
                check = PngCheck() if out.media_type == "image/png" else None

                async def keep(chunk: bytes, parts: list[bytes] = parts, check: PngCheck | None = check) -> None:
                    parts.append(chunk)
                    if check is not None:
                        check.feed(chunk)

                got = await receive_transfer(self.framed, limits, expected_sha256=bytes.fromhex(out.sha256), sink=keep)
                outputs.append(b"".join(parts))
                checks.append(check)
                # receive_transfer hashed every byte it returns and checked that hash against the header's:
                # the header's hash is the hash of these bytes, no need to hash them a second time
                received.append(got.header.sha256.hex())
            if problem := await self._output_problem(receipt, outputs, checks):
                self._end(BAD_OUTPUT, problem)
                return None
            # The machine checks those hashes against the receipt, so "done" is only ever reached
            # through the signed hashes.
            await self._apply(machine.outputs_received(received, self.now()))
        except OutputMismatch as exc:
            self._end("output_mismatch", str(exc))
            return None
        except ProtocolError as exc:
            self._end("output_mismatch", f"output does not match the receipt: {exc}")
            return None
        except NetworkError as exc:
            self._end("disconnected", f"while receiving outputs: {exc}")
            return None
        return receipt, tuple(outputs)

    async def _output_problem(self, receipt: Receipt, outputs: list[bytes], checks: list[PngCheck | None]) -> str:
        """Why an output is not the file the job asked for ("" if none): a signed text file is no image."""
        request = self.machine.request
        size = expected_size(request.spec, request.input_shape) if self.check_output_size else None
        for index, (out, data, check) in enumerate(zip(receipt.outputs, outputs, checks, strict=True)):
            if check is not None:  # walked as it arrived
                problem = check.problem(size)
                if problem:  # in the words of the whole-file check where it has them ("a JPEG file, not a PNG")
                    problem = output_problem(data, out.media_type, size) or problem
            elif out.media_type.startswith("video/") and self.offload_checks:  # a container walk: milliseconds
                problem = await trio.to_thread.run_sync(output_problem, data, out.media_type, size)
            else:
                problem = output_problem(data, out.media_type, size)
            if problem:
                return f"output {index} ({out.media_type}, {len(data)} bytes) is {problem}"
        return ""

    def now(self) -> int:
        return self.node.now_ms()

    def _quote_above_advert(self) -> bool:
        """A quote dearer than the peer's own signed advert prices this job: bait and switch, refused.

        Only where the advert's price is exact (the work is known from the spec): for input-sized
        jobs the ranking's estimate is a stand-in and the worker's quote is what prices them.
        """
        quote = self.machine.quote
        request = self.machine.request
        if quote is None or not work_is_known(request.spec, request.input_shape) or quote.price <= self.candidate.price:
            return False
        self._end(
            QUOTE_ABOVE_ADVERT,
            f"quoted {quote.price} micro-credits; its advert prices this job at {self.candidate.price}",
        )
        return True

    async def _next(self) -> None:
        """Feed the worker's next message (or the clock) to the machine; note why a try ended."""
        assert self.framed is not None
        machine = self.machine
        wakeup = machine.next_wakeup_ms()
        until_wakeup_s = float("inf") if wakeup is None else max(0.0, (wakeup - self.now()) / 1000)
        silence_s = self.quote_timeout_s if machine.phase is Phase.REQUESTED else self.silence_s
        silent_first = silence_s < until_wakeup_s
        msg: JobMessage
        try:
            msg = await receive_job_message(self.framed, timeout_s=min(until_wakeup_s, silence_s))
        except StreamTimeout as exc:
            if self.framed.broken is None and silent_first:
                self._end("timeout", f"worker silent for {silence_s} s in phase {machine.phase}")
                await self._apply(machine.cancel("worker silent", self.now()))
                return
            if self.framed.broken is None:  # nothing by the wakeup: let the machine tick
                await self._apply(machine.on_tick(max(self.now(), wakeup or 0)))
                return
            self._end("disconnected", f"{_WHEN.get(machine.phase, machine.phase)}: worker stalled mid-frame: {exc}")
            machine.cancel("worker stalled", self.now())
            return
        except NetworkError as exc:
            self._end("disconnected", f"{_WHEN.get(machine.phase, machine.phase)}: {exc}")
            machine.cancel("worker went away", self.now())
            return
        except ProtocolError as exc:
            self._end("garbage", str(exc))
            await self._apply(machine.cancel("protocol_violation", self.now()))
            return
        try:
            await self._apply(machine.on_message(msg, self.now()))
        except ProtocolViolation as exc:
            self.detail = exc.detail
            if isinstance(msg, Result):  # the machine keeps only a receipt it accepted; a refused one is evidence
                self.refused_receipt = msg.receipt
            await self._apply(exc.actions)
            return
        if isinstance(msg, Progress) and self.on_progress is not None:
            self.on_progress(self.candidate.peer_id, msg)

    async def _apply(self, actions: Sequence[Action | object]) -> None:
        assert self.framed is not None
        for action in actions:
            if isinstance(action, Send):
                try:
                    await send_job_message(self.framed, action.message, self.node.key)
                except NetworkError as exc:
                    # Not the outcome yet: a worker that closed its side may have said why first
                    # (an expired quote, a deadline) and the next read finds that, or the end.
                    self.send_error = self.send_error or str(exc)


__all__ = [
    "ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES",
    "BAD_OUTPUT",
    "CANCEL_GRACE_S",
    "CHEAT_OUTCOMES",
    "DEFAULT_QUOTE_TIMEOUT_S",
    "DEFAULT_SILENCE_S",
    "FAULT_CHEAT",
    "FAULT_UNPROVEN",
    "FAULT_VIOLATION",
    "NOT_ITS_ERRORS",
    "QUOTE_ABOVE_ADVERT",
    "VIOLATION_OUTCOMES",
    "Attempt",
    "CandidateTry",
    "ProgressCallback",
    "TryWatcher",
]
