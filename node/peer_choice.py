"""Choosing which peers to ask for a job: pure ranking over the directory's verified adverts.

No I/O and no clock: the requester passes the adverts it knows, a seeded
``random.Random`` and (optionally) a reputation view, so a ranking is
reproducible in tests and simulations.

Who is a candidate at all (every priority):

* the peer offers the job's pipeline, and its model when the spec names one;
* the job's price at the peer's advertised rate is within ``max_price``;
* its queue was not full when it last advertised (it would only refuse us);
* it is not in ``avoid``, not banned, and scores at least ``min_reputation``;
* with ``min_vram_bytes > 0``, it advertises a GPU with at least that much
  total VRAM (CPU devices advertise 0, so CPU-only peers drop out).

What the ranking then estimates for each (peer, model) pair:

* ``expected_s``, the time to a result there: the queued jobs ahead of us
  (each taken as long as ours), a cold-load penalty (:data:`COLD_LOAD_S`) if
  the model is not warm, and our own work in megapixel-steps over the measured
  speed. An unmeasured model is taken at :data:`UNMEASURED_RUN_S`, the same
  guess a worker quotes, so a newcomer is neither favoured nor shut out
  (exploration gives it work to be measured on).
* ``reputation``, 0..1 from the :class:`ReputationView` (0.5, neutral, when
  there is none), read as the chance that a try ends in a verified result, so
  the expected time to a *verified* result is ``expected_s / reputation``.

and the requester's :class:`Priority` decides the order:

* ``speed``: least expected time to a verified result, then cheaper.
* ``cost``: cheapest, then least expected time to a verified result.
* ``trust``: highest reputation (in steps of 0.01, so noise in the score does
  not override a large speed difference), then least expected time, then cheaper.

``prefer`` peers come first whatever the priority: the user named them. With
an empty ``model_id`` each (peer, model) of the pipeline is ranked and a peer
keeps its best: the model router, which picks per priority (the cheapest model
for ``cost``) and binds the choice into the job (``Candidate.model_id``). The
router only picks among models that at least two of the candidates serve with
the same weights, when there are any: a model one peer alone serves (or one any
peer can name, advertising it) can never be spot-checked, so it gets only the
jobs that name it, or that name its peer in ``prefer`` (QA3 Q2).
Last, exploration: with probability ``explore_share`` one candidate from the
rest of the list is moved to the front, so newcomers get work and can build a
record (DESIGN.md, step 3); never in front of a preferred peer.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lpnode.protocol.advert import CapabilityAdvert, ModelLimits, ModelOffer
from lpnode.protocol.jobs import InputShape
from lpnode.protocol.jobspec import FrameInterpolationParams, ImageToImageParams, JobSpec, UpscaleParams

DEFAULT_EXPLORE_SHARE = 0.05  # one job in twenty tries a peer the ranking would not have picked first
UNMEASURED_SPEED = 0.0
UNMEASURED_RUN_S = 30.0  # run time assumed where no speed is measured (a worker's unmeasured ETA is the same)
COLD_LOAD_S = 30.0  # loading a cold model: seconds for a tiny one, a minute for SDXL from disk
NEUTRAL_REPUTATION = 0.5
_MIN_SUCCESS = 0.05  # floor of the success chance, so a 0 score gives a long expected time, not a division by 0


class Priority(StrEnum):
    """What the requester optimises; see the module docstring for the exact order each gives."""

    COST = "cost"
    SPEED = "speed"
    TRUST = "trust"


class ReputationView(Protocol):
    """What the ranking reads from the reputation store (the reputation issue implements it).

    ``model_family`` is the advertised model id: adverts carry no architecture
    family, so an implementation that groups models (e.g. "sdxl") maps ids itself.
    """

    def score(self, peer_id: str, model_family: str) -> float:
        """0..1; 0.5 = unknown or neutral."""
        ...

    def is_banned(self, peer_id: str) -> bool: ...


@dataclass(frozen=True)
class Candidate:
    """One (peer, model) able to run the job, with what the ranking used."""

    peer_id: str
    addrs: tuple[str, ...]  # dial hints from the advert
    model_id: str  # the model this peer would run (the spec's, or the router's choice for the pipeline)
    warm: bool
    speed_mpx_steps_per_s: float  # 0.0 = not measured yet
    price: int  # micro-credits, estimated from the advert's price per mpx-step
    queue_depth: int
    queue_capacity: int
    preferred: bool
    expected_s: float = 0.0  # seconds to a result there: queue + cold load + our work / speed
    reputation: float = NEUTRAL_REPUTATION  # 0..1, the reputation view's score
    job_features: tuple[str, ...] = ()  # the advert's job-stream extensions


def job_mpx_steps(spec: JobSpec, shape: InputShape | None = None) -> float:
    """Megapixel-steps of work the spec asks for (AI Horde's unit, as priced in adverts).

    The same count a worker's pool measures its speed in (``lpnode.models._status.mpx_steps``):
    output pixels × output frames × denoising steps, where image-to-image runs
    ``int(steps × strength)`` of its steps and the single-pass pipelines count one step.
    Pipelines whose output size depends on an input need that input's size: an upscale
    declares it in its spec, image-to-image and frame interpolation in the QuoteRequest's
    ``input_shape`` (``input_probe.input_shape``). Without it such a job is estimated at one
    megapixel-step (an older requester), and :func:`work_is_known` says so.
    """
    params = spec.params
    if isinstance(params, UpscaleParams) and params.declared:
        return params.output_pixels() / 1e6
    if isinstance(params, ImageToImageParams) and shape is not None:
        steps = max(1, int(params.num_inference_steps * params.strength))
        return shape.width * shape.height * steps / 1e6
    if isinstance(params, FrameInterpolationParams) and shape is not None:
        return shape.width * shape.height * interpolated_frames(shape.frames, params.multiplier) / 1e6
    width = getattr(params, "width", 0)
    height = getattr(params, "height", 0)
    if not (width and height):
        return 1.0
    steps = getattr(params, "num_inference_steps", 1)
    frames = getattr(params, "num_frames", 1)
    return width * height * frames * steps / 1e6


def interpolated_frames(input_frames: int, multiplier: int) -> int:
    """Frames out of an interpolation: ``multiplier - 1`` new ones between each pair of input frames."""
    return (input_frames - 1) * multiplier + 1


def work_is_known(spec: JobSpec, shape: InputShape | None = None) -> bool:
    """Whether :func:`job_mpx_steps` is the real work, not the one-mpx-step stand-in for input-sized jobs."""
    params = spec.params
    if isinstance(params, UpscaleParams):
        return params.declared
    if isinstance(params, ImageToImageParams | FrameInterpolationParams):
        return shape is not None
    return bool(getattr(params, "width", 0) and getattr(params, "height", 0))


def job_price(spec: JobSpec, price_per_mpx_step: int, shape: InputShape | None = None) -> int:
    """Micro-credits for the job at ``price_per_mpx_step``; the worker quotes the same formula."""
    return math.ceil(job_mpx_steps(spec, shape) * price_per_mpx_step)


def expected_seconds(work_mpx_steps: float, *, speed: float, warm: bool, queue_depth: int) -> float:
    """Seconds until a job of ``work_mpx_steps`` is done on a peer (see the module docstring)."""
    run_s = work_mpx_steps / speed if speed > 0 else UNMEASURED_RUN_S
    return queue_depth * run_s + (0.0 if warm else COLD_LOAD_S) + run_s


def has_vram(advert: CapabilityAdvert, min_vram_bytes: int) -> bool:
    """Whether ``advert`` shows one device with at least ``min_vram_bytes`` of total VRAM (0: any peer)."""
    if min_vram_bytes <= 0:
        return True
    return any(gpu.kind != "cpu" and gpu.vram_total_bytes >= min_vram_bytes for gpu in advert.gpus)


def limits_refusal(limits: ModelLimits | None, spec: JobSpec, shape: InputShape | None = None) -> str:
    """Why an offer with ``limits`` cannot take ``spec`` ("" if it can, or if it advertises no limits).

    What the spec's parameters say (size, steps, frames), and for the pipelines whose output is
    sized by their input (image-to-image, frame interpolation), ``shape``: the input's size as the
    requester read it from the file's header.
    """
    if limits is None:
        return ""
    params = spec.params
    if isinstance(params, UpscaleParams):
        return _upscale_refusal(limits, params)
    if shape is not None and isinstance(params, ImageToImageParams | FrameInterpolationParams):
        reason = _input_refusal(limits, params, shape)
        if reason:
            return reason
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    if width is not None and height is not None:
        if max(width, height) > limits.max_side:
            return f"{width}×{height} exceeds its {limits.max_side}-pixel side"
        if width * height > limits.max_pixels:
            return f"{width}×{height} exceeds its {limits.max_pixels} pixels"
    steps = getattr(params, "num_inference_steps", None)
    if steps is not None and steps > limits.max_steps:
        return f"num_inference_steps {steps} exceeds its {limits.max_steps}"
    frames = getattr(params, "num_frames", None)
    if frames is not None and frames > limits.max_frames:
        return f"num_frames {frames} exceeds its {limits.max_frames}"
    if frames is not None and width is not None and height is not None:
        return _total_refusal(limits, width * height * frames, f"{frames} frames of {width}×{height}")
    return ""


def _total_refusal(limits: ModelLimits, pixels: int, what: str) -> str:
    """A video job's output pixels over all its frames against the offer's total ("" if they fit)."""
    if pixels > limits.total_pixels:
        return f"{what} ({pixels} pixels) exceed its {limits.total_pixels} output pixels per job"
    return ""


def _input_refusal(
    limits: ModelLimits, params: ImageToImageParams | FrameInterpolationParams, shape: InputShape
) -> str:
    """An input-sized job's output against ``limits``, told in what the user sent (the input file)."""
    what = f"input {'image' if isinstance(params, ImageToImageParams) else 'video'} {shape.width}×{shape.height}"
    if max(shape.width, shape.height) > limits.max_side:
        return f"{what} exceeds its {limits.max_side}-pixel side"
    if shape.width * shape.height > limits.max_pixels:
        return f"{what} exceeds its {limits.max_pixels} pixels"
    if isinstance(params, FrameInterpolationParams):
        frames = interpolated_frames(shape.frames, params.multiplier)
        if frames > limits.max_frames:
            return (
                f"{shape.frames} input frames × multiplier {params.multiplier} make {frames} frames, "
                f"more than its {limits.max_frames}"
            )
        size = f"{shape.width}×{shape.height}"
        return _total_refusal(limits, shape.width * shape.height * frames, f"{frames} frames of {size}")
    return ""


def _upscale_refusal(limits: ModelLimits, params: UpscaleParams) -> str:
    """An upscale's output against ``limits``, told in what the user sent: the input's size and the scale.

    The output size is derived, so naming it alone ("width=1024") points at a value nobody typed.
    An undeclared input (an older requester) is the worker's to check.
    """
    if not params.declared:
        return ""
    width, height = params.input_width * params.scale, params.input_height * params.scale
    output = f"output {width}×{height} (input {params.input_width}×{params.input_height} × scale {params.scale})"
    if max(width, height) > limits.max_side:
        return f"{output} exceeds its {limits.max_side}-pixel side"
    if width * height > limits.max_pixels:
        return f"{output} exceeds its {limits.max_pixels} pixels"
    if params.input_frames > limits.max_frames:
        return f"input of {params.input_frames} frames exceeds its {limits.max_frames}"
    if params.input_frames > 1:
        return _total_refusal(limits, params.output_pixels(), f"{output} × {params.input_frames} frames")
    return ""


def fit_offers(
    adverts: Sequence[CapabilityAdvert], spec: JobSpec, shape: InputShape | None = None
) -> tuple[list[CapabilityAdvert], list[str]]:
    """``adverts`` without the offers whose advertised limits refuse ``spec``, and why each was dropped.

    A requester asks only peers whose model can take the job; an offer without limits (an older
    node) is kept and asked as before. ``shape``: see :func:`limits_refusal`.
    """
    kept: list[CapabilityAdvert] = []
    dropped: list[str] = []
    for advert in adverts:
        models = []
        for offer in advert.models:
            matches = offer in _offers_for(advert, spec)
            reason = limits_refusal(offer.limits, spec, shape) if matches else ""
            if reason:
                dropped.append(f"{offer.model_id} on {advert.peer_id[-12:]}: {reason}")
            else:
                models.append(offer)
        kept.append(advert if len(models) == len(advert.models) else dataclasses.replace(advert, models=tuple(models)))
    return kept, dropped


def _offers_for(advert: CapabilityAdvert, spec: JobSpec) -> list[ModelOffer]:
    return [
        offer
        for offer in advert.models
        if offer.pipeline == spec.pipeline.value and (not spec.model_id or offer.model_id == spec.model_id)
    ]


def _checkable_models(pairs: Sequence[Candidate], weights: Mapping[tuple[str, str], str]) -> set[str]:
    """Model ids that two or more of the candidate peers serve with the same (known) weights."""
    servers: dict[tuple[str, str], set[str]] = {}
    for candidate in pairs:
        if sha := weights[candidate.peer_id, candidate.model_id]:
            servers.setdefault((candidate.model_id, sha), set()).add(candidate.peer_id)
    return {model_id for (model_id, _), peers in servers.items() if len(peers) >= 2}


def _order_key(candidate: Candidate, priority: Priority) -> tuple[object, ...]:
    success = max(candidate.reputation, _MIN_SUCCESS)
    to_verified_s = candidate.expected_s / success
    first = (not candidate.preferred,)
    last = (candidate.model_id, candidate.peer_id)  # ties give one order on every run
    if priority is Priority.COST:
        return (*first, candidate.price, to_verified_s, *last)
    if priority is Priority.TRUST:
        return (*first, -round(candidate.reputation, 2), candidate.expected_s, candidate.price, *last)
    return (*first, to_verified_s, candidate.price, *last)


def rank_candidates(
    adverts: Iterable[CapabilityAdvert],
    spec: JobSpec,
    *,
    max_price: int,
    rng: random.Random,
    prefer: Sequence[str] = (),
    avoid: Sequence[str] = (),
    explore_share: float = DEFAULT_EXPLORE_SHARE,
    priority: Priority = Priority.SPEED,
    min_vram_bytes: int = 0,
    reputation: ReputationView | None = None,
    min_reputation: float = 0.0,
    input_shape: InputShape | None = None,
    include_full: bool = False,
) -> list[Candidate]:
    """Peers able to run ``spec`` within ``max_price``, best first, one entry per peer (see the module docstring).

    ``input_shape``: the input's size, which prices image-to-image and frame interpolation
    (:func:`job_mpx_steps`); without it they are estimated at one megapixel-step.
    ``include_full``: also peers whose last advert showed their queue full (left out by default).
    """
    if not 0.0 <= explore_share <= 1.0:
        raise ValueError(f"explore_share must be in [0, 1], got {explore_share}")
    if not 0.0 <= min_reputation <= 1.0:
        raise ValueError(f"min_reputation must be in [0, 1], got {min_reputation}")
    priority = Priority(priority)
    preferred, avoided = set(prefer), set(avoid)
    work = job_mpx_steps(spec, input_shape)
    pairs: list[Candidate] = []
    weights: dict[tuple[str, str], str] = {}  # (peer, model) -> the weights its advert names
    for advert in adverts:
        if advert.peer_id in avoided or not has_vram(advert, min_vram_bytes):
            continue
        if not include_full and advert.queue_capacity and advert.queue_depth >= advert.queue_capacity:
            continue  # full when it last advertised: it would only refuse us
        if reputation is not None and reputation.is_banned(advert.peer_id):
            continue
        for offer in _offers_for(advert, spec):
            price = job_price(spec, offer.price_per_mpx_step, input_shape)
            if price > max_price:
                continue
            score = NEUTRAL_REPUTATION if reputation is None else reputation.score(advert.peer_id, offer.model_id)
            score = min(1.0, max(0.0, score))  # a view out of range must not turn the order upside down
            if score < min_reputation:
                continue
            pairs.append(
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
                    expected_s=expected_seconds(
                        work, speed=offer.speed_mpx_steps_per_s, warm=offer.warm, queue_depth=advert.queue_depth
                    ),
                    reputation=score,
                    job_features=advert.job_features,
                )
            )
            weights[advert.peer_id, offer.model_id] = offer.weights_sha256
    if not spec.model_id and (checkable := _checkable_models(pairs, weights)):
        # the router's choice must be one a spot check can compare (the module docstring)
        pairs = [c for c in pairs if c.model_id in checkable or c.preferred]
    pairs.sort(key=lambda c: _order_key(c, priority))
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for candidate in pairs:  # a peer keeps its best model: retries go to other peers
        if candidate.peer_id not in seen:
            seen.add(candidate.peer_id)
            candidates.append(candidate)
    if len(candidates) > 1 and not candidates[0].preferred and rng.random() < explore_share:
        pick = rng.randrange(1, len(candidates))
        candidates.insert(0, candidates.pop(pick))
    return candidates


def describe_offers(adverts: Iterable[CapabilityAdvert]) -> list[str]:
    """What the network offers, for "no candidates" errors: sorted ``pipeline model_id`` lines."""
    return sorted({f"{offer.pipeline} {offer.model_id}" for advert in adverts for offer in advert.models})


__all__ = [
    "COLD_LOAD_S",
    "DEFAULT_EXPLORE_SHARE",
    "NEUTRAL_REPUTATION",
    "UNMEASURED_RUN_S",
    "Candidate",
    "Priority",
    "ReputationView",
    "describe_offers",
    "expected_seconds",
    "fit_offers",
    "has_vram",
    "interpolated_frames",
    "job_mpx_steps",
    "job_price",
    "limits_refusal",
    "rank_candidates",
    "work_is_known",
]
