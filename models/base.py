"""The adapter contract every lpnode pipeline follows.

A *model adapter* wraps one set of weights (one :class:`ModelSpec`) and serves
one or more :class:`PipelineKind` s. It has the shape of a diffusers pipeline
(``pipelines/flux/pipeline_flux.py``): check inputs → prepare → numbered stages
→ an output dataclass. What the pool and the node rely on:

Lifecycle (the warm pool drives this; nothing here is async)::

    adapter = registry.resolve("tiny-sdxl", weights_dir)   # cheap: no weights touched yet
    adapter.spec.vram_bytes                                # estimate, to plan the budget
    adapter.load("cuda:0", torch.float16)                  # WeightsMissing / ModelLoadError
    adapter.footprint()                                    # measured bytes on the device
    adapter.unload()                                       # frees device memory; load() again later

Running (call from a worker thread: ``await trio.to_thread.run_sync(...)``)::

    request = adapter.spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a cat", seed=7)
    adapter.check_inputs(request)          # ParameterError, no device work; run() repeats it
    output = adapter.run(request, cancel=token, progress=callback)   # ImageOutput / VideoOutput

``run`` is two stages, which the pool runs apart so the device never waits for a PNG encoder::

    raw = adapter.generate(request, cancel=token, progress=callback)  # device stage: RawImage / RawVideo
    output = adapter.finish(raw)                                        # output stage: encode, hash, fingerprint

Contract details an adapter implementer must keep:

* **Requests are frozen dataclasses** (:class:`TextToImageRequest`, ...). Their
  ``__post_init__`` rejects values that no model accepts; :meth:`ModelAdapter.check_inputs`
  rejects values this model does not accept (``spec.limits``). Both raise
  :class:`~lpnode.models.errors.ParameterError` naming field, value and allowed range.
  Bulky inputs (images, videos) travel as encoded bytes (PNG/JPEG/MP4) so a
  request is exactly what went over the wire and what the receipt hashes.
* **Determinism.** All noise comes from ``make_generator(request.seed)``, a
  ``torch.Generator`` *on the CPU*: CPU draws are identical on every machine,
  whereas CUDA generators differ between GPU models. Latents are drawn on the
  CPU and then moved to the device (diffusers' ``randn_tensor`` does this when
  handed a CPU generator). Never touch the global RNG.
* **Cancellation** is cooperative: the adapter calls ``cancel.raise_if_cancelled()``
  between steps (denoising steps, tiles, frames) and it raises
  :class:`~lpnode.models.errors.Cancelled`. ``progress`` is called with a
  :class:`StepProgress` after each step, from the worker thread.
* **Batching.** ``batch_key(request)`` returns a hashable key or ``None`` (never
  batch). Requests with equal keys may go to ``run_batch`` together; each keeps
  its own seed and gets the same output as when run alone, within float
  tolerance (not bit-exactly: batched kernels may sum in another order).
  ``run_batch`` takes one cancel token for the whole batch: the pool should pass
  ``CancelToken.all_of(tokens)`` and drop the outputs of jobs cancelled on their own.
* **Stages.** ``_generate`` returns raw pixels (:class:`RawImage` / :class:`RawVideo`,
  uint8) and never encodes: whatever it does runs while the pool holds the device.
  Its ``timings_ms`` name the device-stage steps; ``generate_batch`` adds ``"device"``
  (wall ms of the whole device stage of the batch) and ``finish`` adds ``"encode"``.
  ``finish`` must stay thread-safe and device-free: the pool runs several at once.
* **Errors.** Device OOM surfaces as :class:`~lpnode.models.errors.OutOfMemory`
  (the adapter stays usable); everything deliberate derives from ``ModelError``.
* Adapters never read ``os.environ`` and never download: real presets load with
  ``local_files_only=True`` from the folder given at construction.

To write a new adapter: subclass :class:`ModelAdapter`, implement ``_load``,
``_modules``, ``_compute_weights_sha256``, ``_generate`` (and ``batch_key`` if it
batches), optionally extend ``check_inputs``; expose its presets as a module-level
``PRESETS: tuple[Preset, ...]`` and add the module to ``registry._PRESET_MODULES``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from ._placement import cache_placement
from ._requests import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    REQUEST_TYPES,
    FrameInterpolationRequest,
    ImageToImageRequest,
    ImageToVideoRequest,
    PipelineKind,
    Request,
    TextToImageRequest,
    UpscaleRequest,
    check_float,
    check_int,
    check_multiple,
)
from .errors import Cancelled, NotLoaded, OutOfMemory, ParameterError, UnsupportedPipeline
from .outputs import ImageOutput, RawImage, RawOutput, RawVideo, VideoOutput, finish_output

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "NEVER_CANCELLED",
    "REQUEST_TYPES",
    "CancelToken",
    "Footprint",
    "FrameInterpolationRequest",
    "ImageToImageRequest",
    "ImageToVideoRequest",
    "Limits",
    "ModelAdapter",
    "ModelSpec",
    "Output",
    "PipelineKind",
    "Preset",
    "ProgressCallback",
    "RawImage",
    "RawOutput",
    "RawVideo",
    "Request",
    "StageTimer",
    "StepProgress",
    "TextToImageRequest",
    "UpscaleRequest",
    "check_float",
    "check_int",
    "check_multiple",
    "check_output_size",
    "check_video_output",
    "make_generator",
    "to_uint8_rgb",
]

Output: TypeAlias = ImageOutput | VideoOutput

# --- model description ---------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one model accepts; checked by ``ModelAdapter.check_inputs`` before any device work."""

    max_pixels: int  # width × height of one output image or frame
    max_side: int = 4096  # pixels, either side of the output
    size_multiple: int = 8  # output width and height must be multiples (VAE downsampling)
    max_steps: int = 50  # num_inference_steps
    max_frames: int = 1  # output frames (video pipelines), input frames × multiplier for interpolation
    # Output pixels of one job over all its frames; 0 = max_pixels × max_frames. Upscaling a video
    # keeps every output frame in memory until it is encoded, and its frames may each be as large as an image.
    max_total_pixels: int = 0
    max_batch: int = 1  # requests per run_batch call
    scales: tuple[int, ...] = ()  # allowed upscale factors / interpolation multipliers


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a preset without touching its weights."""

    name: str  # preset name used in config and the CLI, e.g. "tiny-sdxl"
    model_id: str  # advertised model id, e.g. "stabilityai/sdxl-turbo"
    family: str  # architecture family, the reputation store's grouping: "sdxl", "svd", "rrdbnet", "rife"
    pipelines: frozenset[PipelineKind]
    limits: Limits
    vram_bytes: int  # estimated peak device bytes at fp16 for one max-size request
    tiny: bool  # random weights from a fixed seed: for tests and simulations, not for sale
    defaults: Mapping[str, Any] = field(default_factory=dict)  # per-field defaults over the request's
    weights_subdir: str | None = None  # real presets: folder under weights_dir
    source: str = ""  # where real weights come from (Hugging Face repo id), for WeightsMissing

    def build_request(self, kind: PipelineKind, **params: Any) -> Request:
        """A request of ``kind`` with this model's defaults for every field not given.

        Raises UnsupportedPipeline, or ParameterError for an unknown field or a bad value.
        """
        if kind not in self.pipelines:
            raise UnsupportedPipeline(f"{self.name} does not serve {kind}")
        cls = REQUEST_TYPES[kind]
        names = {f.name for f in dataclasses.fields(cls)}
        for key in params:
            if key not in names:
                raise ParameterError(key, params[key], f"one of the {kind} fields: {', '.join(sorted(names))}")
        merged = {k: v for k, v in self.defaults.items() if k in names} | params
        try:
            return cls(**merged)
        except TypeError as exc:  # a required field (prompt, image, seed) was not given
            raise ParameterError("request", sorted(params), f"all required {kind} fields ({exc})") from exc


# --- run-time plumbing ---------------------------------------------------------------------


@dataclass(frozen=True)
class StepProgress:
    stage: str  # "denoise", "decode", "tile", ...
    step: int  # 1-based, steps completed
    total: int


ProgressCallback: TypeAlias = Callable[[StepProgress], None]


class CancelToken:
    """Thread-safe cancel flag: set from the event loop, checked by the worker between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled between steps")

    @staticmethod
    def all_of(tokens: Sequence[CancelToken]) -> CancelToken:
        """A token that reads as cancelled once every one of ``tokens`` is (for a batch)."""
        return _AllOf(tuple(tokens))


