"""The compiled warm path: ``torch.compile`` of a warm model's hot modules, with a persistent cache.

On an H100 the SDXL-Turbo-size 512×512 one-step call took 182 ms eager and 40 ms
with ``mode="reduce-overhead"`` (CUDA graphs) in one run (DESIGN.md), but the
compilation took 147 s. Two things keep that from hurting a node:

* The inductor/FX/AOT caches go to a folder under the node's data dir
  (:func:`configure_compile_cache`), so a restart reads compiled kernels
  instead of building them again. CUDA graphs themselves cannot be cached;
  re-recording them takes seconds.
* Compilation happens during warm-up, on a synthetic request of the model's
  default shape, before the model is reported warm. Other shapes (another batch
  size, another resolution) run eager (:class:`ShapeGate`): compiling one on a
  job's path cost that job minutes (a first 256×256 tiny-sdxl job took 90 s on an
  H100 where the warm shape takes milliseconds), far past any deadline, and its
  time then skewed the model's measured speed. The gate is per module, not torch's
  process-wide ``eager_on_recompile`` stance: that stance compiles nothing at all,
  not even a warm-up's first graph (review).

What is compiled is chosen by diffusers component name: the denoiser
(``unet`` / ``transformer``) runs once per step and the VAE decoder once per
image, which is where the time goes; text and image encoders run once per request
with varying inputs and are left eager. If compiling or the warm-up run fails,
everything is put back to eager and a warning is logged: a slower node beats a
node that serves nothing.

CUDA graph trees are per thread, so every call of a compiled model must come
from the same thread; the pool runs each model on a thread of its own.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from .base import ModelAdapter, PipelineKind, Request
from .errors import ModelError

log = logging.getLogger(__name__)

CompileSetting = Literal["auto", "off"]

DENOISER_COMPONENTS = ("unet", "transformer")
DECODER_COMPONENTS = ("vae",)
# cudagraph trees warm up on the first call, record on the second and replay from the third.
WARMUP_CALLS = 3


def configure_compile_cache(cache_dir: Path) -> None:
    """Send inductor's caches (FX graphs, AOT autograd, Triton kernels, autotuning) to ``cache_dir``.

    Process-wide: inductor reads ``TORCHINDUCTOR_CACHE_DIR`` each time it resolves its
    cache folder (``torch._inductor.runtime.cache_dir_utils.cache_dir``) and puts the
    Triton cache under it unless ``TRITON_CACHE_DIR`` is set, so setting the variable
    once before the first compilation is the documented way to move all of them. The
    pool calls this when it opens; adapters never touch the environment.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    import torch._inductor.config as inductor_config

    # On by default in current torch; set so an older default cannot silently skip the cache.
    inductor_config.fx_graph_cache = True


class ShapeGate:
    """A compiled callable's stand-in: the compiled code for the input signatures it was warmed on, eager otherwise.

    While ``learning`` (the warm-up), every call goes to the compiled code and its signature is kept;
    once closed (:meth:`close`), a call whose signature the warm-up never saw runs ``eager`` instead of
    compiling on the job's path. Signatures are the shapes and dtypes of the tensor arguments (one
    level into dicts, as diffusers passes ``added_cond_kwargs``) and the values of the plain ones.
    """

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any]) -> None:
        self.compiled = compiled
        self.eager = eager
        self.learning = True
        self.warmed: set[Hashable] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = call_signature(args, kwargs)
        if self.learning:
            self.warmed.add(key)
            return self.compiled(*args, **kwargs)
        return (self.compiled if key in self.warmed else self.eager)(*args, **kwargs)

    def close(self) -> None:
        self.learning = False


def call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    def one(value: Any, depth: int = 0) -> Hashable:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if isinstance(value, dict) and depth == 0:
            return ("dict", tuple(sorted((str(k), one(v, 1)) for k, v in value.items())))
        if isinstance(value, (list, tuple)) and depth == 0:
            return ("seq", tuple(one(v, 1) for v in value))
        if value is None or isinstance(value, (bool, int, float, str)):
            return (type(value).__name__, value)
        return (type(value).__name__,)  # an object: its type, not its identity

    return (tuple(one(a) for a in args), tuple(sorted((k, one(v)) for k, v in kwargs.items())))


