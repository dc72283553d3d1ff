"""Quotes and refusals on the in-memory network: each refusal is an attempt, and the job moves to the next candidate.

A full worker refuses busy; a quote above max_price or above the advert, an expired quote, inputs above the worker's
limit; a request taken in advance (accepted as it is quoted) and when it is.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node import job_requester, job_try
from lpnode.node.framing import FramedStream
from lpnode.node.job_requester import QUOTE_ABOVE_ADVERT, JobRequest, run_job
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.job_worker import WorkerConfig
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.jobs import QuoteRequest, Refusal, RefusalReason
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline
from lpnode.protocol.names import JOB_PROTOCOL

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, completed, peers, png, sees_models


async def test_a_full_worker_refuses_busy_and_a_cancel_frees_the_slot(pool: ModelPool) -> None:
    from lpnode.node.job_requester import build_spec
    from lpnode.protocol.jobs import Cancel, Quote

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert worker.worker is not None
        worker.worker.config = WorkerConfig(max_jobs=1)
        spec = build_spec(T2I, {}, 10**7)

        async def ask(nonce: bytes) -> tuple[FramedStream, object]:
            stream = await requester.node.network.open_stream(
                worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs()
            )
            framed = FramedStream(stream)
            await send_job_message(framed, QuoteRequest(spec, nonce, 10_000, 60_000), requester.node.key)
            return framed, await receive_job_message(framed)

        with trio.fail_after(BOUND_S):
            first, quote = await ask(b"a" * 16)
            assert isinstance(quote, Quote) and len(worker.worker.reservations) == 1
            _, refusal = await ask(b"b" * 16)
            assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.BUSY and refusal.retry_after_ms > 0
            await send_job_message(first, Cancel(quote.job_id, "user"), requester.node.key)
            while worker.worker.reservations:  # the worker frees the slot when it reads the Cancel
                await trio.testing.wait_all_tasks_blocked()
            _, again = await ask(b"c" * 16)
        assert isinstance(again, Quote)


async def test_a_refusal_moves_the_job_to_the_next_candidate(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        dear: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        cheap: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        assert dear.worker is not None
        dear.worker.config = WorkerConfig(price_per_mpx_step=10**9)  # quotes far above what it advertises
        await sees_models(requester.node, [dear, cheap])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[dear.peer_id])
    assert [(a.peer_id, a.outcome, a.price) for a in outcome.attempts] == [
        (dear.peer_id, "refused:price", None),
        (cheap.peer_id, "done", 1),
    ]
    assert "max_price" in outcome.attempts[0].detail
    assert completed(dear, cheap) == [0, 1]


async def test_a_quote_above_the_advert_is_not_accepted(pool: ModelPool) -> None:
    # bait and switch: advertise cheap, quote dear (still within the requester's max_price)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        liar: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        assert liar.worker is not None
        liar.worker.config = WorkerConfig(price_per_mpx_step=1000)  # its advert says 1 (this job: 9 against 1)
        await sees_models(requester.node, [liar, honest])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[liar.peer_id])
    assert [(a.peer_id, a.outcome, a.price) for a in outcome.attempts] == [
        (liar.peer_id, QUOTE_ABOVE_ADVERT, 9),
        (honest.peer_id, "done", 1),
    ]
    assert "advert prices this job at 1" in outcome.attempts[0].detail
    assert liar.worker.reservations == set()  # the cancel freed what the quote reserved
    assert completed(liar, honest) == [0, 1]


async def test_an_expired_quote_moves_the_job_to_the_next_candidate(
    pool: ModelPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the classic flow (quote, then Accept), as for a job with large inputs
    monkeypatch.setattr(job_try, "ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES", -1)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        far: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        near: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        assert far.worker is not None
        # the Accept arrives two one-way delays (0.4 s) after the quote left, its 50 ms long gone
        far.worker.config = WorkerConfig(quote_ttl_ms=50)
        await sees_models(requester.node, [far, near])
        hub.set_link_delay(requester.peer_id, far.peer_id, 0.2)
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[far.peer_id])
        with trio.fail_after(BOUND_S):
            while far.worker.reservations:  # freed when the quote expired, not only when a Cancel came
                await trio.testing.wait_all_tasks_blocked()
    # The worker said quote_expired and waits for the requester's close instead of closing under the
    # Accept in flight, so the requester reads the worker's own reason rather than a dropped stream.
    assert [(a.peer_id, a.outcome, a.price) for a in outcome.attempts] == [
        (far.peer_id, "error:quote_expired", 1),
        (near.peer_id, "done", 1),
    ]
    assert completed(far, near) == [0, 1]


async def test_a_request_taken_in_advance_does_not_wait_on_its_quote(pool: ModelPool) -> None:
    """The same slow link as above, but a text-to-image job (no inputs) is taken in advance: the
    quote is accepted as it is made, so its 50 ms lifetime never runs out and the far worker runs it."""
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        far: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert far.worker is not None
        far.worker.config = WorkerConfig(quote_ttl_ms=50)
        await sees_models(requester.node, [far])
        hub.set_link_delay(requester.peer_id, far.peer_id, 0.2)
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S)
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(far.peer_id, "done")]
    assert completed(far) == [1]


def test_a_request_is_taken_in_advance_only_by_a_worker_that_advertises_it_and_for_small_inputs() -> None:
    from lpnode.node.framing import FramingConfig
    from lpnode.node.peer_choice import Candidate
    from lpnode.protocol.jobs import ACCEPT_IN_ADVANCE

    def request_to(features: tuple[str, ...], input_bytes: int = 0) -> QuoteRequest:
        if input_bytes:
            i2i = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)
            image = b"\x89PNG\r\n\x1a\n".ljust(input_bytes, b"\0")
            spec = job_requester.build_spec(i2i, {"image": image}, 1 << 20)
        else:
            spec = job_requester.build_spec(T2I, {}, 1 << 20)
        candidate = Candidate("peer", (), MODEL, True, 1.0, 1, 0, 4, False, job_features=features)
        node = type("NodeStandIn", (), {"peer_id": "me"})()
        try_ = job_try.CandidateTry(node, candidate, spec, {}, 10, 10.0, None, FramingConfig())  # type: ignore[arg-type]
        return try_.machine.request

    assert request_to((ACCEPT_IN_ADVANCE,)).accept
    assert not request_to(()).accept  # an older worker would read the inputs as a message out of turn
    assert request_to((ACCEPT_IN_ADVANCE,), job_requester.ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES).accept
    assert not request_to((ACCEPT_IN_ADVANCE,), job_requester.ACCEPT_IN_ADVANCE_MAX_INPUT_BYTES + 1).accept


async def test_inputs_above_the_workers_limit_are_refused_before_any_byte_moves(pool: ModelPool) -> None:
    from lpnode.protocol.jobspec import ImageToImageParams

    i2i = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)
    image = png()
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        small: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        roomy: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        assert small.worker is not None
        small.worker.config = WorkerConfig(max_input_bytes=len(image) - 1)
        await sees_models(requester.node, [small, roomy])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                requester.node, i2i, {"image": image}, max_price=10_000, deadline_s=BOUND_S, prefer=[small.peer_id]
            )
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [
        (small.peer_id, "refused:input_too_large"),
        (roomy.peer_id, "done"),
    ]
    assert completed(small, roomy) == [0, 1] and small.worker.reservations == set()
