"""What the pool reports per model: rows for ``lpnode models`` and the advert's ``ModelOffer`` s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lpnode.protocol.advert import ModelLimits, ModelOffer

from .base import ImageToImageRequest, PipelineKind, RawOutput, Request
from .outputs import RawImage


@dataclass(frozen=True)
class ModelStatus:
    """One row of ``lpnode models`` / one model of the advert."""

    name: str  # preset name
    model_id: str  # advertised id, e.g. "stabilityai/sdxl-turbo"
    pipelines: tuple[PipelineKind, ...]
    weights_sha256: str  # hex; "" until hashed (or when the weights are missing)
    warm: bool  # loaded on the device now
    pinned: bool
    loading: bool
    compiled: tuple[str, ...]  # components running compiled; () = eager
    vram_estimate_bytes: int  # from the spec, before any load
    vram_measured_bytes: int | None  # what the pool charges after a load (None: never loaded)
    speed_mpx_steps_per_s: float  # marginal, fitted on recent real runs (models.speed); 0.0 = not measured yet
    queued: int  # jobs waiting
    running: int  # batches on the device now
    problem: str  # last load error ("" if none)
    overhead_s: float = 0.0  # fixed seconds per run beside the work (models.speed); 0.0 = not told apart


def model_offers(rows: Sequence[ModelStatus], price_per_mpx_step: int) -> tuple[ModelOffer, ...]:
    """Advert entries: one per (model, pipeline), for the models whose weights are hashed.

    A receipt binds the weights' hash, so a model without one cannot take a job: one whose
    weights are missing never will, and offering it sent every requester to a refusal (QA).
    """
    return tuple(
        ModelOffer(
            pipeline=str(kind),
            model_id=row.model_id,
            weights_sha256=row.weights_sha256,
            warm=row.warm,
            speed_mpx_steps_per_s=row.speed_mpx_steps_per_s,
            price_per_mpx_step=price_per_mpx_step,
            limits=advertised_limits(row.name),
        )
        for row in rows
        if len(row.weights_sha256) == 64
        for kind in row.pipelines
    )


def advertised_limits(preset: str) -> ModelLimits | None:
    """The advert's limits of ``preset``; None for a model the registry does not know (e.g. simulated)."""
    from .errors import UnknownModel
    from .registry import spec  # imported here: the registry imports the adapters, which import this module

    try:
        lim = spec(preset).limits
    except UnknownModel:
        return None
    total = lim.max_total_pixels or lim.max_pixels * lim.max_frames
    return ModelLimits(lim.max_pixels, lim.max_side, lim.max_steps, lim.max_frames, lim.max_batch, total)


def mpx_steps(request: Request, raw: RawOutput) -> float:
    """Megapixel-steps of work in one output (AI Horde's unit): pixels × frames × denoising steps."""
    steps = getattr(request, "num_inference_steps", 1)
    if isinstance(request, ImageToImageRequest):
        steps = max(1, int(steps * request.strength))
    frames = 1 if isinstance(raw, RawImage) else raw.num_frames
    return raw.width * raw.height * frames * steps / 1e6
