"""Inference pipelines behind one adapter contract (see ``lpnode.models.base``).

What the rest of lpnode uses:

* ``registry.resolve(name, weights_dir)`` → an unloaded :class:`ModelAdapter`;
  ``registry.list_models(weights_dir)`` for ``lpnode models`` and adverts.
* ``adapter.load(device, dtype)`` / ``unload()`` / ``footprint()`` / ``weights_sha256()``.
* ``adapter.spec.build_request(kind, **params)`` → a frozen request;
  ``adapter.run(request, cancel=..., progress=...)`` → :class:`ImageOutput` or :class:`VideoOutput`;
  ``batch_key`` + ``run_batch`` for compatible requests. ``run`` is ``finish(generate(...))``: the
  device stage returns :class:`RawImage` / :class:`RawVideo` pixels, the output stage encodes them.
* The error tree rooted at :class:`ModelError` (``lpnode.models.errors``).
* ``open_model_pool(PoolConfig(...))`` → the warm pool (``lpnode.models.pool``):
  ``await pool.run(model, request, progress=...)``, ``pool.status()``, ``model_offers(...)``.

Pipeline modules (``sd``, ``svd``, ``upscale``, ``interpolate``) import diffusers
and are loaded only when the registry first needs them.
"""

from .base import (
    CancelToken,
    FrameInterpolationRequest,
    ImageToImageRequest,
    ImageToVideoRequest,
    Limits,
    ModelAdapter,
    ModelSpec,
    Output,
    PipelineKind,
    Preset,
    RawOutput,
    Request,
    StepProgress,
    TextToImageRequest,
    UpscaleRequest,
)
from .errors import (
    Cancelled,
    InferenceFailed,
    InsufficientVram,
    ModelError,
    ModelLoadError,
    NotLoaded,
    OutOfMemory,
    ParameterError,
    PoolBusy,
    PoolClosed,
    PoolError,
    UnknownModel,
    UnsupportedPipeline,
    WeightsMissing,
)
from .outputs import ImageOutput, RawImage, RawVideo, VideoOutput
from .pool import ModelPool, ModelStatus, PoolConfig, model_offers, open_model_pool

__all__ = [
    "CancelToken",
    "Cancelled",
    "FrameInterpolationRequest",
    "ImageOutput",
    "ImageToImageRequest",
    "ImageToVideoRequest",
    "InferenceFailed",
    "InsufficientVram",
    "Limits",
    "ModelAdapter",
    "ModelError",
    "ModelLoadError",
    "ModelPool",
    "ModelSpec",
    "ModelStatus",
    "NotLoaded",
    "OutOfMemory",
    "Output",
    "ParameterError",
    "PipelineKind",
    "PoolBusy",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "Preset",
    "RawImage",
    "RawOutput",
    "RawVideo",
    "Request",
    "StepProgress",
    "TextToImageRequest",
    "UnknownModel",
    "UnsupportedPipeline",
    "UpscaleRequest",
    "VideoOutput",
    "WeightsMissing",
    "model_offers",
    "open_model_pool",
]
