"""A checker whose copy failed is not asked again for the same check (review s10, item 6).

After the side-by-side copies, the spot checker adds "one more peer" while there is no majority. It used to
leave out only the peers that failed the user's own job, so with two workers the checker whose copy had just
failed (refused, gone) was picked again: a second copy into the same dead peer, another timeout, and the one
lost check counted twice as skipped. The real spot checker, store file and tiny-sdxl workers of
``test_spot_check_flow``, two workers; the runner under the checker fails every copy on the checker it
prefers, as ``run_job`` reports a checker that is down.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from lpnode.models.pool import PoolConfig, open_model_pool
from lpnode.node.daemon import Node, serve_node
from lpnode.node.job_manager import requester_runner
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.job_requester import Attempt, JobFailed, JobOutcome, JobRequest, ProgressCallback
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.offer import OfferSource
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.node.store import open_store
from lpnode.reputation.spot_check import open_spot_checker
from lpnode.reputation.store import REPUTATION_MIGRATIONS, ReputationStore, open_reputation

from tests.node.test_gossip import CPU, config, key_for

from .test_spot_check_flow import BOUND_S, HONEST_PRICE, MODEL, _worker, job, no_progress


@dataclass
class TwoWorkers:
    requester: Node
    workers: list[str]
    reputation: ReputationStore


@asynccontextmanager
async def two_workers(tmp_path: Path) -> AsyncIterator[TwoWorkers]:
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        open_memory_hub(seed=1) as hub,
        hub.open_network(key_for(0)) as net,
        trio.open_nursery() as nursery,
        open_store(tmp_path / "lpnode.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db,
    ):
        requester: Node = await nursery.start(
            functools.partial(serve_node, config(), key_for(0), net, OfferSource(queue_capacity=4, devices=CPU))
        )
        workers = [await nursery.start(_worker, hub, i, pool, HONEST_PRICE, requester) for i in (1, 2)]
        with trio.fail_after(BOUND_S):
            while not all((r := requester.directory.get(p)) and r.advert.models for p in workers):
                await requester.directory.wait_changed()
        yield TwoWorkers(requester, workers, await open_reputation(db))
        nursery.cancel_scope.cancel()


async def test_a_checker_whose_copy_failed_is_not_asked_again(tmp_path: Path) -> None:
    async with two_workers(tmp_path) as net:
        first, checker = net.workers
        plain = requester_runner(net.requester, None, reputation=net.reputation, rng=random.Random(0))
        copies: list[str] = []  # the checker each copy preferred

        async def checker_down(
            request: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
        ) -> JobOutcome:
            if options.allow_local is not False or not options.prefer or options.prefer[0] == first:
                return await plain(request, inputs, options, on_progress)  # the user's job
            copies.append(options.prefer[0])
            down = Attempt(options.prefer[0], MODEL, "0" * 64, "unreachable", "no route to the peer", None)
            raise JobFailed("no candidate produced a verified result", [down])

        async with open_spot_checker(net.requester, checker_down, net.reputation, rng=random.Random(0)) as spot:
            options = JobOptions.model_validate({"max_price": 10_000, "deadline": 60, "prefer": [first]})
            with trio.fail_after(BOUND_S):
                outcome = await spot(job(1), {}, options, no_progress)
                await spot.wait_idle()
        assert outcome.worker_peer_id == first
        assert copies == [checker]  # was [checker, checker]: the dead checker asked twice
        counters = net.reputation.counters()
        assert counters["checks_skipped"] == 1 and counters["checks"] == 0  # one lost check, counted once
        assert await net.reputation.evidence() == []