class _AllOf(CancelToken):
    def __init__(self, tokens: tuple[CancelToken, ...]) -> None:
        super().__init__()
        self._tokens = tokens

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (bool(self._tokens) and all(t.cancelled for t in self._tokens))


NEVER_CANCELLED = CancelToken()  # shared default; nobody calls cancel() on it


def make_generator(seed: int) -> torch.Generator:
    """The only source of randomness for a request: a CPU generator, identical on every machine."""
    return torch.Generator(device="cpu").manual_seed(seed)


def to_uint8_rgb(images: torch.Tensor) -> npt.NDArray[np.uint8]:
    """``(..., 3, H, W)`` floats in [0, 1] to ``(..., H, W, 3)`` uint8 on the CPU.

    Quantised on the tensor's device, so only a quarter of the bytes cross to the
    host and the CPU does no per-pixel work inside the device stage. The arithmetic
    is diffusers' ``numpy_to_pil`` (float32 ``x * 255``, round half to even), which
    IEEE float32 makes exact on any device: the pixels equal ``output_type="pil"``'s.
    """
    quantised = (images.float() * 255.0).round().clamp(0.0, 255.0).to(torch.uint8)
    return quantised.movedim(-3, -1).contiguous().cpu().numpy()


@dataclass(frozen=True)
class Footprint:
    """Measured device memory, for the pool's VRAM budget."""

    weights_bytes: int  # parameters + buffers of the loaded modules
    peak_run_bytes: int | None  # peak allocated during the last run (CUDA only; None elsewhere)


