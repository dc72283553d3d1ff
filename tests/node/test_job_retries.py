"""What ``run_job`` does when the request or the workers stand in the way (QA's second pass, O2, O4, O5).

A busy worker is asked again once it may have room, within the deadline; an image-to-image input
larger than every offer takes is a 422 before any peer gets it; an ``avoid`` that excludes every
peer is named in the error. In-memory network, the real tiny-sdxl preset (real time: the model
runs in the pool's threads), every wait bounded.
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.directory import PeerDirectory
from lpnode.node.job_requester import (
    FiltersExcludeOffers,
    JobFailed,
    JobRequest,
    ParametersRefused,
    _until_capacity,
    run_job,
)
from lpnode.node.job_worker import WorkerConfig
from lpnode.node.network.base import ByteStream
from lpnode.node.network.memory import open_memory_hub
from lpnode.protocol import NodeKey
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline

from .job_fixtures import BOUND_S, MODEL, T2I, Peer, StuckPool, peers, png, sees_models
from .test_directory import T0
from .test_directory import advert as dir_advert

HELD = "a reservation held by another requester"


async def test_a_busy_worker_is_asked_again_when_it_may_have_room(pool: ModelPool) -> None:
    workers: list[Peer] = []
    streams: list[ByteStream] = []

    async def full_at_first(stream: ByteStream) -> None:
        worker = workers[0].worker
        assert worker is not None
        streams.append(stream)
        if len(streams) > 1:
            await worker.handle(stream)
            return
        worker.reservations.add(HELD)  # its one slot is taken while the first request comes
        try:
            await worker.handle(stream)
        finally:
            worker.reservations.discard(HELD)

    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        workers.append(await start(1, pool=pool, handler=full_at_first))  # type: ignore[arg-type]
        assert workers[0].worker is not None
        workers[0].worker.config = WorkerConfig(max_jobs=1)
        await sees_models(requester.node, workers)
        with trio.fail_after(BOUND_S):
            outcome = await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S)
    outcomes = [a.outcome for a in outcome.attempts]
    assert outcomes[0] == "refused:busy" and outcomes[-1] == "done", outcomes
    assert all(a.peer_id == workers[0].peer_id for a in outcome.attempts)


async def test_a_worker_busy_until_the_deadline_fails_the_job_saying_how_long_it_tried(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        assert worker.worker is not None
        worker.worker.config = WorkerConfig(max_jobs=1)
        worker.worker.reservations.add(HELD)  # and never released
        await sees_models(requester.node, [worker])
        with trio.fail_after(BOUND_S), pytest.raises(JobFailed) as failed:
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=2.5)
    outcomes = [a.outcome for a in failed.value.attempts]
    assert len(outcomes) >= 2 and set(outcomes) == {"refused:busy"}, outcomes  # asked again, not given up at once
    assert "of its 2.5 s deadline" in str(failed.value)


async def test_an_image_to_image_input_larger_than_every_offer_is_refused_before_any_peer_gets_it(
    pool: ModelPool,
) -> None:
    i2i = JobRequest(Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a storm", 0.5, 2, 0.0, ""), MODEL, seed=3)
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        record = requester.node.directory.get(worker.peer_id)
        assert record is not None
        limits = next(o.limits for o in record.advert.models if o.model_id == MODEL and o.pipeline == "image-to-image")
        assert limits is not None
        side = limits.max_side + 8
        with trio.fail_after(BOUND_S), pytest.raises(ParametersRefused, match=f"input image {side}×{side}") as refused:
            await run_job(requester.node, i2i, {"image": png(side, side)}, max_price=10**7, deadline_s=BOUND_S)
    assert refused.value.attempts == ()
    assert worker.worker is not None and worker.worker.completed == 0


async def test_avoiding_every_peer_says_so(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with pytest.raises(FiltersExcludeOffers, match=f"offer .* filters: avoid {worker.peer_id[-12:]}"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=BOUND_S, avoid=[worker.peer_id])


class _AdvertisedFull(StuckPool):
    queue_depth = 4  # its adverts say 4 of 4 (the capacity the peers fixture advertises): full


async def test_a_worker_advertising_full_is_asked_when_no_other_could_take_the_job() -> None:
    # QA: under a flood both workers advertised full, and 48 requests were answered 404 "no peer offers
    # text-to-image" while the network offered it; a full worker refuses busy, and the busy rounds wait
    pool = _AdvertisedFull()
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[arg-type]
        await sees_models(requester.node, [worker])
        record = requester.node.directory.get(worker.peer_id)
        assert record is not None and record.advert.queue_depth == record.advert.queue_capacity == 4
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(run_job, requester.node, T2I, max_price=10_000, deadline_s=60))
                await pool.running.wait()  # it reached the worker (which had room after all)
                nursery.cancel_scope.cancel()


async def test_a_busy_peer_is_asked_again_only_on_a_newer_advert_with_room() -> None:
    """The advert a worker refused "busy" under may show a free slot (adverts lag its queue); waking on
    it, at any other peer's advert, shrank every busy round to its floor (review)."""
    worker, other = NodeKey(b"\x02" * 32), NodeKey(b"\x03" * 32)
    directory = PeerDirectory(local_peer=NodeKey(b"\x01" * 32).peer_id, max_peers=10, disconnect_grace_ms=5_000)

    def admit(key: NodeKey, seq: int, depth: int) -> None:
        advert = dir_advert(key, seq=seq)
        directory.admit(dataclasses.replace(advert, queue_depth=depth), now_ms=T0, received_from=key.peer_id)

    admit(worker, 1, 0)  # what the requester saw when the worker refused: a free slot, already stale
    node: Any = SimpleNamespace(directory=directory)
    woke = trio.Event()

    async def wait() -> None:
        await _until_capacity(node, {worker.peer_id: 1}, timeout_s=60)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()  # waiting, before any news
        for key, seq, depth in ((other, 1, 0), (worker, 2, 1)):  # another peer's news; the worker, still full
            admit(key, seq, depth)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
        admit(worker, 3, 0)  # a newer advert with room
        await woke.wait()
