"""Spot checks end to end on the in-memory network, real tiny-sdxl runs, a real reputation store file.

Three workers share one CPU pool of the tiny preset: two honest, one wrapped in
a :class:`CheatingPool` that runs every job with a seed of its own (and
undercuts the others' price, so a ``cost`` requester keeps choosing it until it
is banned). The requester's runner is the manager's (``requester_runner``)
wrapped in the :class:`SpotChecker`. Real time (the pool runs in threads);
every wait is an event bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from lpnode.models.pool import PoolConfig, open_model_pool
from lpnode.node.daemon import Node, serve_node
from lpnode.node.job_manager import requester_runner
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.job_requester import JobOutcome, JobRequest
from lpnode.node.job_worker import serve_job_worker
from lpnode.node.network.memory import MemoryHub, open_memory_hub
from lpnode.node.offer import OfferSource
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.node.serving import serve_model_offers
from lpnode.node.store import open_store
from lpnode.protocol.jobs import Progress
from lpnode.protocol.jobspec import Pipeline, TextToImageParams
from lpnode.reputation.cheat_pool import CheatingPool
from lpnode.reputation.cheats import CheatMode
from lpnode.reputation.spot_check import SpotChecker, open_spot_checker
from lpnode.reputation.store import REPUTATION_MIGRATIONS, ReputationStore, model_family, open_reputation

from tests.node.test_gossip import CPU, config, key_for

MODEL = "lpnode/tiny-sdxl"
FAMILY = model_family(MODEL)
BOUND_S = 90
MAX_JOBS_TO_BAN = 8  # an always-cheater undercutting the others: 2 blames ban it, a few jobs spare
HONEST_PRICE, CHEAP_PRICE = 10_000, 100  # per mpx-step: 82 and 1 micro-credits for a 64² 2-step job


def job(seed: int) -> JobRequest:
    return JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("a lighthouse", 64, 64, 2, 0.0, ""), MODEL, seed=seed)


def no_progress(peer_id: str, message: Progress) -> None:
    pass


@dataclass
class Network:
    requester: Node
    honest: list[str]
    cheater: str
    cheating_pool: CheatingPool
    reputation: ReputationStore
    checker: SpotChecker

    async def run(self, seed: int, **options: object) -> JobOutcome:
        fields = {"max_price": 10_000, "deadline": 60, "priority": "cost", **options}
        return await self.checker(job(seed), {}, JobOptions.model_validate(fields), no_progress)


async def _worker(
    hub: MemoryHub, index: int, pool: object, price: int, first: Node, task_status: trio.TaskStatus[str]
) -> None:
    async with hub.open_network(key_for(index)) as net, trio.open_nursery() as own:
        await net.connect(first.network.listen_addrs()[0])
        offer = OfferSource(queue_capacity=4, devices=CPU)
        node = await own.start(functools.partial(serve_node, config(), key_for(index), net, offer))
        await own.start(serve_model_offers, pool, offer, price, node.publisher.poke)
        await own.start(functools.partial(serve_job_worker, net, key_for(index), pool, wall_clock=node.wall_clock))
        task_status.started(node.peer_id)
        await trio.sleep_forever()


@asynccontextmanager
async def network(
    tmp_path: Path, mode: CheatMode = CheatMode.OTHER_SEED, cheater_price: int = CHEAP_PRICE
) -> AsyncIterator[Network]:
    async with (
        open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool,
        open_memory_hub() as hub,
        hub.open_network(key_for(0)) as net,
        trio.open_nursery() as nursery,
        open_store(tmp_path / "lpnode.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db,
    ):
        requester: Node = await nursery.start(
            functools.partial(serve_node, config(), key_for(0), net, OfferSource(queue_capacity=4, devices=CPU))
        )
        cheating = CheatingPool(pool, mode, rng=random.Random(5))
        honest = [await nursery.start(_worker, hub, i, pool, HONEST_PRICE, requester) for i in (1, 2)]
        cheater = await nursery.start(_worker, hub, 3, cheating, cheater_price, requester)
        with trio.fail_after(BOUND_S):
            while not all((r := requester.directory.get(p)) and r.advert.models for p in [*honest, cheater]):
                await requester.directory.wait_changed()
        reputation = await open_reputation(db)
        runner = requester_runner(requester, None, reputation=reputation, rng=random.Random(0))  # no exploring draw
        async with open_spot_checker(requester, runner, reputation, rng=random.Random(0)) as checker:
            yield Network(requester, honest, cheater, cheating, reputation, checker)
        nursery.cancel_scope.cancel()


async def settled(net: Network, seed: int, **options: object) -> JobOutcome:
    """Run one job and wait until its checks (if any) are settled."""
    with trio.fail_after(BOUND_S):
        outcome = await net.run(seed, **options)
        await net.checker.wait_idle()
    return outcome


async def test_a_blamed_cheater_that_gets_no_more_work_is_still_probed_and_banned(tmp_path: Path) -> None:
    """Once blamed, a cheater priced like the others ranks last and gets no user job: the checks of the
    honest workers' jobs run a copy on it as well (a suspect probe), so the second blame comes anyway."""
    async with network(tmp_path, cheater_price=HONEST_PRICE) as net:
        first = await settled(net, 1, prefer=[net.cheater])
        assert first.worker_peer_id == net.cheater
        assert net.reputation.state(net.cheater, FAMILY).blames == 1 and not net.reputation.is_banned(net.cheater)
        workers = []
        for seed in range(2, 2 + MAX_JOBS_TO_BAN):
            workers.append((await settled(net, seed)).worker_peer_id)
            if net.reputation.is_banned(net.cheater):
                break
        assert net.cheater not in workers  # never a user's job again
        assert net.reputation.is_banned(net.cheater), net.reputation.describe(net.cheater)
        probed = await net.reputation.evidence(peer_id=net.cheater)
        assert len(probed) == 2 and all(e["blamed"] == [net.cheater] for e in probed)
        for peer in net.honest:
            assert net.reputation.state(peer, FAMILY).blames == 0 and not net.reputation.is_banned(peer)


