"""Choosing which peers to ask for a job: pure ranking over the directory's verified adverts.

No I/O and no clock: the requester passes the adverts it knows and a seeded
``random.Random``, so a ranking is reproducible in tests and simulations.

The order, and why:

1. ``prefer`` peers first: the user named them, they know something we don't.
2. Warm before cold: a cold model costs a load (seconds to minutes) before the first step.
3. Within those, the best expected turnaround per price: measured speed
   (megapixel-steps/s) divided by the work already queued there, then the
   cheaper one. An unmeasured peer (speed 0) ranks last among its peers.
4. Exploration: with probability ``explore_share`` one candidate from the
   lower part of the list is moved to the front, so newcomers (no measured
   speed yet) get work and can build a record (DESIGN.md, step 3).

A reputation score will join step 3 when the reputation store exists; until
then every peer is neutral.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lpnode.protocol.advert import CapabilityAdvert, ModelOffer
from lpnode.protocol.jobspec import JobSpec

DEFAULT_EXPLORE_SHARE = 0.05  # one job in twenty tries a peer the ranking would not have picked first
UNMEASURED_SPEED = 0.0


@dataclass(frozen=True)
class Candidate:
    """One (peer, model) able to run the job, with what the ranking used."""

    peer_id: str
    addrs: tuple[str, ...]  # dial hints from the advert
    model_id: str  # the model this peer would run (the spec's, or its best for the pipeline)
    warm: bool
    speed_mpx_steps_per_s: float  # 0.0 = not measured yet
    price: int  # micro-credits, estimated from the advert's price per mpx-step
    queue_depth: int
    queue_capacity: int
    preferred: bool


def job_mpx_steps(spec: JobSpec) -> float:
    """Megapixel-steps of work the spec asks for (AI Horde's unit, as priced in adverts).

    Pipelines whose output size depends on an input (image-to-image, upscale,
    interpolation) are estimated at one megapixel-step: the requester does not
    decode its own inputs just to price them, and the worker's quote is what binds.
    """
    params = spec.params
    width = getattr(params, "width", 0)
    height = getattr(params, "height", 0)
    if not (width and height):
        return 1.0
    steps = getattr(params, "num_inference_steps", 1)
    frames = getattr(params, "num_frames", 1)
    return width * height * frames * steps / 1e6


def work_is_known(spec: JobSpec) -> bool:
    """Whether :func:`job_mpx_steps` is the real work, not the one-mpx-step stand-in for input-sized jobs."""
    return bool(getattr(spec.params, "width", 0) and getattr(spec.params, "height", 0))


def job_price(spec: JobSpec, price_per_mpx_step: int) -> int:
    """Micro-credits for the job at ``price_per_mpx_step``; the worker quotes the same formula."""
    return math.ceil(job_mpx_steps(spec) * price_per_mpx_step)


def _offers_for(advert: CapabilityAdvert, spec: JobSpec) -> list[ModelOffer]:
    return [
        offer
        for offer in advert.models
        if offer.pipeline == spec.pipeline.value and (not spec.model_id or offer.model_id == spec.model_id)
    ]


def _best_offer(offers: Sequence[ModelOffer]) -> ModelOffer:
    # The model router: warm first, then the fastest measured (a peer routes "" the same way).
    return max(offers, key=lambda o: (o.warm, o.speed_mpx_steps_per_s, o.model_id))


def _merit(candidate: Candidate) -> float:
    """Expected throughput share per credit: higher is better."""
    waiting = 1 + candidate.queue_depth
    return candidate.speed_mpx_steps_per_s / waiting / (1 + candidate.price)


def rank_candidates(
    adverts: Iterable[CapabilityAdvert],
    spec: JobSpec,
    *,
    max_price: int,
    rng: random.Random,
    prefer: Sequence[str] = (),
    avoid: Sequence[str] = (),
    explore_share: float = DEFAULT_EXPLORE_SHARE,
) -> list[Candidate]:
    """Peers able to run ``spec`` within ``max_price``, best first (see the module docstring)."""
    if not 0.0 <= explore_share <= 1.0:
        raise ValueError(f"explore_share must be in [0, 1], got {explore_share}")
    preferred, avoided = set(prefer), set(avoid)
    candidates: list[Candidate] = []
    for advert in adverts:
        if advert.peer_id in avoided:
            continue
        offers = _offers_for(advert, spec)
        if not offers:
            continue
        offer = _best_offer(offers)
        price = job_price(spec, offer.price_per_mpx_step)
        if price > max_price:
            continue
        if advert.queue_capacity and advert.queue_depth >= advert.queue_capacity:
            continue  # full when it last advertised: it would only refuse us
        candidates.append(
            Candidate(
                peer_id=advert.peer_id,
                addrs=advert.listen_addrs,
                model_id=offer.model_id,
                warm=offer.warm,
                speed_mpx_steps_per_s=offer.speed_mpx_steps_per_s,
                price=price,
                queue_depth=advert.queue_depth,
                queue_capacity=advert.queue_capacity,
                preferred=advert.peer_id in preferred,
            )
        )
    # peer_id breaks ties so equal merits give one order on every run
    candidates.sort(key=lambda c: (not c.preferred, not c.warm, -_merit(c), c.price, c.peer_id))
    if len(candidates) > 1 and not candidates[0].preferred and rng.random() < explore_share:
        pick = rng.randrange(1, len(candidates))
        candidates.insert(0, candidates.pop(pick))
    return candidates


def describe_offers(adverts: Iterable[CapabilityAdvert]) -> list[str]:
    """What the network offers, for "no candidates" errors: sorted ``pipeline model_id`` lines."""
    return sorted({f"{offer.pipeline} {offer.model_id}" for advert in adverts for offer in advert.models})


__all__ = [
    "DEFAULT_EXPLORE_SHARE",
    "Candidate",
    "describe_offers",
    "job_mpx_steps",
    "job_price",
    "rank_candidates",
    "work_is_known",
]
