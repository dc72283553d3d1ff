"""The negotiation state machines: every legal path, every refusal, and random play that never breaks them."""

from __future__ import annotations

import dataclasses

import pytest
from lpnode.protocol import (
    AbortRun,
    Accept,
    Action,
    Cancel,
    ErrorCode,
    InvalidTransition,
    JobError,
    OutputMismatch,
    Phase,
    Progress,
    ProtocolViolation,
    Quote,
    QuoteRequest,
    Refusal,
    RefusalReason,
    ReleaseReservation,
    RequesterNegotiation,
    Result,
    Send,
    StartRun,
    WorkerNegotiation,
)

from .job_factory import (
    INPUT_BYTES,
    MALLORY,
    NOW_MS,
    OUTPUT_SHA,
    REQUESTER,
    WORKER,
    make_quote,
    make_result,
    quote_request,
    sha,
    upscale_spec,
)


def requester(request: QuoteRequest | None = None) -> RequesterNegotiation:
    r = RequesterNegotiation(request or quote_request(), REQUESTER.peer_id, WORKER.peer_id)
    assert r.start(NOW_MS) == [Send(r.request)]
    return r


def worker() -> WorkerNegotiation:
    return WorkerNegotiation(WORKER.peer_id, REQUESTER.peer_id)


def sent(actions: list[Action]) -> list[type]:
    return [type(a.message) for a in actions if isinstance(a, Send)]


def quoted_pair(request: QuoteRequest | None = None) -> tuple[RequesterNegotiation, WorkerNegotiation, Quote]:
    r, w = requester(request), worker()
    assert w.on_message(r.request, NOW_MS) == []
    assert w.phase is Phase.REQUESTED and w.job_id == r.job_id
    quote = make_quote(r.request)
    assert w.offer(quote, NOW_MS) == [Send(quote)]
    assert r.on_message(quote, NOW_MS + 10) == []
    assert r.phase is w.phase is Phase.QUOTED
    return r, w, quote


def running_pair() -> tuple[RequesterNegotiation, WorkerNegotiation, Quote]:
    r, w, quote = quoted_pair()
    (accept,) = r.accept(NOW_MS + 20)
    assert isinstance(accept, Send)
    assert w.on_message(accept.message, NOW_MS + 30) == []
    assert w.inputs_received(NOW_MS + 40) == [StartRun(w.job_id)]
    assert w.phase is Phase.RUNNING
    return r, w, quote


# ---------------------------------------------------------------- legal paths


def test_the_happy_path_on_both_sides() -> None:
    r, w, quote = running_pair()
    (progress,) = w.progress("denoise", 1, 4, NOW_MS + 100)
    assert isinstance(progress, Send) and progress.message == Progress(w.job_id, "denoise", 1, 4, 70)
    r.on_message(progress.message, NOW_MS + 100)
    assert r.phase is Phase.RUNNING and r.progress == progress.message
    result = make_result(r.request, quote)
    assert w.finish(result.outputs, result.receipt, NOW_MS + 200) == [ReleaseReservation("q-1"), Send(result)]
    assert w.phase is Phase.DONE
    r.on_message(result, NOW_MS + 210)
    assert r.phase is Phase.DELIVERING and r.receipt is not None and r.receipt_bytes == result.receipt
    assert r.outputs_received([OUTPUT_SHA], NOW_MS + 220) == []
    assert r.phase is Phase.DONE and r.reason == "done"


def test_a_result_may_come_without_progress() -> None:
    r, _, quote = running_pair()
    r.on_message(make_result(r.request, quote), NOW_MS + 50)
    assert r.phase is Phase.DELIVERING


def test_a_job_with_inputs_accepts_them_by_descriptor() -> None:
    r, w, _ = quoted_pair(quote_request(upscale_spec()))
    (accept,) = r.accept(NOW_MS + 20)
    assert isinstance(accept, Send) and isinstance(accept.message, Accept)
    assert accept.message.inputs[0].sha256 == sha(INPUT_BYTES)
    w.on_message(accept.message, NOW_MS + 30)
    assert w.phase is Phase.ACCEPTED


