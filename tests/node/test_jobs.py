"""Jobs end to end on the in-memory network: requester → worker → verified receipt, and the faults around it.

The workers run the real tiny-sdxl preset in the model pool's threads, so these
tests run in real time (a MockClock would jump past a thread's work); every
wait is bounded by a generous ``trio.fail_after`` and none sleeps for state.
"""

from __future__ import annotations

import functools
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trio.testing
from lpnode.models.base import PipelineKind
from lpnode.models.pool import ModelPool, ModelStatus, PoolConfig, open_model_pool
from lpnode.node import job_requester, job_try
from lpnode.node.daemon import Node, serve_node
from lpnode.node.framing import FramedStream
from lpnode.node.gossip import WallClock
from lpnode.node.job_requester import (
    QUOTE_ABOVE_ADVERT,
    JobFailed,
    JobRequest,
    NoCandidates,
    ParametersRefused,
    PriceBelowOffers,
    run_job,
)
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.job_worker import JobWorker, WorkerConfig, WorkerHooks, serve_job_worker
from lpnode.node.network.base import ByteStream, Network
from lpnode.node.network.memory import MemoryHub, open_memory_hub
from lpnode.node.offer import OfferSource
from lpnode.node.serving import serve_model_offers
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.jobs import QuoteRequest, Refusal, RefusalReason
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline, TextToImageParams
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.receipts import Receipt, verify_receipt

from .test_gossip import CPU, config, key_for, virtual_wall_clock

MODEL = "lpnode/tiny-sdxl"
T2I = JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("a lighthouse at dusk", 64, 64, 2, 0.0, ""), MODEL, seed=7)


# seed 0's first draw (0.84) is above the exploration share: the ranking's own order is tried
def no_exploring() -> random.Random:
    return random.Random(0)


BOUND_S = 60  # generous: CPU inference of the tiny preset takes well under a second


@pytest.fixture
async def pool() -> AsyncIterator[ModelPool]:
    async with open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool:
        yield pool


@dataclass
class Peer:
    node: Node
    worker: JobWorker | None
    scope: trio.CancelScope  # cancelling it takes the whole peer off the network

    @property
    def peer_id(self) -> str:
        return self.node.peer_id


@asynccontextmanager
async def peers(hub: MemoryHub, wall_clock: WallClock = time.time) -> AsyncIterator[Callable[..., object]]:
    """``start(index, pool=, hooks=, handler=, offer=)`` starts a peer dialled to the first one."""
    async with trio.open_nursery() as nursery:
        first: list[Node] = []

        async def run(
            index: int,
            pool: ModelPool | None,
            hooks: WorkerHooks | None,
            handler: Callable[[ByteStream], object] | None,
            models: Sequence[ModelOffer],
            task_status: trio.TaskStatus[Peer],
        ) -> None:
            with trio.CancelScope() as scope:
                async with hub.open_network(key_for(index)) as net, trio.open_nursery() as own:
                    if first:
                        await net.connect(first[0].network.listen_addrs()[0])
                    offer = OfferSource(queue_capacity=4, devices=CPU, models=tuple(models))
                    node = await own.start(
                        functools.partial(serve_node, config(), key_for(index), net, offer, wall_clock=wall_clock)
                    )
                    first.append(node)
                    worker = None
                    if pool is not None:
                        await own.start(serve_model_offers, pool, offer, 100, node.publisher.poke)
                        worker = await own.start(
                            functools.partial(
                                serve_job_worker,
                                net,
                                key_for(index),
                                pool,
                                WorkerConfig(),
                                wall_clock=node.wall_clock,
                                hooks=hooks,
                            )
                        )
                    if handler is not None:
                        net.set_stream_handler(JOB_PROTOCOL, handler)  # type: ignore[arg-type]
                    task_status.started(Peer(node, worker, scope))
                    await trio.sleep_forever()

        async def start(
            index: int,
            *,
            pool: ModelPool | None = None,
            hooks: WorkerHooks | None = None,
            handler: Callable[[ByteStream], object] | None = None,
            models: Sequence[ModelOffer] = (),
        ) -> Peer:
            peer: Peer = await nursery.start(run, index, pool, hooks, handler, models)
            return peer

        yield start
        nursery.cancel_scope.cancel()