@dataclass
class CompiledPath:
    """What was compiled, so it can be put back to eager."""

    components: tuple[str, ...]
    _restore: list[Callable[[], None]]
    gates: tuple[ShapeGate, ...] = ()

    def close(self) -> None:
        """The warm-up is over: from now on, shapes it did not see run eager."""
        for gate in self.gates:
            gate.close()

    def revert(self) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()


def compile_hot_path(modules: dict[str, torch.nn.Module], mode: str) -> CompiledPath:
    """Compile the denoiser's forward and the VAE's ``decode`` in place (the pipeline keeps its references)."""
    restore: list[Callable[[], None]] = []
    names: list[str] = []
    gates: list[ShapeGate] = []
    try:
        for name, module in modules.items():
            if name in DENOISER_COMPONENTS + DECODER_COMPONENTS and _on_cuda(module) and channels_last_fits(module):
                restore.append(_to_channels_last(module))
            if name in DENOISER_COMPONENTS:
                # What nn.Module.compile does (the call implementation swapped inside the same
                # object, so the pipeline keeps its reference), behind a gate of our own.
                gate = ShapeGate(torch.compile(module._call_impl, mode=mode, fullgraph=True), module._call_impl)
                module._compiled_call_impl = gate
                restore.append(_uncompile_module(module))
                gates.append(gate)
                names.append(name)
            elif name in DECODER_COMPONENTS and callable(decode := getattr(module, "decode", None)):
                # An instance attribute shadows the class's method; deleting it restores eager.
                gate = ShapeGate(torch.compile(decode, mode=mode, fullgraph=True), decode)
                object.__setattr__(module, "decode", gate)
                restore.append(_uncompile_decode(module))
                gates.append(gate)
                names.append(f"{name}.decode")
    except BaseException:
        CompiledPath((), restore).revert()  # half a path is no path: every module as it was
        raise
    return CompiledPath(tuple(names), restore, tuple(gates))


def channels_last_fits(module: torch.nn.Module) -> bool:
    """Whether NHWC applies: it is a layout of 4-D tensors only.

    A video model's denoiser and decoder (SVD's) hold 3-D convolutions, whose 5-D weights
    ``channels_last`` refuses outright; converting such a module raised before anything was
    compiled, and tiny-svd never got warm on a GPU. Those keep their own layout.
    """
    return not any(t.dim() == 5 for t in (*module.parameters(), *module.buffers()))


def _on_cuda(module: torch.nn.Module) -> bool:
    first = next(iter(module.parameters()), None)
    return first is not None and first.is_cuda


def _to_channels_last(module: torch.nn.Module) -> Callable[[], None]:
    """Tensor-core convolutions run NHWC: compiled, the SDXL-Turbo-size device stage took 26 ms instead of 30.

    Only for the compiled path: eager, the same change made batches of 8 slower (317 ms against 226 ms,
    group norms converting back and forth; docs/benchmarks.md, Models).
    """
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def undo() -> None:
        module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    return undo


def _uncompile_module(module: torch.nn.Module) -> Callable[[], None]:
    def undo() -> None:
        module._compiled_call_impl = None

    return undo


def _uncompile_decode(module: torch.nn.Module) -> Callable[[], None]:
    def undo() -> None:
        if "decode" in vars(module):
            delattr(module, "decode")

    return undo


def warmup_request(adapter: ModelAdapter) -> Request | None:
    """A request of the model's default shape that exercises the compiled modules, or None."""
    spec = adapter.spec
    if PipelineKind.TEXT_TO_IMAGE in spec.pipelines:
        return spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="warm-up", seed=0)
    if PipelineKind.IMAGE_TO_VIDEO in spec.pipelines:
        width = int(spec.defaults.get("width", 1024))
        height = int(spec.defaults.get("height", 576))
        return spec.build_request(PipelineKind.IMAGE_TO_VIDEO, image=_gray_png(width, height), seed=0)
    return None  # single-pass models (upscale, interpolation) have nothing compiled here