def test_a_request_taken_in_advance_skips_the_accept_on_both_sides() -> None:
    """QuoteRequest.accept: the quote is accepted as it is sent and as it arrives; the inputs follow
    the request, no Accept crosses the wire, and a quote that never expires is not waited on."""
    request = dataclasses.replace(quote_request(upscale_spec()), accept=True)
    r, w = requester(request), worker()
    assert w.on_message(r.request, NOW_MS) == []
    quote = make_quote(r.request)
    assert w.offer(quote, NOW_MS) == [Send(quote)]
    assert w.phase is Phase.ACCEPTED and w.next_wakeup_ms() == w.deadline_at_ms  # no quote expiry once taken
    assert r.on_message(quote, NOW_MS + 10) == []
    assert r.phase is Phase.ACCEPTED and r.next_wakeup_ms() == r.deadline_at_ms
    with pytest.raises(InvalidTransition):
        r.accept(NOW_MS + 20)  # nothing left to accept
    assert w.inputs_received(NOW_MS + 30) == [StartRun(w.job_id)]
    (progress,) = w.progress("denoise", 1, 4, NOW_MS + 100)
    assert isinstance(progress, Send) and progress.message.elapsed_ms == 100  # type: ignore[union-attr]
    result = make_result(r.request, quote)
    assert sent(w.finish(result.outputs, result.receipt, NOW_MS + 200)) == [Result]
    r.on_message(result, NOW_MS + 210)
    assert r.phase is Phase.DELIVERING


def test_an_accept_for_a_request_taken_in_advance_is_a_violation() -> None:
    request = dataclasses.replace(quote_request(upscale_spec()), accept=True)
    w = worker()
    w.on_message(request, NOW_MS)
    quote = make_quote(request)
    w.offer(quote, NOW_MS)
    with pytest.raises(ProtocolViolation) as violation:
        w.on_message(Accept(quote.quote_id, w.job_id, request.spec.inputs), NOW_MS + 10)
    assert violation.value.reason == "unexpected" and ReleaseReservation(quote.quote_id) in violation.value.actions


def test_a_refusal_ends_both_sides() -> None:
    r, w = requester(), worker()
    w.on_message(r.request, NOW_MS)
    (refusal,) = w.refuse(RefusalReason.BUSY, "queue full", NOW_MS, retry_after_ms=500)
    assert isinstance(refusal, Send) and isinstance(refusal.message, Refusal)
    assert w.phase is Phase.FAILED and w.reason == "refused:busy"
    assert r.on_message(refusal.message, NOW_MS) == []
    assert r.phase is Phase.FAILED and r.refusal == refusal.message


def test_a_worker_error_fails_the_job_and_frees_everything() -> None:
    r, w, _ = running_pair()
    actions = w.fail(ErrorCode.OUT_OF_MEMORY, "OOM at step 3", NOW_MS + 100)
    assert actions[:2] == [AbortRun(w.job_id), ReleaseReservation("q-1")] and sent(actions) == [JobError]
    r.on_message(actions[2].message, NOW_MS + 100)  # type: ignore[union-attr]
    assert r.phase is Phase.FAILED and r.reason == "error:out_of_memory"


def test_quote_expiry_on_the_worker() -> None:
    _, w, quote = quoted_pair()
    assert w.next_wakeup_ms() == quote.expires_at_ms
    assert w.on_tick(quote.expires_at_ms - 1) == []
    actions = w.on_tick(quote.expires_at_ms)
    assert actions[0] == ReleaseReservation("q-1") and sent(actions) == [JobError]
    assert w.phase is Phase.FAILED and w.reason == "quote_expired"


def test_an_accept_after_expiry_is_answered_not_blamed() -> None:
    r, w, quote = quoted_pair()
    (accept,) = r.accept(NOW_MS + 20)
    actions = w.on_message(accept.message, quote.expires_at_ms + 1)  # type: ignore[union-attr]
    assert actions[0] == ReleaseReservation("q-1")
    assert isinstance(actions[1], Send) and actions[1].message.code is ErrorCode.QUOTE_EXPIRED  # type: ignore[union-attr]
    r.on_message(actions[1].message, quote.expires_at_ms + 2)
    assert r.reason == "error:quote_expired"