async def test_a_cheater_is_blamed_then_banned_and_honest_workers_agree(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        jobs_to_ban = 0
        while not net.reputation.is_banned(net.cheater):
            assert jobs_to_ban < MAX_JOBS_TO_BAN, net.reputation.describe(net.cheater)
            jobs_to_ban += 1
            outcome = await settled(net, jobs_to_ban)
            if jobs_to_ban == 1:
                # the cheapest peer ran it and a check blamed it; the user had its answer first
                assert outcome.worker_peer_id == net.cheater
                assert net.reputation.state(net.cheater, FAMILY).blames == 1
        # two blames with no passed check between ban (SPRT: 2 ln 50 = 7.8 >= 5); every job of a new peer is checked
        assert jobs_to_ban == 2
        assert net.cheating_pool.cheated >= 2
        ban = net.reputation.ban(net.cheater)
        assert ban is not None and ban.reason == "failed checks"
        # honest workers were each other's tie-breakers: credited, never blamed, not banned
        for peer in net.honest:
            state = net.reputation.state(peer, FAMILY)
            assert state.blames == 0 and state.checks >= 2 and not net.reputation.is_banned(peer)
            assert net.reputation.score(peer, FAMILY) > net.reputation.score(net.cheater, FAMILY)
        evidence = await net.reputation.evidence(peer_id=net.cheater)
        assert len(evidence) == 2 and all(e["blamed"] == [net.cheater] for e in evidence)
        assert all(len(e["receipts"]) == 3 for e in evidence)  # first worker, checker, tie-breaker
        # banned: the cheap peer is never chosen again, and an honest one agrees with its checker
        after = await settled(net, 100)
        assert after.worker_peer_id in net.honest
        last = (await net.reputation.evidence(newest_first=True, limit=1))[0]
        assert last["verdict"] == "agree" and sorted(last["credited"]) == sorted(net.honest)
        counters = net.reputation.counters()
        assert counters["jobs"] == 3 and counters["check_runs"] == 2 * 2 + 1
        assert net.reputation.overhead() == pytest.approx(5 / 3)  # new peers: everything is checked


async def test_redundant_answers_with_the_majority_and_none_checks_nothing(tmp_path: Path) -> None:
    async with network(tmp_path, CheatMode.BLANK) as net:
        outcome = await settled(net, 1, verification="redundant:3")
        # the cheap cheater ran it first, yet the answer is the honest majority's
        assert outcome.worker_peer_id in net.honest
        assert net.reputation.state(net.cheater, FAMILY).blames == 1
        assert net.reputation.counters()["check_runs"] == 2
        # the answer's attempts name every peer that ran it, the majority's answer last
        ran = [a.peer_id for a in outcome.attempts if a.outcome == "done"]
        assert sorted(ran) == sorted([*net.honest, net.cheater]) and ran[-1] == outcome.worker_peer_id

        unchecked = await settled(net, 2, verification="none")
        assert unchecked.worker_peer_id == net.cheater  # not banned yet, still the cheapest
        assert net.reputation.counters()["check_runs"] == 2 and net.reputation.counters()["jobs"] == 2