async def sees_models(requester: Node, workers: Sequence[Peer]) -> None:
    """Wait until ``requester`` holds an advert with models from each of ``workers``."""
    with trio.fail_after(BOUND_S):
        while not all(
            (record := requester.directory.get(w.peer_id)) is not None and record.advert.models for w in workers
        ):
            await requester.directory.wait_changed()


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


async def test_worker_vanishing_mid_job_completes_on_another_and_records_both(pool: ModelPool) -> None:
    started = trio.Event()
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        doomed: Peer = await start(1, pool=pool, hooks=WorkerHooks(run_started=started.set))  # type: ignore[assignment]
        survivor: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [doomed, survivor])

        async def kill_when_running() -> None:
            await started.wait()
            doomed.scope.cancel()

        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_when_running)
                outcome = await run_job(
                    requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[doomed.peer_id]
                )
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [
        (doomed.peer_id, "disconnected"),
        (survivor.peer_id, "done"),
    ]
    assert outcome.attempts[0].price == 1  # it had quoted before it vanished
    assert outcome.worker_peer_id == survivor.peer_id
    verify_receipt(outcome.receipt_bytes)


async def test_tampered_output_is_rejected_and_the_job_retried(pool: ModelPool) -> None:
    def flip_last_byte(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        cheat: Peer = await start(1, pool=pool, hooks=WorkerHooks(tamper_output=flip_last_byte))  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [cheat, honest])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[cheat.peer_id])
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [
        (cheat.peer_id, "output_mismatch"),
        (honest.peer_id, "done"),
    ]
    assert hashlib.sha256(outcome.outputs[0]).hexdigest() == outcome.receipt.outputs[0].sha256


async def test_a_garbage_speaking_peer_harms_no_other_job(pool: ModelPool) -> None:
    async def garbage(stream: ByteStream) -> None:
        await stream.send_all(b"\x00garbage, not a frame" * 10)

    fake_offer = ModelOffer("text-to-image", MODEL, "0" * 64, True, 1000.0, 1)  # looks like the best peer there is
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        liar: Peer = await start(1, handler=garbage, models=[fake_offer])  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [liar, honest])

        async def spam_the_worker(net: Network) -> None:
            for payload in (b"\x01\xff\xff\xff\xff", b"\x07junk", b"\x01\x00\x00\x00\x03abc"):
                stream = await net.open_stream(honest.peer_id, JOB_PROTOCOL, honest.node.network.listen_addrs())
                await stream.send_all(payload)
                with trio.move_on_after(5):
                    while await stream.receive_some(1024):
                        pass
                await stream.aclose()

        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spam_the_worker, liar.node.network)
                outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, rng=no_exploring())
                # and the worker still serves the next job
                again = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, avoid=[liar.peer_id])
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(liar.peer_id, "garbage"), (honest.peer_id, "done")]
    assert again.worker_peer_id == honest.peer_id
    assert honest.worker is not None and honest.worker.reservations == set()


async def test_no_peers_at_all_says_so() -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        with pytest.raises(JobFailed, match="the network offers: nothing"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5)


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


async def test_a_silent_peer_times_out_and_the_job_moves_on(pool: ModelPool) -> None:
    async def silent(stream: ByteStream) -> None:
        await trio.sleep_forever()  # reads the request, answers nothing

    fake_offer = ModelOffer("text-to-image", MODEL, "0" * 64, True, 1000.0, 1)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        mute: Peer = await start(1, handler=silent, models=[fake_offer])  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [mute, honest])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, quote_timeout_s=0.5, rng=no_exploring()
            )
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(mute.peer_id, "timeout"), (honest.peer_id, "done")]