def test_quote_expiry_on_the_requester_uses_the_lifetime_not_the_workers_clock() -> None:
    r, w = requester(), worker()
    w.on_message(r.request, NOW_MS)
    skewed = make_quote(r.request, now_ms=NOW_MS - 3_600_000)  # worker's clock an hour behind
    w.offer(skewed, NOW_MS - 3_600_000)
    r.on_message(skewed, NOW_MS + 10)
    assert r.next_wakeup_ms() == NOW_MS + 10 + skewed.ttl_ms
    assert r.accept(NOW_MS + 10 + skewed.ttl_ms) == [Send(Cancel(r.job_id, "quote_expired"))]
    assert r.phase is Phase.FAILED and r.reason == "quote_expired"


def test_deadlines_on_both_sides() -> None:
    r, w, _ = running_pair()
    deadline = NOW_MS + r.request.deadline_ms
    assert r.next_wakeup_ms() == deadline
    assert r.on_tick(deadline) == [Send(Cancel(r.job_id, "deadline"))]
    assert r.reason == "deadline"
    actions = w.on_tick(deadline)
    assert actions[:2] == [AbortRun(w.job_id), ReleaseReservation("q-1")]
    assert w.reason == "deadline"


@pytest.mark.parametrize("phase", [Phase.REQUESTED, Phase.QUOTED, Phase.ACCEPTED, Phase.RUNNING])
def test_the_requester_can_cancel_at_every_step(phase: Phase) -> None:
    r, w, _ = running_pair()
    r.phase = w.phase = phase  # the paths to each phase are tested above
    cancel = Cancel(r.job_id, "user")
    assert r.cancel("user", NOW_MS + 50) == [Send(cancel)]
    assert r.phase is Phase.CANCELLED
    expected: list[Action] = [AbortRun(w.job_id)] if phase is Phase.RUNNING else []
    assert w.on_message(cancel, NOW_MS + 60) == [*expected, ReleaseReservation("q-1")]
    assert w.phase is Phase.CANCELLED


def test_a_cancel_before_the_quote_reserves_nothing_and_a_late_offer_is_released() -> None:
    r, w = requester(), worker()
    w.on_message(r.request, NOW_MS)
    (cancel,) = r.cancel("user", NOW_MS)
    assert w.on_message(cancel.message, NOW_MS) == []  # type: ignore[union-attr]
    assert w.offer(make_quote(r.request), NOW_MS) == [ReleaseReservation("q-1")]


def test_a_worker_side_cancel_frees_the_reservation() -> None:
    r, w, _ = running_pair()
    actions = w.cancel("shutting down", NOW_MS + 50)
    assert actions[:2] == [AbortRun(w.job_id), ReleaseReservation("q-1")]
    assert w.phase is Phase.CANCELLED
    r.on_message(actions[2].message, NOW_MS + 50)  # type: ignore[union-attr]
    assert r.phase is Phase.FAILED and r.reason == "error:cancelled"


def test_races_after_the_end_are_ignored() -> None:
    r, w, quote = running_pair()
    cancel = r.cancel("user", NOW_MS + 50)
    result = make_result(r.request, quote)
    finished = w.finish(result.outputs, result.receipt, NOW_MS + 50)  # crosses the Cancel on the wire
    assert r.on_message(result, NOW_MS + 60) == [] and r.phase is Phase.CANCELLED
    assert w.on_message(cancel[0].message, NOW_MS + 60) == [] and w.phase is Phase.DONE  # type: ignore[union-attr]
    assert finished[0] == ReleaseReservation("q-1")
    assert w.progress("late", 1, 1, NOW_MS + 70) == [] and w.fail(ErrorCode.INTERNAL, "x", NOW_MS) == []


def test_outputs_that_do_not_match_the_receipt_are_rejected() -> None:
    r, _, quote = running_pair()
    r.on_message(make_result(r.request, quote), NOW_MS + 50)
    with pytest.raises(OutputMismatch):
        r.outputs_received([sha(b"tampered")], NOW_MS + 60)
    assert r.phase is Phase.FAILED and r.reason == "output_mismatch"


# ---------------------------------------------------------------- violations


def violation(
    machine: RequesterNegotiation | WorkerNegotiation, msg: object, now_ms: int = NOW_MS + 50
) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        machine.on_message(msg, now_ms)  # type: ignore[arg-type]
    assert machine.phase is Phase.FAILED
    return info.value


