"""Jobs against faulty workers on the in-memory network: each fault is an attempt, and the job moves on.

A worker that vanishes mid-job, tampers with its output or its receipt, speaks garbage, stays silent or cannot be
reached; a run past the job's deadline (in virtual time) is cancelled on both sides.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.job_requester import JobFailed, run_job
from lpnode.node.job_worker import WorkerHooks
from lpnode.node.network.base import ByteStream, Network
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.names import JOB_PROTOCOL
from lpnode.protocol.receipts import Receipt, verify_receipt

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, StuckPool, completed, no_exploring, peers, sees_models
from .test_gossip import virtual_wall_clock


async def test_worker_vanishing_mid_job_completes_on_another_and_records_both(pool: ModelPool) -> None:
    running = trio.Event()  # the requester heard the doomed worker's run under way (a Progress: after its Quote)

    def on_progress(peer_id: str, message: object) -> None:
        if peer_id == doomed.peer_id:
            running.set()

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        doomed: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        survivor: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [doomed, survivor])

        async def kill_when_running() -> None:
            await running.wait()
            doomed.scope.cancel()

        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_when_running)
                outcome = await run_job(
                    requester.node,
                    T2I,
                    max_price=10_000,
                    deadline_s=BOUND_S,
                    prefer=[doomed.peer_id],
                    on_progress=on_progress,
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
