"""Jobs end to end on the in-memory network: requester → worker → verified receipt, and the errors the user sees.

The happy path, image inputs and the receipt sequence; an unknown model, parameters every model refuses, no peers,
requirements that leave none. Faults are in ``test_jobs_faults.py``, quotes and refusals in ``test_jobs_quotes.py``,
allow_local and the model router in ``test_jobs_local.py``; the shared peers and helpers in ``job_fixtures.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from lpnode.models.pool import ModelPool
from lpnode.node.framing import FramedStream
from lpnode.node.job_requester import (
    FiltersExcludeOffers,
    JobFailed,
    JobRequest,
    NoCandidates,
    ParametersRefused,
    PriceBelowOffers,
    run_job,
)
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import status_for
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.jobs import QuoteRequest, Refusal, RefusalReason
from lpnode.protocol.jobspec import Pipeline
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, ask_by_hand, completed, no_exploring, peers, png, sees_models


async def test_text_to_image_gets_a_verified_receipt_matching_the_bytes(pool: ModelPool, tmp_path: Path) -> None:
    progress: list[int] = []
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                requester.node,
                T2I,
                max_price=10_000,
                deadline_s=BOUND_S,
                on_progress=lambda p, m: progress.append(m.step),
            )
    assert outcome.worker_peer_id == worker.peer_id
    assert [a.outcome for a in outcome.attempts] == ["done"]
    receipt = verify_receipt(outcome.receipt_bytes)  # anyone can check it from the bytes alone
    assert receipt.requester_peer_id == requester.peer_id and receipt.worker_peer_id == worker.peer_id
    assert receipt.spec.seed == 7 and receipt.model_id == MODEL and len(receipt.weights_sha256) == 64
    assert [o.sha256 for o in receipt.outputs] == [hashlib.sha256(b).hexdigest() for b in outcome.outputs]
    assert outcome.outputs[0].startswith(b"\x89PNG")
    assert receipt.price == outcome.price == 1  # 64 × 64 × 2 steps at 100 per mpx-step, rounded up
    assert progress and progress[-1] >= 1
    assert worker.worker is not None and worker.worker.reservations == set() and worker.worker.completed == 1


async def test_unknown_model_is_a_clear_error_listing_the_offers(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        wrong = JobRequest(T2I.pipeline, T2I.params, "nobody/has-this")
        with pytest.raises(
            NoCandidates, match=r"no peer offers text-to-image nobody/has-this.*text-to-image lpnode/tiny-sdxl"
        ):
            await run_job(requester.node, wrong, max_price=10_000, deadline_s=5)
        # on offer, but above max_price everywhere: the request's fault, said before any peer is asked
        opened = hub.stats.streams_opened
        with pytest.raises(PriceBelowOffers, match=r"no offer fits max_price 0: .* prices this job at 1 micro"):
            await run_job(requester.node, T2I, max_price=0, deadline_s=5)
        assert hub.stats.streams_opened == opened

        # asked directly, the worker refuses before reserving anything
        with trio.fail_after(BOUND_S):
            stream = await requester.node.network.open_stream(worker.peer_id, JOB_PROTOCOL)
            framed = FramedStream(stream)
            from lpnode.node.job_requester import build_spec

            request = QuoteRequest(build_spec(wrong, {}, 10**7), b"n" * 16, 10_000, 10_000)
            await send_job_message(framed, request, requester.node.key)
            answer = await receive_job_message(framed)
        assert isinstance(answer, Refusal) and answer.reason is RefusalReason.UNKNOWN_MODEL
        assert "lpnode/tiny-sdxl" in answer.message
        assert worker.worker is not None and worker.worker.reservations == set()


async def test_parameters_every_model_refuses_are_the_requests_fault(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        workers = [await start(i, pool=pool) for i in (1, 2)]
        await sees_models(requester.node, workers)  # type: ignore[arg-type]
        too_many_steps = JobRequest(T2I.pipeline, replace(T2I.params, num_inference_steps=60), MODEL)
        with pytest.raises(ParametersRefused, match="num_inference_steps") as caught:
            await run_job(requester.node, too_many_steps, max_price=10**7, deadline_s=BOUND_S, rng=no_exploring())
        # the adverts carry the model's limits: no peer is asked (a worker without them would refuse, PARAMS_REFUSED)
        assert caught.value.attempts == () and "advertised limits" in str(caught.value)
        assert completed(*workers) == [0, 0]  # type: ignore[arg-type]


async def test_no_peers_at_all_says_so() -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        with pytest.raises(JobFailed, match="the network offers: nothing"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5)


def test_receipt_sequence_increases_across_restarts(tmp_path: Path) -> None:
    from lpnode.node.job_proof import ReceiptSequence

    path = tmp_path / "receipt-seq"
    first = ReceiptSequence(lambda: 1000.0, path)
    numbers = [first.next() for _ in range(3)]
    assert numbers == sorted(set(numbers))
    # restarted with the clock set back: the persisted number still wins
    assert ReceiptSequence(lambda: 1.0, path).next() > numbers[-1]
    # file lost: the clock seed (µs) still lies above anything issued earlier
    assert ReceiptSequence(lambda: 2000.0, None).next() > numbers[-1]


def test_receipt_numbers_go_on_file_a_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One file write per RESERVED_AHEAD receipts, not per receipt, and a restart (kill -9 included: the
    block is on file before its first number is used) starts past every number handed out."""
    from lpnode.node import job_proof
    from lpnode.node.job_proof import RESERVED_AHEAD, ReceiptSequence

    path = tmp_path / "receipt-seq"
    writes = 0
    replace = Path.replace

    def counting(self: Path, target: Path) -> Path:
        nonlocal writes
        writes += 1
        return replace(self, target)

    monkeypatch.setattr(job_proof.Path, "replace", counting)
    sequence = ReceiptSequence(lambda: 1000.0, path)
    numbers = [sequence.next() for _ in range(2 * RESERVED_AHEAD + 1)]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert writes == 3
    assert int(path.read_text()) >= numbers[-1]
    assert ReceiptSequence(lambda: 1.0, path).next() > numbers[-1]