def test_out_of_order_messages_are_violations_on_the_requester() -> None:
    r = requester()
    exc = violation(r, Progress(r.job_id, "denoise", 1, 2, 5))
    assert exc.reason == "unexpected" and exc.actions == (Send(Cancel(r.job_id, "protocol_violation")),)
    r2, _, quote = quoted_pair()
    assert violation(r2, make_result(r2.request, quote)).reason == "unexpected"  # Result before Accept
    r3 = requester()
    assert violation(r3, Progress("0" * 64, "x", 0, 0, 0)).reason == "wrong_job"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"worker_peer_id": MALLORY.peer_id}, "wrong_worker"),
        ({"price": 1001}, "over_price"),
        ({"model_id": "some-other-model"}, "wrong_model"),
    ],
)
def test_quotes_that_break_the_request_are_violations(change: dict[str, object], reason: str) -> None:
    r = requester()
    assert violation(r, make_quote(r.request, **change)).reason == reason


@pytest.mark.parametrize(
    ("key", "change", "reason"),
    [
        (MALLORY, {}, "bad_receipt"),  # a receipt naming the worker, signed by someone else
        (WORKER, {"quote_id": "q-other"}, "receipt_mismatch"),
        (WORKER, {"price": 999}, "receipt_mismatch"),
        (WORKER, {"weights_sha256": "cd" * 32}, "receipt_mismatch"),
    ],
)
def test_results_whose_receipt_does_not_fit_are_violations(key: object, change: dict[str, object], reason: str) -> None:
    r, _, quote = running_pair()
    if key is MALLORY:
        from lpnode.protocol import seal

        from .job_factory import descriptors, make_receipt

        receipt = make_receipt(r.request, quote)
        result = Result(quote.job_id, descriptors(receipt), seal(MALLORY, receipt))
    else:
        result = make_result(r.request, quote, **change)
    exc = violation(r, result)
    assert exc.reason == reason and exc.actions == (Send(Cancel(r.job_id, "protocol_violation")),)


def test_a_result_announcing_other_outputs_than_its_receipt_is_a_violation() -> None:
    r, _, quote = running_pair()
    honest = make_result(r.request, quote)
    other = dataclasses.replace(honest.outputs[0], sha256=sha(b"swapped"))
    exc = violation(r, dataclasses.replace(honest, outputs=(other,)))
    assert exc.reason == "receipt_mismatch" and "outputs" in exc.detail


def test_worker_violations_free_the_reservation() -> None:
    _, w, quote = quoted_pair()
    exc = violation(w, Accept("q-other", w.job_id, ()))
    assert exc.reason == "wrong_quote"
    assert exc.actions[0] == ReleaseReservation("q-1")
    assert isinstance(exc.actions[1], Send) and exc.actions[1].message.code is ErrorCode.PROTOCOL_VIOLATION  # type: ignore[union-attr]
    _, w2, _ = quoted_pair(quote_request(upscale_spec()))
    assert violation(w2, Accept("q-1", w2.job_id, ())).reason == "wrong_inputs"
    _, w3, _ = running_pair()
    exc3 = violation(w3, quote_request())
    assert exc3.actions[:2] == (AbortRun(w3.job_id), ReleaseReservation("q-1"))
    assert violation(worker(), Cancel("0" * 64, "x")).reason == "unexpected"
    del quote


def test_this_nodes_own_out_of_order_calls_are_bugs_not_violations() -> None:
    r, w, quote = quoted_pair()
    result = make_result(r.request, quote)
    with pytest.raises(InvalidTransition):
        w.finish(result.outputs, result.receipt, NOW_MS)
    with pytest.raises(InvalidTransition):
        r.outputs_received([OUTPUT_SHA], NOW_MS)
    with pytest.raises(InvalidTransition):
        r.start(NOW_MS)
    assert r.phase is w.phase is Phase.QUOTED  # nothing moved
    w2 = worker()
    w2.on_message(r.request, NOW_MS)
    with pytest.raises(InvalidTransition):
        w2.offer(make_quote(r.request, price=10**6), NOW_MS)  # above the requester's max_price
    with pytest.raises(InvalidTransition):
        w2.offer(make_quote(r.request), NOW_MS + 10_000)  # already expired