@dataclass(frozen=True)
class Preset:
    """A named spec and the adapter class that serves it; modules export ``PRESETS``."""

    spec: ModelSpec
    factory: Callable[[ModelSpec, Path | None], ModelAdapter]


# --- the adapter ---------------------------------------------------------------------------


class ModelAdapter(ABC):
    """One model's weights and the pipelines over them. Not thread-safe: one run at a time."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None) -> None:
        self.spec = spec
        self.weights_dir = weights_dir
        self.device: torch.device | None = None  # None while unloaded
        self.dtype: torch.dtype = torch.float32
        self._weights_sha256: str | None = None
        self._peak_run_bytes: int | None = None

    # lifecycle -----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.device is not None

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        """Put the weights on ``device``. dtype defaults to fp16 on CUDA and fp32 elsewhere.

        Raises WeightsMissing (real preset, files absent) or ModelLoadError. Idempotent.
        """
        dev = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if dev.type == "cuda" else torch.float32
        if self.loaded and self.device == dev and self.dtype == dtype:
            return
        self.unload()
        with _map_oom():
            self._load(dev, dtype)
        for module in self._modules().values():
            cache_placement(module)  # diffusers walks every submodule for .device/.dtype (models/_placement.py)
        self.device, self.dtype = dev, dtype

    def unload(self) -> None:
        """Drop the weights so their device memory can be reused. Safe to call twice."""
        if not self.loaded:
            return
        was_cuda = self.device is not None and self.device.type == "cuda"
        self._unload()
        self.device = None
        if was_cuda:
            torch.cuda.empty_cache()

    def footprint(self) -> Footprint:
        """Bytes the loaded modules hold now, and the peak of the last run on CUDA."""
        if not self.loaded:
            return Footprint(0, None)
        total = 0
        for module in self._modules().values():
            for tensor in [*module.parameters(), *module.buffers()]:
                total += tensor.numel() * tensor.element_size()
        return Footprint(total, self._peak_run_bytes)

    def param_count(self) -> int:
        """Parameters over every module (needs the weights loaded, or a tiny preset)."""
        return sum(p.numel() for m in self._modules().values() for p in m.parameters())

    def weights_sha256(self) -> str:
        """Hex sha256 identifying the weights; advertised and signed into receipts. Cached."""
        if self._weights_sha256 is None:
            self._weights_sha256 = self._compute_weights_sha256()
        return self._weights_sha256

    def runtime_info(self) -> dict[str, str]:
        """What produced an output, for receipts: device name, dtype, library versions."""
        import diffusers
        import transformers

        info = {"torch": torch.__version__, "diffusers": diffusers.__version__}
        info["transformers"] = transformers.__version__
        info["dtype"] = str(self.dtype).removeprefix("torch.")
        if self.device is not None and self.device.type == "cuda":
            info["device"] = torch.cuda.get_device_name(self.device)
        else:
            info["device"] = str(self.device or "unloaded")
        return info

    # running -------------------------------------------------------------------------------

    def check_inputs(self, request: Request) -> None:
        """Model-specific bounds; raises ParameterError or UnsupportedPipeline. No device work.

        Subclasses extend this (call super) for checks that need the decoded input.
        """
        if request.kind not in self.spec.pipelines:
            raise UnsupportedPipeline(f"{self.spec.name} does not serve {request.kind}")
        lim = self.spec.limits
        if isinstance(request, TextToImageRequest | ImageToVideoRequest):
            check_output_size(lim, request.width, request.height)
        if isinstance(request, TextToImageRequest | ImageToImageRequest | ImageToVideoRequest):
            check_int("num_inference_steps", request.num_inference_steps, 1, lim.max_steps)
        if isinstance(request, ImageToVideoRequest):
            check_int("num_frames", request.num_frames, 2, lim.max_frames)
        if isinstance(request, UpscaleRequest) and request.scale not in lim.scales:
            raise ParameterError("scale", request.scale, f"one of {list(lim.scales)}")
        if isinstance(request, FrameInterpolationRequest) and request.multiplier not in lim.scales:
            raise ParameterError("multiplier", request.multiplier, f"one of {list(lim.scales)}")

    def batch_key(self, request: Request) -> Hashable | None:
        """Requests with equal non-None keys may share one ``run_batch`` call. Default: never."""
        return None

    def run(
        self,
        request: Request,
        *,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> Output:
        """Both stages of one request. Raises ParameterError, NotLoaded, Cancelled, OutOfMemory."""
        return self.finish(self.generate(request, cancel=cancel, progress=progress))

    def run_batch(
        self,
        requests: Sequence[Request],
        *,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[Output]:
        """Both stages of a batch (see ``generate_batch``); outputs in request order."""
        return [self.finish(raw) for raw in self.generate_batch(requests, cancel=cancel, progress=progress)]

    def generate(
        self,
        request: Request,
        *,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> RawOutput:
        """The device stage of one request: raw pixels, not yet encoded."""
        return self.generate_batch([request], cancel=cancel, progress=progress)[0]

    def generate_batch(
        self,
        requests: Sequence[Request],
        *,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[RawOutput]:
        """The device stage of requests that share one batch key; raw outputs in request order.

        A single request, or requests whose key is None, need no shared key (they
        run one after another). Mixing keys is a caller bug (ValueError).
        """
        if not requests:
            return []
        for request in requests:
            self.check_inputs(request)
        if len(requests) > self.spec.limits.max_batch:
            raise ParameterError("batch", len(requests), f"at most {self.spec.limits.max_batch} requests")
        keys = {self.batch_key(r) for r in requests}
        if len(requests) > 1 and (None in keys or len(keys) > 1):
            if None not in keys:
                raise ValueError(f"generate_batch got requests with different batch keys: {keys}")
            return [self.generate(r, cancel=cancel, progress=progress) for r in requests]
        if not self.loaded:
            raise NotLoaded(f"{self.spec.name} is not loaded; call load() first")
        token = cancel or NEVER_CANCELLED
        token.raise_if_cancelled()
        cuda = self.device is not None and self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with _map_oom(), torch.inference_mode():
            raws = self._generate(requests, token, progress or _no_progress)
        device_ms = (time.perf_counter() - start) * 1000.0
        if cuda:
            self._peak_run_bytes = torch.cuda.max_memory_allocated(self.device)
        for raw in raws:
            raw.timings_ms["device"] = device_ms
        return raws

    def finish(self, raw: RawOutput) -> Output:
        """The output stage: encode, hash and fingerprint. Thread-safe; touches no device or model state."""
        return finish_output(raw)

    # for subclasses ------------------------------------------------------------------------

    @abstractmethod
    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        """Build or read the modules and move them to ``device``/``dtype``."""

    @abstractmethod
    def _unload(self) -> None:
        """Drop every reference to device tensors."""

    @abstractmethod
    def _modules(self) -> Mapping[str, torch.nn.Module]:
        """The loaded torch modules by component name (for footprint and param_count)."""

    @abstractmethod
    def _compute_weights_sha256(self) -> str:
        """See ``lpnode.models.weights``: file hash for real presets, state-dict hash for tiny ones."""

    @abstractmethod
    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        """The numbered device stages, ending in raw pixels (never encoded here: the device is held).

        Inputs are checked, the model is loaded, inference_mode is on.
        """


def check_output_size(limits: Limits, width: int, height: int) -> None:
    """Output size against a model's limits (shared by adapters whose output size is derived)."""
    check_int("width", width, limits.size_multiple, limits.max_side)
    check_int("height", height, limits.size_multiple, limits.max_side)
    check_multiple("width", width, limits.size_multiple)
    check_multiple("height", height, limits.size_multiple)
    if width * height > limits.max_pixels:
        raise ParameterError("width*height", width * height, f"at most {limits.max_pixels} pixels")


def check_video_output(limits: Limits, width: int, height: int, num_frames: int) -> None:
    """A video output's frame size, frame count and total pixels against a model's limits."""
    check_output_size(limits, width, height)
    check_int("frames", num_frames, 1, limits.max_frames)
    total = limits.max_total_pixels or limits.max_pixels * limits.max_frames
    if width * height * num_frames > total:
        raise ParameterError("frames*width*height", width * height * num_frames, f"at most {total} output pixels")


def _no_progress(_: StepProgress) -> None:
    return None


@contextlib.contextmanager
def _map_oom() -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError as exc:
        # The failed step's activations are garbage now; release them so the next job fits.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "device out of memory") from exc


class StageTimer:
    """Wall time per stage in ms, for the ``timings_ms`` of outputs (``with timer.stage("x"):``)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0
