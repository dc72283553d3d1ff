"""Random play between a requester and a worker: no crash, no leaked reservation, no illegal state.

Hypothesis picks each step: deliver the next frame either way (through the real
encode/decode), move either peer's clock, take any local decision on either
side whether or not it is allowed, or inject a random well-formed message. The
ledgers below are what the I/O layer would do with the actions; the invariants
are checked after every step, then the play is drained to its end.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lpnode.protocol import (
    AbortRun,
    Action,
    ErrorCode,
    InvalidTransition,
    JobMessage,
    NodeKey,
    OutputMismatch,
    Phase,
    ProtocolViolation,
    RefusalReason,
    ReleaseReservation,
    RequesterNegotiation,
    Send,
    StartRun,
    WorkerNegotiation,
    decode_job_message,
    encode_job_message,
)

from .job_factory import NOW_MS, OUTPUT_SHA, REQUESTER, WORKER, job_messages, make_quote, make_result, quote_request

HELD = (Phase.QUOTED, Phase.ACCEPTED, Phase.RUNNING)  # worker phases that hold a reservation


@dataclass
class Play:
    requester: RequesterNegotiation
    worker: WorkerNegotiation
    to_worker: deque[bytes] = field(default_factory=deque)
    to_requester: deque[bytes] = field(default_factory=deque)
    requester_now: int = NOW_MS
    worker_now: int = NOW_MS
    held: set[str] = field(default_factory=set)  # reservations made and not yet released
    quotes_made: int = 0
    started: bool = False
    aborted: bool = False

    # what the I/O layer does with actions ----------------------------------------------------

    def carry_out(self, side: str, actions: list[Action] | tuple[object, ...]) -> None:
        for action in actions:
            if isinstance(action, Send):
                key, queue = (WORKER, self.to_requester) if side == "worker" else (REQUESTER, self.to_worker)
                queue.append(encode_job_message(action.message, key))
            elif isinstance(action, ReleaseReservation):
                assert action.quote_id in self.held, "released twice or never reserved"
                self.held.remove(action.quote_id)
            elif isinstance(action, StartRun):
                assert not self.started, "started twice"
                self.started = True
            elif isinstance(action, AbortRun):
                assert self.started and not self.aborted, "abort without a run, or twice"
                self.aborted = True
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _guarded(self, side: str, call: object) -> None:
        machine = self.requester if side == "requester" else self.worker
        before = machine.phase
        try:
            self.carry_out(side, call())  # type: ignore[operator]
        except ProtocolViolation as exc:
            assert machine.phase is Phase.FAILED
            self.carry_out(side, exc.actions)
        except InvalidTransition:
            assert machine.phase is before, "a refused local call must not move the machine"
        except OutputMismatch:
            assert machine.phase is Phase.FAILED

    # steps ------------------------------------------------------------------------------------

    def deliver(self, side: str) -> None:
        queue = self.to_worker if side == "worker" else self.to_requester
        if queue:
            msg = decode_job_message(queue.popleft())
            self.inject(side, msg)

    def inject(self, side: str, msg: JobMessage) -> None:
        if side == "worker":
            self._guarded("worker", lambda: self.worker.on_message(msg, self.worker_now))
        else:
            self._guarded("requester", lambda: self.requester.on_message(msg, self.requester_now))

    def offer(self) -> None:
        self.quotes_made += 1
        quote = make_quote(self.requester.request, now_ms=self.worker_now, quote_id=f"q-{self.quotes_made}")
        self.held.add(quote.quote_id)  # the node reserves before it offers
        try:
            self.carry_out("worker", self.worker.offer(quote, self.worker_now))
        except InvalidTransition:
            self.held.discard(quote.quote_id)  # the node's own bug path: it keeps its reservation logic

    def finish(self) -> None:
        quote = self.worker.quote or make_quote(self.requester.request)
        result = make_result(self.requester.request, quote)
        self._guarded("worker", lambda: self.worker.finish(result.outputs, result.receipt, self.worker_now))

    # invariants -------------------------------------------------------------------------------

    def check(self) -> None:
        w, r = self.worker, self.requester
        assert w.phase is not Phase.DELIVERING
        expected_held = {w.quote.quote_id} if w.phase in HELD and w.quote is not None else set()
        assert self.held == expected_held, (w.phase, self.held)
        assert (w.phase is Phase.RUNNING) == (self.started and not self.aborted and w.phase not in (Phase.DONE,))
        if w.phase is Phase.DONE:
            assert not self.aborted
        if r.phase in (Phase.DELIVERING, Phase.DONE):
            assert r.receipt is not None and r.receipt.worker_peer_id == WORKER.peer_id
            assert r.receipt.job_id == r.job_id
        if r.phase is Phase.DONE:
            assert w.phase is Phase.DONE, "the requester can only finish on a worker's genuine result"
        for m in (w, r):
            assert m.ended == (m.phase in (Phase.DONE, Phase.FAILED, Phase.CANCELLED))
            assert m.ended == bool(m.reason)


# Steps that move a job forward (any order, so most are refused), then the ones that disrupt it.
FORWARD = ["to_worker", "to_requester", "requester_clock", "worker_clock", "offer", "accept", "inputs", "progress",
           "finish", "outputs_ok"]  # fmt: skip
CHAOS = [*FORWARD, "refuse", "fail", "worker_cancel", "requester_cancel", "outputs_bad", "inject_worker",
         "inject_requester"]  # fmt: skip


def enabled(play: Play, step: str) -> bool:
    """Calm play takes only steps the state allows (in random interleavings), so it reaches the end."""
    r, w = play.requester.phase, play.worker.phase
    return {
        "to_worker": bool(play.to_worker),
        "to_requester": bool(play.to_requester),
        "offer": w is Phase.REQUESTED,
        "accept": r is Phase.QUOTED,
        "inputs": w is Phase.ACCEPTED,
        "progress": w is Phase.RUNNING,
        "finish": w is Phase.RUNNING,
        "outputs_ok": r is Phase.DELIVERING,
    }.get(step, True)


def run_step(play: Play, data: st.DataObject, chaos_in_10: int) -> None:
    r, w = play.requester, play.worker
    chaos = data.draw(st.integers(0, 9), label="roll") < chaos_in_10
    step = data.draw(st.sampled_from(CHAOS if chaos else [s for s in FORWARD if enabled(play, s)]), label="step")
    max_tick_ms = 20_000 if chaos else 300
    if step in ("to_worker", "to_requester"):
        play.deliver(step.removeprefix("to_"))
    elif step == "requester_clock":
        play.requester_now += data.draw(st.integers(0, max_tick_ms))
        play.carry_out("requester", r.on_tick(play.requester_now))
    elif step == "worker_clock":
        play.worker_now += data.draw(st.integers(0, max_tick_ms))
        play.carry_out("worker", w.on_tick(play.worker_now))
    elif step == "offer":
        play.offer()
    elif step == "refuse":
        play._guarded("worker", lambda: w.refuse(RefusalReason.BUSY, "full", play.worker_now))
    elif step == "accept":
        play._guarded("requester", lambda: r.accept(play.requester_now))
    elif step == "inputs":
        play._guarded("worker", lambda: w.inputs_received(play.worker_now))
    elif step == "progress":
        play._guarded("worker", lambda: w.progress("denoise", 1, 2, play.worker_now))
    elif step == "finish":
        play.finish()
    elif step == "fail":
        play._guarded("worker", lambda: w.fail(ErrorCode.OUT_OF_MEMORY, "oom", play.worker_now))
    elif step == "worker_cancel":
        play._guarded("worker", lambda: w.cancel("shutdown", play.worker_now))
    elif step == "requester_cancel":
        play._guarded("requester", lambda: r.cancel("user", play.requester_now))
    elif step in ("outputs_ok", "outputs_bad"):
        digest = OUTPUT_SHA if step == "outputs_ok" else "0" * 64
        play._guarded("requester", lambda: r.outputs_received([digest], play.requester_now))
    else:
        side = step.removeprefix("inject_")
        play.inject(side, data.draw(job_messages, label="injected"))
    play.check()


def drain(play: Play) -> None:
    """Deliver everything, then let both clocks pass every deadline: both sides must end."""
    for _ in range(3):
        while play.to_worker or play.to_requester:
            play.deliver("worker")
            play.deliver("requester")
            play.check()
        if play.requester.phase is Phase.DELIVERING:
            play._guarded("requester", lambda: play.requester.outputs_received([OUTPUT_SHA], play.requester_now))
        play.requester_now += 10**8
        play.worker_now += 10**8
        play.carry_out("requester", play.requester.on_tick(play.requester_now))
        play.carry_out("worker", play.worker.on_tick(play.worker_now))
        play.check()
    assert play.requester.ended and play.worker.ended, (play.requester.phase, play.worker.phase)
    assert not play.held and (play.aborted or not play.started or play.worker.phase is Phase.DONE)
    event(f"requester {play.requester.reason.split(':')[0]}, worker {play.worker.reason.split(':')[0]}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(-30_000, 30_000))
def test_random_play_never_breaks_the_machines(data: st.DataObject, skew_ms: int) -> None:
    request = quote_request(deadline_ms=data.draw(st.integers(1, 120_000), label="deadline_ms"))
    request = dataclasses.replace(request, accept=data.draw(st.booleans(), label="taken in advance"))
    play = Play(
        RequesterNegotiation(request, REQUESTER.peer_id, WORKER.peer_id),
        WorkerNegotiation(WORKER.peer_id, REQUESTER.peer_id),
        worker_now=NOW_MS + skew_ms,  # the peers' clocks disagree
    )
    play.carry_out("requester", play.requester.start(play.requester_now))
    # From calm play (only allowed steps: reaches done) to full chaos (mostly refused steps).
    chaos_in_10 = data.draw(st.sampled_from([0, 1, 3, 10]), label="chaos_in_10")
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        run_step(play, data, chaos_in_10)
    drain(play)


def test_a_stranger_cannot_finish_a_job() -> None:
    """A worker-side machine for another key cannot produce a receipt the requester takes."""
    stranger = NodeKey(b"\x44" * 32)
    request = quote_request()
    r = RequesterNegotiation(request, REQUESTER.peer_id, stranger.peer_id)
    r.start(NOW_MS)
    quote = make_quote(request, worker_peer_id=stranger.peer_id)
    r.on_message(quote, NOW_MS)
    r.accept(NOW_MS)
    try:
        r.on_message(make_result(request, quote), NOW_MS)  # receipt signed by WORKER, naming WORKER
    except ProtocolViolation as exc:
        assert exc.reason == "receipt_mismatch"
    assert r.phase is Phase.FAILED
