"""One simulated node's stack over any Network: the production services plus its behaviour's wrappers.

Both backends start nodes through :func:`serve_sim_node`: the in-memory runner
(virtual time) and the libp2p backend (real time, real hosts). A requester is
``serve_node`` alone; a worker adds a :class:`~lpnode.simnet.sim_pool.SimPool`
on its GPU profile, ``serve_model_offers`` and ``serve_job_worker``, with the
group's behaviour applied from outside (``behaviours``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import WallClock
from lpnode.node.job_quote import WorkerConfig
from lpnode.node.job_worker import serve_job_worker
from lpnode.node.network.base import Network
from lpnode.node.offer import OfferSource
from lpnode.node.serving import serve_model_offers
from lpnode.protocol.advert import CapabilityAdvert, GpuInfo
from lpnode.protocol.signing import NodeKey

from .behaviours import FlakyNetwork, lying_offer
from .gpus import GpuProfile
from .scenario import NodeGroup
from .sim_pool import SimPoolConfig, SimPoolStats, open_sim_pool


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    group: NodeGroup
    gpu: GpuProfile


@dataclass
class SimNode:
    node: Node
    pool_stats: SimPoolStats | None  # None for a requester
    flaky: FlakyNetwork | None


async def serve_sim_node(
    key: NodeKey,
    net: Network,
    config: NodeConfig,
    worker: WorkerSpec | None,
    *,
    seed: int,
    wall_clock: WallClock,
    observe: Callable[[CapabilityAdvert], None],
    task_status: trio.TaskStatus[SimNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node (a requester when ``worker`` is None) until cancelled; hands back its :class:`SimNode`."""
    async with trio.open_nursery() as nursery:
        if worker is None:
            node: Node = await nursery.start(
                functools.partial(serve_node, config, key, net, OfferSource(queue_capacity=0), wall_clock=wall_clock)
            )
            node.gossip_stats.observers.append(observe)
            task_status.started(SimNode(node, None, None))
            await trio.sleep_forever()
        assert worker is not None
        g, index = worker.group, worker.index
        flaky = None
        if g.behaviour == "flaky":
            net = flaky = FlakyNetwork(net, g.drop_share, random.Random(f"{seed}/flaky/{index}"))
        gpu = worker.gpu
        offer = OfferSource(
            queue_capacity=4,
            devices=(
                GpuInfo(name=gpu.name, kind="cuda", vram_total_bytes=gpu.vram_bytes, vram_free_bytes=gpu.vram_bytes),
            ),
        )
        pool_config = SimPoolConfig(
            serve=g.serve,
            pinned=g.pinned,
            slowdown=g.slowdown if g.behaviour == "slow" else 1.0,
            device_seed=index,
            cheat=g.cheat if g.behaviour == "cheater" else "",
            cheat_share=g.cheat_share if g.behaviour == "cheater" else 0.0,
        )
        async with open_sim_pool(gpu, pool_config) as pool:
            advertised = lying_offer(offer, g.lie) if g.behaviour == "liar" else offer
            node = await nursery.start(
                functools.partial(serve_node, config, key, net, advertised, wall_clock=wall_clock)
            )
            node.gossip_stats.observers.append(observe)
            job_worker = await nursery.start(
                functools.partial(
                    serve_job_worker,
                    net,
                    key,
                    pool,
                    WorkerConfig(price_per_mpx_step=g.price_per_mpx_step),
                    wall_clock=wall_clock,
                    on_capacity_change=node.publisher.poke,
                )
            )
            await nursery.start(
                functools.partial(
                    serve_model_offers,
                    pool,
                    offer,
                    g.price_per_mpx_step,
                    node.publisher.poke,
                    reserved=lambda: len(job_worker.reservations),
                )
            )
            task_status.started(SimNode(node, pool.stats, flaky))
            await trio.sleep_forever()


__all__ = ["SimNode", "WorkerSpec", "serve_sim_node"]
