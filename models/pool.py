"""The warm pool: which models sit on the device, and running jobs on them.

What the node uses::

    config = PoolConfig(serve=("tiny-sdxl", "tiny-svd"), pinned=("tiny-sdxl",), compile_cache_dir=data / "inductor")
    async with open_model_pool(config) as pool:          # pinned models are warm when this returns
        output = await pool.run("tiny-sdxl", request, progress=on_step)
        pool.status()                                    # rows for `lpnode models` and adverts
        model_offers(pool.status(), price_per_mpx_step=100)

How a job runs. ``run`` checks the request (off the event loop: it may decode an
image), queues it on the model's slot and waits. Each served model has one
dispatcher task in the pool's nursery that loads the model when a job needs it
(evicting least-recently-used idle models if the budget is full), gathers
queued jobs with the same ``batch_key`` for up to ``batch_window_s``, takes the
device limiter and calls ``generate_batch`` (the device stage: raw pixels) on the
model's own thread. Callers never run device work themselves, so a caller that
is cancelled simply leaves: its cancel token is set, and the dispatcher waits for
the worker to stop between steps before it gives the device to anyone else
(threads are never abandoned holding the GPU). Progress goes back to the event
loop through ``TrioToken.run_sync_soon``, which never blocks the worker and keeps order.

The output stage (PNG/MP4 encoding, hashes, fingerprints: ``adapter.finish``) runs
in the caller's task, in a worker thread under its own limiter, after the device
limiter is released: the device starts the next batch while the last one encodes,
and the outputs of one batch encode in parallel (zlib, x264 and hashlib release
the GIL). Encoding inside the device stage cost 64-88 ms per 512² image on an H100
and held batch 8 at 1.8× the images/s of batch 1 (docs/benchmarks.md).

Memory accounting is in ``_budget`` and the compiled warm path in ``_compile``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import trio

from . import registry
from ._budget import Resident, choose_evictions, detect_budget, estimate_cost, measured_cost, usable_cpus
from ._compile import CompileFailures, CompileSetting, compile_and_warm, configure_compile_cache
from ._status import ModelStatus, model_offers, mpx_steps
from .base import (
    CancelToken,
    ModelAdapter,
    Output,
    RawOutput,
    Request,
    StepProgress,
    TextToImageRequest,
)
from .errors import (
    Cancelled,
    InferenceFailed,
    InsufficientVram,
    ModelError,
    ModelLoadError,
    PoolBusy,
    PoolClosed,
    UnknownModel,
)
from .speed import UNMEASURED, RunMemo, Speed, fit_speed

__all__ = ["ModelPool", "ModelStatus", "PoolConfig", "model_offers", "open_model_pool"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Resolver = Callable[[str, Path | None], ModelAdapter]
ProgressHandler = Callable[[StepProgress], None]

SPEED_WINDOW = 16  # runs the advertised speed is fitted on (speed.fit_speed), so one slow first-shape compile fades


@dataclass(frozen=True)
class PoolConfig:
    serve: tuple[str, ...]  # preset names this pool serves (jobs for others: UnknownModel)
    pinned: tuple[str, ...] = ()  # subset of serve: loaded at open, never evicted
    weights_dir: Path | None = None  # real presets' weights: <weights_dir>/<spec.weights_subdir>
    device: str = "auto"  # "auto": cuda:0 if CUDA is available, else "cpu"
    dtype: torch.dtype | None = None  # None: fp16 on CUDA, fp32 elsewhere (the adapters' default)
    budget_bytes: int | None = None  # memory the pool may fill; None: budget_fraction of free memory at open
    budget_fraction: float = 0.9  # share of free VRAM (RAM on the CPU) taken when budget_bytes is None
    max_concurrent: int = 1  # runs at once on the device; a batch counts as one
    batch_window_s: float = 0.01  # seconds a batchable job waits for companions; 0 disables the wait
    max_queue: int = 64  # jobs waiting per model; one more is refused with PoolBusy
    compile: CompileSetting = "auto"  # "auto": compile the hot path on CUDA; "off": always eager
    compile_mode: str = "reduce-overhead"  # torch.compile mode; reduce-overhead = CUDA graphs
    compile_cache_dir: Path | None = None  # inductor cache, under the node's data dir; None: torch's default
    speeds_path: Path | None = None  # each model's recent runs, kept across restarts (speed.RunMemo); None: not kept
    encode_threads: int | None = None  # output stages (encoding) at once; None: the CPUs this process may use

    def __post_init__(self) -> None:
        if len(set(self.serve)) != len(self.serve):
            raise ValueError(f"serve lists a model twice: {self.serve}")
        if extra := set(self.pinned) - set(self.serve):
            raise ValueError(f"pinned models must also be served: {sorted(extra)}")
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {self.budget_bytes}")
        if self.max_concurrent < 1 or self.max_queue < 1:
            raise ValueError("max_concurrent and max_queue must be at least 1")
        if self.encode_threads is not None and self.encode_threads < 1:
            raise ValueError(f"encode_threads must be at least 1, got {self.encode_threads}")
        if not 0.0 <= self.batch_window_s <= 1.0:
            raise ValueError(f"batch_window_s must be in [0, 1] seconds, got {self.batch_window_s}")
        if self.compile not in ("auto", "off"):
            raise ValueError(f"compile must be 'auto' or 'off', got {self.compile!r}")


@dataclass(eq=False)
class _Job:
    request: Request
    key: Hashable | None
    progress: ProgressHandler | None
    queued_at: float = field(default_factory=trio.current_time)  # trio time; the batch window counts from here
    token: CancelToken = field(default_factory=CancelToken)
    done: trio.Event = field(default_factory=trio.Event)
    raw: RawOutput | None = None  # the device stage's result; the caller's task encodes it
    error: BaseException | None = None
    abandoned: bool = False  # the caller left (cancelled); drop its output and progress


@dataclass(eq=False)
class _Slot:
    name: str
    adapter: ModelAdapter
    pinned: bool
    estimate: int  # bytes, before any load
    # One thread per model: adapters are not thread-safe and CUDA graph trees are per thread.
    executor: ThreadPoolExecutor
    queue: list[_Job] = field(default_factory=list)
    wakeup: trio.Event = field(default_factory=trio.Event)
    running: int = 0
    current: list[_Job] = field(default_factory=list)  # the batch on the device now
    warm: bool = False
    loading: bool = False
    last_used: int = 0
    loaded_bytes: int | None = None
    activation_bytes: int | None = None
    compiled: tuple[str, ...] = ()
    runs: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW))  # (mpx-steps, s)
    speed: Speed = UNMEASURED  # fitted on runs, after each
    problem: str = ""

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.running > 0 or self.loading

    @property
    def cost(self) -> int:
        if self.loaded_bytes is None:
            return self.estimate
        return measured_cost(self.estimate, self.loaded_bytes, self.activation_bytes)

    def wake(self) -> None:
        self.wakeup.set()

    async def wait_wakeup(self) -> None:
        self.wakeup = trio.Event()
        await self.wakeup.wait()


@asynccontextmanager
async def open_model_pool(config: PoolConfig, *, resolve: Resolver = registry.resolve) -> AsyncIterator[ModelPool]:
    """Open a pool serving ``config.serve``; pinned models are loaded before this yields.

    ``resolve`` builds an unloaded adapter by preset name (tests pass fakes).
    Raises UnknownModel for a preset that does not exist. A pinned model that
    fails to load is logged and left cold with its ``problem`` set; the pool opens anyway.
    On exit every job is cancelled, running workers are waited for, and every model is unloaded.
    """
    device = _pick_device(config.device)
    budget = config.budget_bytes if config.budget_bytes is not None else detect_budget(device, config.budget_fraction)
    compile_on = config.compile == "auto" and device.type == "cuda"
    if compile_on and config.compile_cache_dir is not None:
        configure_compile_cache(config.compile_cache_dir)
    adapters = {name: resolve(name, config.weights_dir) for name in config.serve}
    async with trio.open_nursery() as nursery:
        pool = ModelPool(config, adapters, device, budget, compile_on)
        pool._restore_runs()
        await nursery.start(pool._serve)
        try:
            for name in config.pinned:
                await pool._warm_pinned(pool._slots[name])
            yield pool
        finally:
            # Shielded: workers must be waited for (never abandoned holding the device) even
            # when the pool is left because of a cancellation.
            with trio.CancelScope(shield=True):
                await pool.aclose()
                pool._keep_runs()


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelPool:
    """Created by :func:`open_model_pool`; see the module docstring."""

    def __init__(
        self,
        config: PoolConfig,
        adapters: dict[str, ModelAdapter],
        device: torch.device,
        budget_bytes: int,
        compile_on: bool,
    ) -> None:
        self.config = config
        self.device = device
        self.budget_bytes = budget_bytes
        self.compile_on = compile_on
        self._dispatch_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._limiter = trio.CapacityLimiter(config.max_concurrent)
        self._encode_limiter = trio.CapacityLimiter(config.encode_threads or usable_cpus())
        self._load_lock = trio.Lock()  # loads and evictions: budget decisions must not interleave
        self._trio_token = trio.lowlevel.current_trio_token()
        self._uses = 0
        self._closed = False
        self._state_version = 0
        self._state_changed = trio.Event()
        dtype = config.dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        self.dtype = dtype
        self._slots = {
            name: _Slot(
                name=name,
                adapter=adapter,
                pinned=name in config.pinned,
                estimate=estimate_cost(adapter.spec, dtype),
                executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}"),
            )
            for name, adapter in adapters.items()
        }

    # --- what the node calls -----------------------------------------------------------

    async def run(self, model: str, request: Request, *, progress: ProgressHandler | None = None) -> Output:
        """Run one request on ``model``; returns its encoded output.

        ``progress`` is called on the event loop (never blocks the worker), in step order,
        and never after ``run`` has returned or been cancelled. Raises UnknownModel,
        ParameterError/UnsupportedPipeline (before queueing), InsufficientVram, PoolBusy,
        WeightsMissing/ModelLoadError, OutOfMemory, InferenceFailed, PoolClosed.
        Cancelling the caller cancels the job between steps, or drops its encoding.
        """
        slot = self._slot(model)
        if self._closed:
            raise PoolClosed("the model pool is closed")
        if slot.cost > self.budget_bytes:
            raise InsufficientVram(model, slot.cost, self.budget_bytes)
        if len(slot.queue) >= self.config.max_queue:
            raise PoolBusy(f"{model} has {len(slot.queue)} jobs queued (max {self.config.max_queue})")
        if isinstance(request, TextToImageRequest):
            key = _check_and_key(slot.adapter, request)  # arithmetic on its parameters: not worth a thread hop
        else:
            # the checks decode the input image or probe the video: a thread's work
            key = await trio.to_thread.run_sync(_check_and_key, slot.adapter, request)
        if self._closed:
            raise PoolClosed("the model pool closed while the request was checked")
        job = _Job(request, key, progress)
        slot.queue.append(job)
        self._touch(slot)
        slot.wake()
        try:
            await job.done.wait()
        finally:
            if not job.done.is_set():  # cancelled while queued or running: stop the worker at its next step
                job.abandoned = True
                job.token.cancel()
                if job in slot.queue:
                    slot.queue.remove(job)
                    self._changed()
        if job.error is not None:
            raise job.error
        assert job.raw is not None
        return await self._finish(slot, job.raw)

    async def _finish(self, slot: _Slot, raw: RawOutput) -> Output:
        """The output stage, outside the device limiter, at most ``encode_threads`` at once."""
        try:
            # Abandoning on cancel is safe: encoding touches no device and no shared state,
            # and the thread keeps its limiter token until it ends, so the bound holds.
            return await trio.to_thread.run_sync(
                slot.adapter.finish, raw, limiter=self._encode_limiter, abandon_on_cancel=True
            )
        except ModelError:
            raise
        except Exception as exc:  # an encoder failure costs this job only
            log.exception("%s: encoding an output failed", slot.name)
            raise InferenceFailed(f"{slot.name} could not encode its output: {type(exc).__name__}: {exc}") from exc

    async def warm(self, model: str) -> None:
        """Load ``model`` now (if not warm) without running a job; same errors as a job's load."""
        slot = self._slot(model)
        slot.loading = True  # counts as busy: nothing evicts it between here and the load
        try:
            await self._ensure_warm(slot)
        finally:
            slot.loading = False

    def status(self) -> tuple[ModelStatus, ...]:
        return tuple(self._row(slot) for slot in self._slots.values())

    @property
    def queue_depth(self) -> int:
        """Jobs waiting or running over every model."""
        return sum(len(s.queue) + s.running for s in self._slots.values())

    async def wait_changed(self, seen: int) -> int:
        """Wait until the state version differs from ``seen``; returns the new one (for re-adverts)."""
        while self._state_version == seen:
            await self._state_changed.wait()
        return self._state_version

    @property
    def state_version(self) -> int:
        return self._state_version

    async def aclose(self) -> None:
        """Refuse new jobs, fail queued ones, stop running ones between steps, unload. Safe to call twice."""
        if not self._closed:
            self._closed = True
            for slot in self._slots.values():
                self._fail_queue(slot, PoolClosed("the model pool closed before the job ran"))
                for job in slot.current:
                    job.token.cancel()
            self._dispatch_scope.cancel()
        await self._stopped.wait()

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The dispatchers' home; unloads everything once they have all stopped."""
        try:
            with self._dispatch_scope:
                async with trio.open_nursery() as nursery:
                    for slot in self._slots.values():
                        nursery.start_soon(self._serve_slot, slot, name=f"model-pool:{slot.name}")
                    nursery.start_soon(self._hash_weights, name="model-pool:hash")
                    task_status.started()
        finally:
            # Every dispatcher has returned, so no worker runs: unloading cannot race a job.
            with trio.CancelScope(shield=True):
                for slot in self._slots.values():
                    slot.warm = False
                    if slot.adapter.loaded:
                        await self._in_slot_thread(slot, slot.adapter.unload)
                    slot.executor.shutdown(wait=False)
            self._stopped.set()

    # --- dispatch ----------------------------------------------------------------------

    def _slot(self, model: str) -> _Slot:
        try:
            return self._slots[model]
        except KeyError:
            raise UnknownModel(model, tuple(self._slots)) from None

    async def _serve_slot(self, slot: _Slot) -> None:
        """One model's dispatcher: load when needed, gather a batch, run it, deliver."""
        while True:
            while not slot.queue:
                await slot.wait_wakeup()
            if not slot.warm:
                try:
                    await self._ensure_warm(slot)
                except ModelError as exc:
                    self._fail_queue(slot, exc)
                    continue
            await self._batch_window(slot)
            async with self._limiter:
                if not slot.warm:  # evicted while its only job was cancelled and a new one came
                    continue
                batch = self._take_batch(slot)
                if not batch:
                    continue
                slot.running += 1
                slot.current = batch
                self._changed()
                try:
                    await self._run_batch(slot, batch)
                finally:
                    slot.running -= 1
                    slot.current = []
                    self._touch(slot)

    async def _batch_window(self, slot: _Slot) -> None:
        """Wait until the head job has waited ``batch_window_s`` for jobs that can join its batch.

        Counted from the head job's arrival, not from now: time it spent queued behind
        a load or another batch already counts, so no job waits longer than the window.
        """
        window = self.config.batch_window_s
        limit = slot.adapter.spec.limits.max_batch
        head = slot.queue[0]
        if window <= 0 or limit <= 1 or head.key is None:
            return
        with trio.move_on_at(head.queued_at + window):
            while slot.queue and len(self._compatible(slot)) < limit:
                await slot.wait_wakeup()

    def _compatible(self, slot: _Slot) -> list[_Job]:
        head = slot.queue[0]
        if head.key is None:
            return [head]
        same = [job for job in slot.queue if job.key == head.key]
        return same[: slot.adapter.spec.limits.max_batch]

    def _take_batch(self, slot: _Slot) -> list[_Job]:
        if not slot.queue:
            return []
        batch = self._compatible(slot)
        for job in batch:
            slot.queue.remove(job)
        return batch

    async def _run_batch(self, slot: _Slot, batch: list[_Job]) -> None:
        adapter = slot.adapter
        requests = [job.request for job in batch]
        token = batch[0].token if len(batch) == 1 else CancelToken.all_of([job.token for job in batch])
        trio_token = self._trio_token

        def forward(step: StepProgress) -> None:
            trio_token.run_sync_soon(_deliver_progress, batch, step)

        def work() -> tuple[list[RawOutput], float, int | None]:
            cuda = self.device.type == "cuda"
            before = torch.cuda.memory_allocated(self.device) if cuda else 0
            start = time.perf_counter()  # measurement only: the advertised speed (device stage alone)
            outputs = adapter.generate_batch(requests, cancel=token, progress=forward)
            seconds = time.perf_counter() - start
            # Only the peak is needed here: footprint() also walks every parameter tensor, which took
            # ~25 ms per batch for the SDXL-size UNet, on the model thread with the device held.
            peak = adapter._peak_run_bytes
            return outputs, seconds, (peak - before if peak is not None else None)

        try:
            outputs, seconds, activations = await self._in_slot_thread(slot, work)
        except ModelError as exc:
            if self._closed and isinstance(exc, Cancelled):
                exc = PoolClosed("the model pool closed while the job ran")
            for job in batch:
                job.error = exc
                job.done.set()
            return
        except Exception as exc:  # an adapter bug must cost this batch only, not the node
            log.exception("%s failed on a batch of %d", slot.name, len(batch))
            for job in batch:
                job.error = InferenceFailed(f"{slot.name} failed: {type(exc).__name__}: {exc}")
                job.error.__cause__ = exc
                job.done.set()
            return
        if activations is not None:
            slot.activation_bytes = max(activations, slot.activation_bytes or 0)
        if seconds > 0:
            slot.runs.append((sum(mpx_steps(j.request, o) for j, o in zip(batch, outputs, strict=True)), seconds))
            slot.speed = fit_speed(slot.runs)
        for job, raw in zip(batch, outputs, strict=True):
            job.raw = raw  # an abandoned job's output is dropped with the job
            job.done.set()
        self._changed()

    def _fail_queue(self, slot: _Slot, exc: ModelError) -> None:
        for job in slot.queue:
            job.error = exc
            job.done.set()
        slot.queue.clear()
        self._changed()

    # --- loading and eviction ------------------------------------------------------------

    async def _warm_pinned(self, slot: _Slot) -> None:
        try:
            await self.warm(slot.name)
        except ModelError as exc:
            if not slot.problem:  # a failed load has logged its problem already (_load)
                log.error("pinned model %s is not warm: %s", slot.name, exc)

    async def _ensure_warm(self, slot: _Slot) -> None:
        async with self._load_lock:
            if slot.warm:
                return
            need = slot.cost
            if need > self.budget_bytes:
                raise InsufficientVram(slot.name, need, self.budget_bytes)
            residents = [
                Resident(s.name, s.cost, s.last_used, evictable=not (s.pinned or s.busy))
                for s in self._slots.values()
                if s.warm
            ]
            victims = choose_evictions(need, self.budget_bytes, residents)
            if victims is None:
                raise PoolBusy(
                    f"{slot.name} needs {need / 2**30:.2f} GiB; pinned or busy models hold the rest "
                    f"of the {self.budget_bytes / 2**30:.2f} GiB budget"
                )
            for name in victims:
                victim = self._slots[name]
                log.info("evicting %s (idle, least recently used) to load %s", name, slot.name)
                victim.warm = False
                await self._in_slot_thread(victim, victim.adapter.unload)
            await self._load(slot)

    async def _load(self, slot: _Slot) -> None:
        was_loading = slot.loading
        slot.loading = True
        self._changed()
        try:
            compiled, loaded_bytes = await self._in_slot_thread(slot, lambda: self._load_in_thread(slot.adapter))
        except ModelError as exc:
            slot.problem = str(exc)
            log.error("cannot load %s: %s", slot.name, exc)
            raise
        except Exception as exc:  # a bug or a library surprise in load: this model is lost, the pool is not
            slot.problem = f"{type(exc).__name__}: {exc}"
            log.exception("loading %s failed unexpectedly", slot.name)
            raise ModelLoadError(f"loading {slot.name} failed: {slot.problem}") from exc
        finally:
            slot.loading = was_loading
            self._changed()
        slot.warm, slot.problem = True, ""
        slot.compiled, slot.loaded_bytes = compiled, loaded_bytes

    def _load_in_thread(self, adapter: ModelAdapter) -> tuple[tuple[str, ...], int]:
        """Load, compile and warm up (on the model's thread); returns compiled components and bytes held."""
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        adapter.load(self.device, self.dtype)
        compiled: tuple[str, ...] = ()
        if self.compile_on:
            # generate, not run: the warm-up exercises the device stage and needs no encoded output.
            report = compile_and_warm(
                adapter,
                dict(adapter._modules()),
                self.config.compile_mode,
                adapter.generate,
                CompileFailures(self.config.compile_cache_dir),
                torch.cuda.get_device_name(self.device) if cuda else str(self.device),
            )
            compiled = report.compiled
            log.info("%s warm-up %.1f s, compiled: %s", adapter.spec.name, report.seconds, compiled or "none (eager)")
        adapter.weights_sha256()
        weights = adapter.footprint().weights_bytes
        # On CUDA the allocator's growth also counts CUDA graph pools and workspaces of the warm-up.
        held = torch.cuda.memory_allocated(self.device) - before if cuda else 0
        return compiled, max(weights, held)

    async def _hash_weights(self) -> None:
        """Hash cold models' weights in the background so adverts carry them before any load."""
        for slot in self._slots.values():
            try:
                # Abandoning is fine here: hashing reads files and touches no device.
                await trio.to_thread.run_sync(slot.adapter.weights_sha256, abandon_on_cancel=True)
            except ModelError as exc:
                slot.problem = slot.problem or str(exc)
        self._changed()

    # --- measured speeds across restarts -------------------------------------------------

    def _run_key(self, slot: _Slot) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return f"{slot.name}:{where}:{self.dtype}"

    def _restore_runs(self) -> None:
        """Each model's runs from the last time this node served it here: it quotes from them at once."""
        kept = RunMemo(self.config.speeds_path).load()
        for slot in self._slots.values():
            if runs := kept.get(self._run_key(slot)):
                slot.runs.extend(runs[-SPEED_WINDOW:])
                slot.speed = fit_speed(slot.runs)

    def _keep_runs(self) -> None:
        kept = RunMemo(self.config.speeds_path)
        if kept.path is not None:
            kept.save(
                # damage in the file was reported when it was read at start
                kept.load(warn=False)
                | {self._run_key(slot): list(slot.runs) for slot in self._slots.values() if slot.runs}
            )

    # --- helpers ---------------------------------------------------------------------------

    async def _in_slot_thread(self, slot: _Slot, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model's own thread and wait for it, never abandoning it."""
        future = slot.executor.submit(fn)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=False)

    def _touch(self, slot: _Slot) -> None:
        self._uses += 1
        slot.last_used = self._uses
        self._changed()

    def _changed(self) -> None:
        self._state_version += 1
        self._state_changed.set()
        self._state_changed = trio.Event()

    def _row(self, slot: _Slot) -> ModelStatus:
        spec = slot.adapter.spec
        return ModelStatus(
            name=slot.name,
            model_id=spec.model_id,
            pipelines=tuple(sorted(spec.pipelines)),
            weights_sha256=slot.adapter._weights_sha256 or "",  # only the cached value: never hash here
            warm=slot.warm,
            pinned=slot.pinned,
            loading=slot.loading,
            compiled=slot.compiled,
            vram_estimate_bytes=slot.estimate,
            vram_measured_bytes=slot.cost if slot.loaded_bytes is not None else None,
            speed_mpx_steps_per_s=round(slot.speed.mpx_steps_per_s, 3),
            queued=len(slot.queue),
            running=slot.running,
            problem=slot.problem,
            overhead_s=round(slot.speed.overhead_s, 4),
        )


def _check_and_key(adapter: ModelAdapter, request: Request) -> Hashable | None:
    adapter.check_inputs(request)
    return adapter.batch_key(request)


def _deliver_progress(batch: Sequence[_Job], step: StepProgress) -> None:
    """On the event loop (via run_sync_soon): an exception here would crash trio itself."""
    for job in batch:
        if job.abandoned or job.progress is None or job.done.is_set():
            continue
        try:
            job.progress(step)
        except Exception:
            log.exception("a progress handler failed; the job goes on")
