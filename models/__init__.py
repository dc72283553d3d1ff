"""Inference pipelines behind one adapter contract (see ``lpnode.models.base``).

What the rest of lpnode uses:

* ``registry.resolve(name, weights_dir)`` → an unloaded :class:`ModelAdapter`;
  ``registry.list_models(weights_dir)`` for ``lpnode models`` and adverts.
* ``adapter.load(device, dtype)`` / ``unload()`` / ``footprint()`` / ``weights_sha256()``.
* ``adapter.spec.build_request(kind, **params)`` → a frozen request;
  ``adapter.run(request, cancel=..., progress=...)`` → :class:`ImageOutput` or :class:`VideoOutput`;
  ``batch_key`` + ``run_batch`` for compatible requests.
* The error tree rooted at :class:`ModelError` (``lpnode.models.errors``).

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
    Request,
    StepProgress,
    TextToImageRequest,
    UpscaleRequest,
)
from .errors import (
    Cancelled,
    ModelError,
    ModelLoadError,
    NotLoaded,
    OutOfMemory,
    ParameterError,
    UnknownModel,
    UnsupportedPipeline,
    WeightsMissing,
)
from .outputs import ImageOutput, VideoOutput

__all__ = [
    "CancelToken",
    "Cancelled",
    "FrameInterpolationRequest",
    "ImageOutput",
    "ImageToImageRequest",
    "ImageToVideoRequest",
    "Limits",
    "ModelAdapter",
    "ModelError",
    "ModelLoadError",
    "ModelSpec",
    "NotLoaded",
    "OutOfMemory",
    "Output",
    "ParameterError",
    "PipelineKind",
    "Preset",
    "Request",
    "StepProgress",
    "TextToImageRequest",
    "UnknownModel",
    "UnsupportedPipeline",
    "UpscaleRequest",
    "VideoOutput",
    "WeightsMissing",
]