class StuckPool:
    """Quacks like ModelPool for the worker: serves tiny-sdxl, and a run never ends until cancelled.

    Pure trio (no threads), so the test runs under the MockClock in virtual time.
    """

    state_version = 0
    queue_depth = 0

    def __init__(self) -> None:
        self.running = trio.Event()
        self.cancelled = trio.Event()

    def status(self) -> tuple[ModelStatus, ...]:
        row = ModelStatus(
            name="tiny-sdxl",
            model_id=MODEL,
            pipelines=(PipelineKind.TEXT_TO_IMAGE,),
            weights_sha256="ab" * 32,
            warm=True,
            pinned=True,
            loading=False,
            compiled=(),
            vram_estimate_bytes=0,
            vram_measured_bytes=None,
            speed_mpx_steps_per_s=0.0,
            queued=0,
            running=0,
            problem="",
        )
        return (row,)

    async def wait_changed(self, seen: int) -> int:
        await trio.sleep_forever()
        return seen

    async def run(self, model: str, request: object, *, progress: object = None) -> None:
        self.running.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


async def test_deadline_cancels_the_run_and_frees_the_reservation(autojump_clock: trio.testing.MockClock) -> None:
    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        begun = trio.current_time()
        with pytest.raises(JobFailed, match="deadline") as failed:
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=20)
        assert trio.current_time() - begun == pytest.approx(20, abs=1)
        with trio.fail_after(5):  # the worker sees its own deadline (the same 20 s) or the requester's Cancel
            await stuck.cancelled.wait()
            while worker.worker is not None and worker.worker.reservations:
                await trio.testing.wait_all_tasks_blocked()
    assert [(a.peer_id, a.outcome) for a in failed.value.attempts] == [(worker.peer_id, "deadline")]
    assert stuck.running.is_set()


def png(width: int = 64, height: int = 64, shade: int = 90) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_image_to_image_inputs_travel_hash_checked(pool: ModelPool) -> None:
    from lpnode.node.job_requester import build_spec
    from lpnode.node.transfer import send_transfer
    from lpnode.protocol.jobs import Accept, ErrorCode, JobError, Quote
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
            stream = await requester.node.network.open_stream(
                worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs()
            )
            framed = FramedStream(stream)
            await send_job_message(framed, QuoteRequest(spec, b"m" * 16, 10_000, 60_000), requester.node.key)
            quote = await receive_job_message(framed)
            assert isinstance(quote, Quote)
            await send_job_message(framed, Accept(quote.quote_id, quote.job_id, spec.inputs), requester.node.key)
            await send_transfer(framed, png(shade=91), "image/png")
            answer = await receive_job_message(framed)
    assert [a.outcome for a in outcome.attempts] == ["done"]
    assert outcome.receipt.spec.inputs[0].sha256 == hashlib.sha256(png()).hexdigest()  # the receipt signs the input
    assert isinstance(answer, JobError) and answer.code is ErrorCode.INPUT_MISMATCH
    assert worker.worker is not None and worker.worker.completed == 1 and worker.worker.reservations == set()


# --- the allow_local path -------------------------------------------------------------------------


async def test_allow_local_runs_on_this_nodes_own_pool_with_a_receipt_it_signed(pool: ModelPool) -> None:
    from lpnode.node.local_jobs import LocalWorker

    async with open_memory_hub() as hub, peers(hub) as start:
        alone: Peer = await start(0, pool=pool)  # type: ignore[assignment]
        assert alone.worker is not None
        local = LocalWorker(alone.worker)
        with pytest.raises(NoCandidates):  # without allow_local this node is never a candidate
            await run_job(alone.node, T2I, max_price=10_000, deadline_s=5, local=local)
        with pytest.raises(NoCandidates):  # allow_local, but no worker to run it on
            await run_job(alone.node, T2I, max_price=10_000, deadline_s=5, allow_local=True)
        progress: list[int] = []
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                alone.node,
                T2I,
                max_price=10_000,
                deadline_s=BOUND_S,
                allow_local=True,
                local=local,
                on_progress=lambda p, m: progress.append(m.step),
            )
    receipt = verify_receipt(outcome.receipt_bytes)
    assert receipt.worker_peer_id == receipt.requester_peer_id == alone.peer_id == outcome.worker_peer_id
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [(alone.peer_id, "done")]
    assert [o.sha256 for o in receipt.outputs] == [hashlib.sha256(b).hexdigest() for b in outcome.outputs]
    assert progress
    # the whole worker ran it: a reservation taken and freed, one job completed, the stream closed
    assert alone.worker.completed == 1 and alone.worker.reservations == set() and alone.worker.open_streams == 0


