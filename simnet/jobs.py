"""Running one planned job from a requester node and judging what came back (shared by both backends)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import imagehash
from lpnode.models.errors import ModelError
from lpnode.node.daemon import Node
from lpnode.node.job_convert import model_request
from lpnode.node.job_requester import Attempt, JobFailed, JobOutcome, NoCandidates, PriceBelowOffers, run_job
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.protocol.jobs import Progress
from lpnode.reputation.spot_check import Runner
from PIL import Image

from .metrics import JobRecord
from .scenario import Workload
from .sim_pool import hamming, honest_weights_sha256, standin_frames
from .workload import PlannedJob

PHASH_TOLERANCE = 10  # bits of 64: honest stand-ins differ by ~0-4, unrelated pictures by ~32


async def run_planned_job(
    job: PlannedJob,
    requester: Node,
    workload: Workload,
    *,
    seed: int,
    now_s: Callable[[], float],
    peer_index: Mapping[str, int],
    runner: Runner | None = None,
) -> JobRecord:
    """Submit ``job`` through the production requester and describe how it ended.

    With ``runner`` (a requester's spot checker, simnet/checks.py) the job goes through it with the
    workload's ``verification``, as the node's job manager sends an RPC job; without, straight to ``run_job``.
    """
    submitted = now_s()
    outcome: JobOutcome | None = None
    attempts: tuple[Attempt, ...] = ()
    why = "done"
    try:
        if runner is not None:
            options = JobOptions(
                max_price=workload.max_price,
                deadline=workload.deadline_s,
                verification=workload.verification,
                min_reputation=None,
                min_vram_gb=None,
            )
            outcome = await runner(job.request, job.inputs, options, _no_progress)
        else:
            outcome = await run_job(
                requester,
                job.request,
                job.inputs,
                max_price=workload.max_price,
                deadline_s=workload.deadline_s,
                rng=random.Random(f"{seed}/choice/{job.index}"),
                check_output_size=False,  # the stand-ins draw 64×64 pictures whatever the job asks (sim_pool)
                offload_checks=False,  # no thread under the virtual clock: a seeded run repeats
            )
        attempts = outcome.attempts
    except NoCandidates:
        why = "no_candidates"
    except PriceBelowOffers:
        why = "price_below_offers"
    except JobFailed as exc:
        why = "failed"
        attempts = exc.attempts
    return JobRecord(
        index=job.index,
        requester=job.requester,
        pipeline=job.request.pipeline.value,
        submitted_s=submitted,
        ended_s=now_s(),
        ok=outcome is not None,
        outcome=why,
        worker=peer_index.get(outcome.worker_peer_id) if outcome is not None else None,
        attempts=max(1, len(attempts)),
        attempt_outcomes=tuple(a.outcome for a in attempts),
        attempt_details=tuple(a.detail for a in attempts),
        price=outcome.price if outcome is not None else None,
        output_good=oracle(outcome, job) if outcome is not None else None,
    )


def _no_progress(peer_id: str, message: Progress) -> None:
    """Nobody watches a simulated job's progress."""


def oracle(outcome: JobOutcome, job: PlannedJob) -> bool | None:
    """Ground truth only a simulation has: is this the picture an honest worker would have made?"""
    try:
        request = model_request(outcome.spec, job.inputs)
    except ModelError:
        return None
    honest = honest_weights_sha256(outcome.model_id)
    truth = standin_frames(honest, request)[0]
    expected = str(imagehash.phash(Image.fromarray(truth, mode="RGB").convert("L")))
    got = outcome.receipt.outputs[0].phash[0]
    return outcome.receipt.weights_sha256 == honest and hamming(expected, got) <= PHASH_TOLERANCE


__all__ = ["PHASH_TOLERANCE", "oracle", "run_planned_job"]
