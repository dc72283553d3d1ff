"""The one place where the job manager meets the requester: :data:`JobRunner` and the factory that builds it.

:func:`requester_runner` sends each network job through a node's requester
(``run_job``) with the request's options.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from lpnode.node.daemon import Node
from lpnode.node.job_requester import JobOutcome, JobRequest, ProgressCallback, run_job
from lpnode.node.peer_choice import DEFAULT_EXPLORE_SHARE, Priority, ReputationView
from lpnode.node.rpc_job_bodies import JobOptions
from lpnode.node.spare_streams import SpareStreams

if TYPE_CHECKING:  # local_jobs imports the worker, and with it torch
    from lpnode.node.local_jobs import LocalWorker

# One network job, the single place where the manager meets the requester (run.py builds it)
JobRunner = Callable[[JobRequest, Mapping[str, bytes], JobOptions, ProgressCallback], Awaitable[JobOutcome]]


def requester_runner(
    node: Node,
    local: LocalWorker | None = None,
    reputation: ReputationView | None = None,
    rng: random.Random | None = None,
    spares: SpareStreams | None = None,
    check_output_size: bool = True,
    offload_checks: bool = True,
    explore_share: float = DEFAULT_EXPLORE_SHARE,
) -> JobRunner:
    """The JobRunner that sends each network job through ``node``'s requester (``run_job``).

    ``local`` is this node's own worker, the candidate a job with ``allow_local`` may use;
    ``reputation`` (the reputation store) steers the ranking: banned peers are never chosen.
    ``rng`` drives the ranking's exploration (seeded in tests; default: one per job), and ``explore_share``
    is how often it explores (``peer_choice``; 0: never, the ranking's first is always asked first).
    ``spares`` keeps a job stream open ahead to the workers in use (``spare_streams``).
    ``check_output_size``, ``offload_checks``: see ``run_job`` (off only in simulations).
    """

    async def run(
        job: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
    ) -> JobOutcome:
        min_vram_gb = options.min_vram_gb or 0.0
        return await run_job(
            node,
            job,
            inputs,
            max_price=options.max_price,
            deadline_s=options.deadline,
            prefer=options.prefer,
            avoid=options.avoid,
            allow_local=options.allow_local,
            local=local,
            priority=Priority(options.priority),
            min_vram_bytes=int(min_vram_gb * 1024**3),
            reputation=reputation,
            min_reputation=options.min_reputation or 0.0,
            rng=rng,
            on_progress=on_progress,
            check_output_size=check_output_size,
            offload_checks=offload_checks,
            spares=spares,
            explore_share=explore_share,
        )

    return run


__all__ = ["JobRunner", "requester_runner"]
