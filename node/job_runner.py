"""The one place where the job manager meets the requester: :data:`JobRunner` and the factory that builds it.

:func:`requester_runner` sends each network job through a node's requester
(``run_job``); when no candidate is left it tells a request priced below every
offer (:class:`PriceBelowOffers`) from one nobody can serve.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from lpnode.node.daemon import Node
from lpnode.node.job_requester import (
    JobOutcome,
    JobRequest,
    NoCandidates,
    ParametersRefused,
    ProgressCallback,
    build_spec,
    run_job,
)
from lpnode.node.peer_choice import Priority, ReputationView, fit_offers, rank_candidates
from lpnode.node.rpc_job_bodies import JobOptions

if TYPE_CHECKING:  # local_jobs imports the worker, and with it torch
    from lpnode.node.local_jobs import LocalWorker

# One network job, the single place where the manager meets the requester (run.py builds it)
JobRunner = Callable[[JobRequest, Mapping[str, bytes], JobOptions, ProgressCallback], Awaitable[JobOutcome]]


class PriceBelowOffers(ParametersRefused):
    """Peers offer the job, but every offer prices it above the request's ``max_price`` (HTTP 422).

    Like parameters beyond every advertised limit, it is the request that cannot be met, told
    before any peer is asked; not a 404: the model is on offer.
    """


def requester_runner(
    node: Node,
    local: LocalWorker | None = None,
    reputation: ReputationView | None = None,
    rng: random.Random | None = None,
) -> JobRunner:
    """The JobRunner that sends each network job through ``node``'s requester (``run_job``).

    ``local`` is this node's own worker, the candidate a job with ``allow_local`` may use;
    ``reputation`` (the reputation store) steers the ranking: banned peers are never chosen.
    ``rng`` drives the ranking's exploration (seeded in tests; default: one per job).
    """

    async def run(
        job: JobRequest, inputs: Mapping[str, bytes], options: JobOptions, on_progress: ProgressCallback
    ) -> JobOutcome:
        min_vram_gb = options.min_vram_gb or 0.0
        try:
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
            )
        except NoCandidates:
            _raise_if_only_price_stands_in_the_way(node, local, reputation, job, inputs, options)
            raise

    return run


# Above any price (micro-credits) an advert can make for one job, so nothing is left out for price.
_UNBOUNDED_PRICE = 1 << 62


def _raise_if_only_price_stands_in_the_way(
    node: Node,
    local: LocalWorker | None,
    reputation: ReputationView | None,
    job: JobRequest,
    inputs: Mapping[str, bytes],
    options: JobOptions,
) -> None:
    """PriceBelowOffers when the same ranking with no price bound finds candidates: the cheapest one's price."""
    spec = build_spec(job, inputs, 1)  # the output bound plays no part in the price
    adverts = [record.advert for record in node.directory if record.advert.peer_id != node.peer_id]
    if options.allow_local and local is not None:
        adverts.append(node.publisher.build())
    fitting, _ = fit_offers(adverts, spec)
    candidates = rank_candidates(
        fitting,
        spec,
        max_price=_UNBOUNDED_PRICE,
        rng=random.Random(0),
        avoid=options.avoid,
        explore_share=0.0,
        priority=Priority.COST,
        min_vram_bytes=int((options.min_vram_gb or 0.0) * 1024**3),
        reputation=reputation,
        min_reputation=options.min_reputation or 0.0,
    )
    if not candidates or min(c.price for c in candidates) <= options.max_price:
        return  # not the price: nobody offers it, or another requirement left no one
    cheapest = min(candidates, key=lambda c: (c.price, c.peer_id))
    raise PriceBelowOffers(
        f"no offer fits max_price {options.max_price}: the cheapest {spec.pipeline} offer "
        f"({cheapest.model_id} on {cheapest.peer_id[-12:]}) prices this job at {cheapest.price} micro-credits"
    ) from None


__all__ = ["JobRunner", "PriceBelowOffers", "requester_runner"]
