"""A job over real libp2p on 127.0.0.1: requester → worker with the tiny-sdxl preset, verified receipt.

The in-memory tests (``test_jobs_faults.py``) cover the faults; this checks that the
same worker and requester hold over TCP + Noise + Yamux streams. Waits are
bounded by ``trio.fail_after``; nothing sleeps.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.job_requester import JobFailed, JobRequest, run_job
from lpnode.node.job_worker import JobWorker, WorkerConfig, WorkerHooks, serve_job_worker
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.offer import OfferSource
from lpnode.node.serving import serve_model_offers
from lpnode.protocol import GpuInfo, NodeKey
from lpnode.protocol.jobspec import ImageToImageParams, Pipeline
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import T2I, png

DEADLINE_S = 60
LOOPBACK = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
CPU = (GpuInfo(name="cpu: test", kind="cpu", vram_total_bytes=0, vram_free_bytes=0),)


@asynccontextmanager
async def libp2p_peer(
    index: int,
    pool: ModelPool | None,
    bootstrap: tuple[str, ...] = (),
    hooks: WorkerHooks | None = None,
    worker_config: WorkerConfig | None = None,
) -> AsyncIterator[tuple[Node, JobWorker | None]]:
    key = NodeKey(bytes([0x90 + index]) * 32)
    config = NodeConfig(listen=LOOPBACK.listen_addrs, bootstrap=bootstrap, mdns=False).validate()
    offer = OfferSource(queue_capacity=4, devices=CPU)
    async with open_libp2p_network(key, LOOPBACK) as network, trio.open_nursery() as nursery:
        node: Node = await nursery.start(functools.partial(serve_node, config, key, network, offer))
        worker = None
        if pool is not None:
            await nursery.start(serve_model_offers, pool, offer, config.price_per_mpx_step, node.publisher.poke)
            worker = await nursery.start(
                functools.partial(
                    serve_job_worker, network, key, pool, worker_config, wall_clock=node.wall_clock, hooks=hooks
                )
            )
        yield node, worker
        nursery.cancel_scope.cancel()


async def test_text_to_image_over_real_libp2p() -> None:
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        libp2p_peer(1, pool) as (worker_node, worker),
        libp2p_peer(0, None, bootstrap=(worker_node.network.listen_addrs()[0],)) as (requester, _),
    ):
        with trio.fail_after(DEADLINE_S):
            while (record := requester.directory.get(worker_node.peer_id)) is None or not record.advert.models:
                await requester.directory.wait_changed()
            outcome = await run_job(requester, T2I, max_price=10_000, deadline_s=DEADLINE_S)
    assert [a.outcome for a in outcome.attempts] == ["done"]
    receipt = verify_receipt(outcome.receipt_bytes)
    assert receipt.worker_peer_id == worker_node.peer_id and receipt.requester_peer_id == requester.peer_id
    assert receipt.outputs[0].sha256 == hashlib.sha256(outcome.outputs[0]).hexdigest()
    assert worker is not None and worker.completed == 1 and worker.reservations == set()


def padded_png(extra_bytes: int) -> bytes:
    """A valid 64×64 PNG carrying ``extra_bytes`` in a private ancillary chunk (decoders skip it): a large upload."""
    data = png()
    body = b"\0" * extra_bytes
    chunk = struct.pack(">I", len(body)) + b"lpNd" + body + struct.pack(">I", zlib.crc32(b"lpNd" + body))
    end = data.rindex(b"IEND") - 4  # before IEND's length field
    return data[:end] + chunk + data[end:]


async def test_a_worker_stopping_mid_upload_is_heard_though_it_cut_the_upload_off() -> None:
    """The worker says why (it is shutting down) and resets the stream under the requester's upload; the
    requester's send fails, and it still reads that last word: the try ends ``error:cancelled`` with the
    worker's reason, not ``disconnected``."""
    upload_started = trio.Event()
    hooks = WorkerHooks(upload_started=upload_started.set)
    job = JobRequest(
        Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a lighthouse", 0.5, 2, 0.0, ""), "lpnode/tiny-sdxl", seed=1
    )
    image = padded_png(24 * 1024 * 1024)  # far more than a stream's window: the requester is mid-send when cut off
    failed: list[JobFailed] = []
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        libp2p_peer(1, pool, hooks=hooks) as (worker_node, worker),
        libp2p_peer(0, None, bootstrap=(worker_node.network.listen_addrs()[0],)) as (requester, _),
    ):
        assert worker is not None
        with trio.fail_after(DEADLINE_S):
            while (record := requester.directory.get(worker_node.peer_id)) is None or not record.advert.models:
                await requester.directory.wait_changed()

            async def ask() -> None:
                try:
                    await run_job(requester, job, {"image": image}, max_price=10**9, deadline_s=DEADLINE_S)
                except JobFailed as exc:
                    failed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await upload_started.wait()
                await worker.stop()  # what `lpnode run` does first on Ctrl-C or SIGTERM
    [attempt] = failed[0].attempts
    assert attempt.outcome == "error:cancelled" and "the worker is shutting down" in attempt.detail, attempt


async def test_an_upload_past_the_workers_allowance_is_told_and_not_held_against_it() -> None:
    """The worker bounds an accepted job's upload (``input_grace_s`` plus the size at ``min_input_bytes_per_s``);
    past it, it says so and cuts the upload off. The requester reads why, and the slow side was its own: the
    try is no fault of the worker's."""
    strict = WorkerConfig(input_grace_s=0.001, min_input_bytes_per_s=10**12)  # ~1 ms for any upload
    job = JobRequest(
        Pipeline.IMAGE_TO_IMAGE, ImageToImageParams("a lighthouse", 0.5, 2, 0.0, ""), "lpnode/tiny-sdxl", seed=1
    )
    image = padded_png(24 * 1024 * 1024)  # no loopback carries 24 MiB through Noise in a millisecond
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        libp2p_peer(1, pool, worker_config=strict) as (worker_node, _),
        libp2p_peer(0, None, bootstrap=(worker_node.network.listen_addrs()[0],)) as (requester, _),
    ):
        with trio.fail_after(DEADLINE_S):
            while (record := requester.directory.get(worker_node.peer_id)) is None or not record.advert.models:
                await requester.directory.wait_changed()
            with pytest.raises(JobFailed) as failed:
                await run_job(requester, job, {"image": image}, max_price=10**9, deadline_s=DEADLINE_S)
    [attempt] = failed.value.attempts
    assert attempt.outcome == "error:deadline_exceeded", attempt
    assert "did not arrive within 0 s: this worker allows 0.001 s plus their size" in attempt.detail
    assert attempt.fault == ""
