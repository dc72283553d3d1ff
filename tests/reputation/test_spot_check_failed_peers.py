"""A peer that failed a job is not asked to check that job (QA's second pass, O9).

After a failover the job's first worker is often down, and its advert outlives it; a check copy sent
there is a lost sample (and was sent twice). The real spot checker, store and tiny-sdxl workers of
``test_spot_check_flow``; the runner under the checker reports one failed attempt on an honest peer
before the job's own, as ``run_job`` does after a failover.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from pathlib import Path

import trio
from lpnode.node.job_manager import requester_runner
from lpnode.node.job_requester import Attempt, JobOutcome, JobRequest, ProgressCallback
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.spot_check import open_spot_checker

from .test_spot_check_flow import BOUND_S, job, network, no_progress


async def test_the_peer_a_job_failed_on_never_checks_it(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        gone, first = net.honest[1], net.honest[0]
        plain = requester_runner(net.requester, None, reputation=net.reputation, rng=random.Random(0))

        async def after_a_failover(
            request: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
        ) -> JobOutcome:
            outcome = await plain(request, inputs, options, on_progress)
            if outcome.worker_peer_id != first:
                return outcome  # a check copy: as it ran
            lost = Attempt(gone, outcome.model_id, "0" * 64, "disconnected", "worker went away", None)
            return dataclasses.replace(outcome, attempts=(lost, *outcome.attempts))

        async with open_spot_checker(net.requester, after_a_failover, net.reputation, rng=random.Random(0)) as checker:
            options = JobOptions.model_validate({"max_price": 10_000, "deadline": 60, "prefer": [first]})
            with trio.fail_after(BOUND_S):
                outcome = await checker(job(1), {}, options, no_progress)
                await checker.wait_idle()
        assert outcome.worker_peer_id == first
        (evidence,) = await net.reputation.evidence()
        ran = {verify_receipt(r["receipt"]).worker_peer_id for r in evidence["receipts"]}
        # the cheater checked it (and disagreed); the only tie-breaker left had failed the job: none asked
        assert ran == {first, net.cheater}
        assert evidence["verdict"] == "inconclusive"


async def test_copies_run_side_by_side_never_fall_back_on_each_other_s_checker(tmp_path: Path) -> None:
    """redundant:3 sends two copies at once, each preferring its own checker. A copy its checker refused
    fell back on any other peer, the other copy's checker included: the job ran there twice and the
    second run was thrown away, one vote fewer (review)."""
    async with network(tmp_path) as net:
        plain = requester_runner(net.requester, None, reputation=net.reputation, rng=random.Random(0))
        copies: list[JobOptions] = []

        async def recording(
            request: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
        ) -> JobOutcome:
            if options.prefer and options.allow_local is False and len(copies) < 8 and options.avoid:
                copies.append(options)
            return await plain(request, inputs, options, on_progress)

        async with open_spot_checker(net.requester, recording, net.reputation, rng=random.Random(0)) as checker:
            options = JobOptions.model_validate({"max_price": 10_000, "deadline": 60, "verification": "redundant:3"})
            with trio.fail_after(BOUND_S):
                await checker(job(1), {}, options, no_progress)
                await checker.wait_idle()
    side_by_side = copies[:2]
    assert len(side_by_side) == 2
    for mine, theirs in ((side_by_side[0], side_by_side[1]), (side_by_side[1], side_by_side[0])):
        assert theirs.prefer[0] in mine.avoid and mine.prefer[0] not in mine.avoid