async def test_a_local_worker_of_another_node_is_refused(pool: ModelPool) -> None:
    from lpnode.node.local_jobs import LocalWorker

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert worker.worker is not None
        with pytest.raises(ValueError, match="local worker"):
            await run_job(
                requester.node, T2I, max_price=10_000, deadline_s=5, allow_local=True, local=LocalWorker(worker.worker)
            )


async def test_model_router_binds_its_choice_into_the_job_the_attempts_and_the_outcome(pool: ModelPool) -> None:
    any_model = JobRequest(T2I.pipeline, T2I.params, "", seed=7)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, any_model, max_price=10_000, deadline_s=BOUND_S)
    assert outcome.model_id == outcome.spec.model_id == outcome.receipt.spec.model_id == MODEL
    assert [(a.model_id, a.outcome) for a in outcome.attempts] == [(MODEL, "done")]


# --- every failure is an attempt, and the job completes once on the next candidate ---------------


def completed(*workers: Peer) -> list[int]:
    return [w.worker.completed if w.worker is not None else 0 for w in workers]


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


async def test_a_receipt_that_does_not_bind_the_quote_moves_the_job_to_the_next_candidate(pool: ModelPool) -> None:
    import dataclasses

    def overcharge(receipt: Receipt) -> Receipt:
        return dataclasses.replace(receipt, price=receipt.price + 1)  # signs a price it never quoted

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        cheat: Peer = await start(1, pool=pool, hooks=WorkerHooks(tamper_receipt=overcharge))  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [cheat, honest])
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, prefer=[cheat.peer_id])
    assert [(a.peer_id, a.outcome) for a in outcome.attempts] == [
        (cheat.peer_id, "violation:receipt_mismatch"),
        (honest.peer_id, "done"),
    ]
    assert "price" in outcome.attempts[0].detail or "quote" in outcome.attempts[0].detail
    assert outcome.receipt.worker_peer_id == honest.peer_id and verify_receipt(outcome.receipt_bytes)
    assert completed(honest) == [1]


async def test_an_unreachable_peer_is_an_attempt_too(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        gone: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        honest: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [gone, honest])
        hub.partition([gone.peer_id])  # its advert stays in the directory; its streams and dials stall
        with trio.fail_after(BOUND_S):
            outcome = await run_job(
                requester.node,
                T2I,
                max_price=10_000,
                deadline_s=BOUND_S,
                prefer=[gone.peer_id],
                quote_timeout_s=0.5,
            )
    assert [(a.peer_id, a.outcome) for a in outcome.attempts][-1] == (honest.peer_id, "done")
    assert outcome.attempts[0].peer_id == gone.peer_id and outcome.attempts[0].outcome in ("unreachable", "timeout")
    assert completed(gone, honest) == [0, 1]


async def test_a_local_job_past_its_deadline_leaves_nothing_running(autojump_clock: trio.testing.MockClock) -> None:
    from lpnode.node.local_jobs import LocalWorker

    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        alone: Peer = await start(0, pool=stuck)  # type: ignore[assignment]
        assert alone.worker is not None
        with pytest.raises(JobFailed, match="deadline") as failed:
            await run_job(
                alone.node, T2I, max_price=10_000, deadline_s=20, allow_local=True, local=LocalWorker(alone.worker)
            )
        # run_job returned only after the worker's side of the local job ended
        assert stuck.running.is_set() and stuck.cancelled.is_set()
        assert alone.worker.reservations == set() and alone.worker.open_streams == 0
    assert [(a.peer_id, a.outcome) for a in failed.value.attempts] == [(alone.peer_id, "deadline")]


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
        with pytest.raises(NoCandidates, match=r"within max_price 10000, min_vram_bytes 1024;.*tiny-sdxl"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5, min_vram_bytes=1024)
        with pytest.raises(NoCandidates, match="banned peers excluded"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=5, reputation=BanAll())