def _gray_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


class CompileFailures:
    """What failed to compile before, kept beside inductor's cache (``failed.json``) so a restart skips it.

    A compile that fails costs its whole attempt on every start (tiny-svd: 43 s on an H100 before
    inductor gave up), for the same answer. Keyed by preset, weights, torch and device, so a new
    torch or another GPU tries again; deleting the file does too.
    """

    FILE = "failed.json"

    def __init__(self, cache_dir: Path | None) -> None:
        self.path = None if cache_dir is None else cache_dir / self.FILE

    @staticmethod
    def key(adapter: ModelAdapter, device: str) -> str:
        return f"{adapter.spec.name}:{adapter.weights_sha256()[:16]}:torch {torch.__version__}:{device}"

    def known(self, key: str) -> str | None:
        """Why compiling ``key`` failed before, or None."""
        found = self._read().get(key)
        return found if isinstance(found, str) else None

    def remember(self, key: str, error: str) -> None:
        if self.path is None:
            return
        failures = self._read() | {key: error[:300]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_suffix(".tmp")
            temp.write_text(json.dumps(failures, indent=1, sort_keys=True))
            temp.replace(self.path)
        except OSError as exc:  # a memo lost costs one more attempt, nothing else
            log.warning("could not note a failed compile in %s: %s", self.path, exc)

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):  # missing or damaged: try compiling again
            return {}
        return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class WarmupReport:
    compiled: tuple[str, ...]  # components compiled; () when eager
    seconds: float  # wall time of compile + warm-up calls
    error: str = ""  # why it fell back to eager ("" when it did not)


def compile_and_warm(
    adapter: ModelAdapter,
    modules: dict[str, torch.nn.Module],
    mode: str,
    run: Callable[[Request], Any],
    failures: CompileFailures | None = None,
    device: str = "cuda",
) -> WarmupReport:
    """Compile, then run the warm-up request until CUDA graphs replay; eager again on any failure.

    ``run`` executes one request on the adapter (the pool passes ``adapter.run``).
    ``failures``: compiles that failed before are not tried again; a new failure is noted there.
    Call from the model's own thread (cudagraph trees are per thread).
    """
    request = warmup_request(adapter)
    if request is None:
        return WarmupReport((), 0.0)
    key = CompileFailures.key(adapter, device) if failures is not None else ""
    if failures is not None and (before := failures.known(key)) is not None:
        log.info(
            "%s: compiling failed before (%s), serving it eager; %s forgets it",
            adapter.spec.name,
            before,
            failures.path,
        )
        return WarmupReport((), 0.0, before)
    # Said before, not only after: the first compile of a real model takes minutes, with nothing else to show.
    log.info("%s: compiling for %s and warming up (minutes the first time; cached after)", adapter.spec.name, device)
    start = time.perf_counter()
    path = CompiledPath((), [])
    try:
        # inside the try: setting the path up can fail too (a layout a module cannot take), and
        # that is compiler trouble like any other, answered by serving eager
        path = compile_hot_path(modules, mode)
        if not path.components:
            return WarmupReport((), 0.0)
        for _ in range(WARMUP_CALLS):
            run(request)
        path.close()  # what the warm-up compiled is what jobs get compiled; other shapes run eager
    except ModelError:
        # OutOfMemory and friends are real answers about this model, not compiler trouble.
        path.revert()
        raise
    except Exception as exc:  # inductor and dynamo raise many types; any of them means "use eager"
        path.revert()
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("compiling %s failed, serving it eager: %s: %s", adapter.spec.name, type(exc).__name__, first_line)
        if failures is not None:
            failures.remember(key, f"{type(exc).__name__}: {first_line}")
        return WarmupReport((), time.perf_counter() - start, f"{type(exc).__name__}: {first_line}")
    return WarmupReport(path.components, time.perf_counter() - start)