async def test_image_to_image_inputs_travel_hash_checked(pool: ModelPool) -> None:
    from lpnode.node.input_probe import input_shape
    from lpnode.node.job_requester import build_spec
    from lpnode.protocol.jobs import ErrorCode, JobError, Quote
    from lpnode.protocol.jobspec import ImageToImageParams

    i2i = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, i2i, {"image": png()}, max_price=10_000, deadline_s=BOUND_S)

            # a requester whose bytes are not the ones its spec describes gets input_mismatch, and nothing runs
            spec = build_spec(i2i, {"image": png()}, 10**7)
            shape = input_shape(spec, {"image": png()})
            request = QuoteRequest(spec, b"m" * 16, 10_000, 60_000, input_shape=shape)
            quote, answer = await ask_by_hand(requester, worker, request, png(shade=91))
            assert isinstance(quote, Quote)
    assert [a.outcome for a in outcome.attempts] == ["done"]
    assert outcome.receipt.spec.inputs[0].sha256 == hashlib.sha256(png()).hexdigest()  # the receipt signs the input
    assert isinstance(answer, JobError) and answer.code is ErrorCode.INPUT_MISMATCH
    assert worker.worker is not None and worker.worker.completed == 1 and worker.worker.reservations == set()


async def test_requirements_that_leave_no_peer_say_so() -> None:
    class BanAll:
        def score(self, peer_id: str, model_family: str) -> float:
            return 0.5

        def is_banned(self, peer_id: str) -> bool:
            return True

    offer = ModelOffer("text-to-image", MODEL, "0" * 64, True, 10.0, 1)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        cpu_only: Peer = await start(1, models=[offer])  # type: ignore[assignment]
        await sees_models(requester.node, [cpu_only])
        # the model is on offer: the request's own filters left nobody (422, not "no peer offers" and a 404)
        with pytest.raises(FiltersExcludeOffers, match=r"1 peer\(s\) offer .* filters: min_vram 1024 GiB") as vram:
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5, min_vram_bytes=1024 * 2**30)
        with pytest.raises(FiltersExcludeOffers, match="banned peers excluded") as banned:
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5, reputation=BanAll())
    assert status_for(vram.value) == status_for(banned.value) == 422
