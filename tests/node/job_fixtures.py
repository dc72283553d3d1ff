"""Shared pieces of the network-job tests: peers on the in-memory network, waits on them, a pool that never finishes.

Used by ``test_jobs*.py`` and the modules built on them (job manager, RPC, workflows, retries...). Workers on the
real model pool run tiny-sdxl in the pool's threads, so tests using them run in real time (a MockClock would jump
past a thread's work); every wait is bounded by a generous ``trio.fail_after(BOUND_S)`` and none sleeps for state.

The ``pool`` fixture is not here but in ``conftest.py`` beside this module: pytest hands a conftest fixture to every
test under tests/node by parameter name, so no module imports it. Imported instead, it reads as unused to ruff (F401)
and as redefined by each test's ``pool`` parameter (F811), which is why importers carried ``__all__ = ["pool"]``.
A module that wants another pool (more presets) defines its own ``pool``, which overrides the conftest one.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from lpnode.models.base import PipelineKind
from lpnode.models.pool import ModelPool, ModelStatus
from lpnode.node.daemon import Node, serve_node
from lpnode.node.framing import FramedStream
from lpnode.node.gossip import WallClock
from lpnode.node.job_requester import JobRequest
from lpnode.node.job_stream import receive_job_message, send_job_message
from lpnode.node.job_worker import JobWorker, WorkerConfig, WorkerHooks, serve_job_worker
from lpnode.node.network.base import ByteStream
from lpnode.node.network.memory import MemoryHub
from lpnode.node.offer import OfferSource
from lpnode.node.served_jobs import ServedBook
from lpnode.node.serving import serve_model_offers
from lpnode.node.transfer import send_transfer
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.jobs import Accept, Quote, QuoteRequest
from lpnode.protocol.jobspec import Pipeline, TextToImageParams
from lpnode.protocol.names import JOB_PROTOCOL

from .test_gossip import CPU, config, key_for

MODEL = "lpnode/tiny-sdxl"
T2I = JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("a lighthouse at dusk", 64, 64, 2, 0.0, ""), MODEL, seed=7)


# seed 0's first draw (0.84) is above the exploration share: the ranking's own order is tried
def no_exploring() -> random.Random:
    return random.Random(0)


BOUND_S = 60  # generous: CPU inference of the tiny preset takes well under a second


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
    """``start(index, pool=, hooks=, handler=, models=, served=)`` starts a peer dialled to the first one."""
    async with trio.open_nursery() as nursery:
        first: list[Node] = []

        async def run(
            index: int,
            pool: ModelPool | None,
            hooks: WorkerHooks | None,
            handler: Callable[[ByteStream], object] | None,
            models: Sequence[ModelOffer],
            served: ServedBook | None,
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
                        worker = await own.start(
                            functools.partial(
                                serve_job_worker,
                                net,
                                key_for(index),
                                pool,
                                WorkerConfig(),
                                wall_clock=node.wall_clock,
                                hooks=hooks,
                                served=served,
                                on_capacity_change=node.publisher.poke,
                            )
                        )
                        held = worker
                        await own.start(
                            functools.partial(
                                serve_model_offers,
                                pool,
                                offer,
                                100,
                                node.publisher.poke,
                                reserved=lambda: len(held.reservations),
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
            served: ServedBook | None = None,
        ) -> Peer:
            peer: Peer = await nursery.start(run, index, pool, hooks, handler, models, served)
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


def completed(*workers: Peer) -> list[int]:
    return [w.worker.completed if w.worker is not None else 0 for w in workers]


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


def png(width: int = 64, height: int = 64, shade: int = 90) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def ask_by_hand(requester: Peer, worker: Peer, request: QuoteRequest, data: bytes) -> tuple[object, object]:
    """The classic flow written out, for requesters that lie (``run_job`` never does): send ``request``,
    take its answer; if it is a Quote, accept it and send ``data`` as the one input. (first answer, last)."""
    stream = await requester.node.network.open_stream(worker.peer_id, JOB_PROTOCOL, worker.node.network.listen_addrs())
    framed = FramedStream(stream)
    await send_job_message(framed, request, requester.node.key)
    quote = await receive_job_message(framed)
    if not isinstance(quote, Quote):
        return quote, quote
    accept = Accept(quote.quote_id, quote.job_id, request.spec.inputs)
    await send_job_message(framed, accept, requester.node.key)
    await send_transfer(framed, data, request.spec.inputs[0].media_type)
    return quote, await receive_job_message(framed)
