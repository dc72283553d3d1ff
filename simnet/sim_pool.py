"""A simulated model pool: the node's :class:`~lpnode.node.inference.InferencePool` on a simulated GPU.

It keeps the real pool's contract (``models/pool.py``) where the network can see it:
preset names and limits from the registry, one device running one batch at a
time, compatible jobs batched within a window, models loaded on demand and the
least recently used idle one evicted when VRAM is short, a bounded queue
(``PoolBusy``), a measured speed reported only after real runs, per-step progress.
Time passes with ``trio.sleep`` — virtual under a MockClock — as long as the
:class:`~lpnode.simnet.gpus.GpuProfile` says the work takes.

Outputs are real :class:`ImageOutput` / :class:`VideoOutput` (PNG/MP4 bytes, sha256,
pHash/dHash) of a cheap deterministic stand-in: a smooth 64×64 picture drawn from
(weights hash, pipeline, prompt, seed, parameters), so the same job gives the same
picture on every simulated GPU and a different seed or model gives an unrelated one.
Each GPU adds its own tiny noise (±1–2 levels), as real cards differ in their
last bits: honest outputs agree under a perceptual comparison without being
bit-identical, and the comparison code runs on real images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import statistics
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import trio
from lpnode.models import registry
from lpnode.models.base import (
    ImageToImageRequest,
    ImageToVideoRequest,
    ModelSpec,
    Output,
    PipelineKind,
    Request,
    StepProgress,
    TextToImageRequest,
)
from lpnode.models.errors import InsufficientVram, PoolBusy, PoolClosed, UnknownModel, UnsupportedPipeline
from lpnode.models.outputs import ImageOutput, VideoOutput
from lpnode.models.pool import ModelStatus

from .gpus import GpuProfile

OUTPUT_SIDE = 64  # pixels: the stand-in is small whatever was asked, so a thousand nodes stay cheap
MAX_VIDEO_FRAMES = 4
# device time a cheat costs, as a share of the honest run (reputation.cheats.CheatMode values)
CHEAT_TIME = {"other_seed": 1.0, "half_steps": 0.5, "other_model": 0.5, "blank": 0.0, "copied": 0.0}
DECODE_SHARE = 0.15  # of a run after its last step: VAE decode (22 of 143 ms in the H100 anchor)
MIN_DECODE_S = 0.001
SPEED_WINDOW = 16  # runs; the median is advertised (simulated time is proportional to the work, no fixed part: what models.speed.fit_speed would give)
NOMINAL_INPUT_SIDE = 512  # input-sized pipelines (upscale, interpolation): the input is never decoded here


@dataclass(frozen=True)
class SimPoolConfig:
    serve: tuple[str, ...]  # preset names (real ones: their specs give limits and VRAM)
    pinned: tuple[str, ...] = ()  # loaded at open and never evicted
    batch_window_s: float = 0.01  # a batchable job waits this long for companions
    max_queue: int = 64  # jobs waiting; one more is PoolBusy
    slowdown: float = 1.0  # behaviour "slow": every run takes this many times longer
    noise_levels: int = 2  # ± uint8 levels of per-GPU noise on outputs
    device_seed: int = 0  # this card's noise pattern
    # behaviour "cheater" (reputation.cheats.CheatMode values): what it does to a cheated job's output
    # and how much device time it saves; cheat_share of the batches are cheated, drawn from device_seed
    cheat: str = ""
    cheat_share: float = 0.0

    def __post_init__(self) -> None:
        if extra := set(self.pinned) - set(self.serve):
            raise ValueError(f"pinned models must also be served: {sorted(extra)}")
        if self.cheat and self.cheat not in CHEAT_TIME:
            raise ValueError(f"cheat must be one of {sorted(CHEAT_TIME)}, got {self.cheat!r}")
        if self.slowdown <= 0 or self.max_queue < 1:
            raise ValueError("slowdown must be positive and max_queue at least 1")


@dataclass(eq=False)
class _Job:
    model: str
    request: Request
    key: Hashable
    progress: Callable[[StepProgress], None] | None
    done: trio.Event = field(default_factory=trio.Event)
    output: Output | None = None
    error: BaseException | None = None
    abandoned: bool = False


@dataclass(eq=False)
class _Model:
    spec: ModelSpec
    weights_sha256: str
    pinned: bool
    warm: bool = False
    loading: bool = False
    last_used: int = 0
    speeds: deque[float] = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW))


@dataclass
class SimPoolStats:
    runs: int = 0  # batches on the device
    cheated: int = 0  # jobs whose output was cheated
    jobs: int = 0  # jobs finished
    loads: int = 0
    evictions: int = 0
    busy_s: float = 0.0  # device time spent loading and running


class SimPool:
    """See the module docstring. Made by :func:`open_sim_pool`."""

    def __init__(self, gpu: GpuProfile, config: SimPoolConfig) -> None:
        self.gpu = gpu
        self.config = config
        self.device = f"sim:{gpu.name}"  # runtime facts in receipts
        self.dtype = "float16"
        self.stats = SimPoolStats()
        self._models: dict[str, _Model] = {}
        for name in config.serve:
            spec = registry.spec(name)
            self._models[name] = _Model(spec, honest_weights_sha256(spec.model_id), pinned=name in config.pinned)
        self._queue: list[_Job] = []
        self._running = 0
        self._running_model = ""
        self._wakeup = trio.Event()
        self._version = 0
        self._changed = trio.Event()
        self._clock = 0
        self._closed = False
        self._cheat_rng = random.Random(f"cheat/{config.device_seed}")
        self._last_output: Output | None = None

    # --- InferencePool ---------------------------------------------------------------

    async def run(
        self, model: str, request: Request, *, progress: Callable[[StepProgress], None] | None = None
    ) -> Output:
        slot = self._slot(model)
        if self._closed:
            raise PoolClosed("the simulated pool is closed")
        if request.kind not in slot.spec.pipelines:
            raise UnsupportedPipeline(f"{model} does not serve {request.kind}")
        if slot.spec.vram_bytes > self.gpu.vram_bytes:
            raise InsufficientVram(model, slot.spec.vram_bytes, self.gpu.vram_bytes)
        if len(self._queue) >= self.config.max_queue:
            raise PoolBusy(f"{len(self._queue)} jobs queued (max {self.config.max_queue})")
        job = _Job(model, request, _batch_key(model, request), progress)
        self._queue.append(job)
        self._touch(slot)
        self._wakeup.set()
        try:
            await job.done.wait()
        finally:
            if not job.done.is_set():
                job.abandoned = True
                if job in self._queue:
                    self._queue.remove(job)
                    self._bump()
        if job.error is not None:
            raise job.error
        assert job.output is not None
        return job.output

    def status(self) -> tuple[ModelStatus, ...]:
        return tuple(self._row(name, m) for name, m in self._models.items())

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + self._running

    @property
    def state_version(self) -> int:
        return self._version

    async def wait_changed(self, seen: int) -> int:
        while self._version == seen:
            await self._changed.wait()
        return self._version

    # --- the device ----------------------------------------------------------------------

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for name in self.config.pinned:
            await self._ensure_warm(name)
        task_status.started()
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            first = self._queue[0]
            max_batch = self._models[first.model].spec.limits.max_batch
            if max_batch > 1 and self.config.batch_window_s > 0:
                await trio.sleep(self.config.batch_window_s)
            if not self._queue:
                continue
            first = self._queue[0]
            batch = [j for j in self._queue if j.key == first.key][: self._models[first.model].spec.limits.max_batch]
            for job in batch:
                self._queue.remove(job)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Job]) -> None:
        model = batch[0].model
        slot = self._models[model]
        self._running += 1
        self._running_model = model
        self._bump()
        try:
            await self._ensure_warm(model)
            request = batch[0].request
            width, height, steps, frames = _work(request)
            seconds = self.config.slowdown * self.gpu.run_s(
                request.kind, width=width, height=height, steps=steps, frames=frames, batch=len(batch)
            )
            honest_seconds = seconds  # a cheater advertises the speed of honest work: it wants to be chosen
            cheat = self.config.cheat if self._cheat_rng.random() < self.config.cheat_share else ""
            if cheat:
                seconds *= CHEAT_TIME[cheat]
            # progress after each step, as the real adapters report it (the requester's silence timer needs
            # it), then the decode stage, which reports none (VAE decode in a real pipeline)
            for step in range(1, steps + 1):
                await trio.sleep(seconds * (1 - DECODE_SHARE) / steps)  # a zero-time cheat still yields
                for job in batch:
                    if job.progress is not None and not job.abandoned:
                        job.progress(StepProgress("denoise", step, steps))
            await trio.sleep(max(seconds * DECODE_SHARE, MIN_DECODE_S))
            self.stats.busy_s += seconds
            self.stats.runs += 1
            slot.speeds.append(len(batch) * width * height * frames * steps / 1e6 / honest_seconds)
            for job in batch:
                if not job.abandoned:
                    job.output = self._output(slot, job.request, cheat)
                    self.stats.cheated += bool(cheat)
                self.stats.jobs += 1
        except Exception as exc:  # a failed batch fails its jobs, not the pool
            for job in batch:
                job.error = exc
        finally:
            self._running -= 1
            for job in batch:
                job.done.set()
            self._touch(slot)
            self._bump()

    async def _ensure_warm(self, name: str) -> None:
        slot = self._models[name]
        if slot.warm:
            return
        need = slot.spec.vram_bytes
        # least recently used idle, unpinned models go first, as in the real pool
        victims = sorted((m for m in self._models.values() if m.warm and not m.pinned), key=lambda m: m.last_used)
        while self._used_vram() + need > self.gpu.vram_bytes and victims:
            victims.pop(0).warm = False
            self.stats.evictions += 1
        if self._used_vram() + need > self.gpu.vram_bytes:
            raise InsufficientVram(name, need, self.gpu.vram_bytes - self._used_vram())
        slot.loading = True
        self._bump()
        try:
            seconds = self.gpu.load_s(need)
            await trio.sleep(seconds)
            self.stats.busy_s += seconds
            self.stats.loads += 1
            slot.warm = True
        finally:
            slot.loading = False
            self._bump()

    def _used_vram(self) -> int:
        return sum(m.spec.vram_bytes for m in self._models.values() if m.warm)

    def _output(self, slot: _Model, request: Request, cheat: str = "") -> Output:
        if cheat == "copied" and self._last_output is not None and type(self._last_output) is _output_type(request):
            return self._last_output
        weights = slot.weights_sha256
        if cheat == "other_model":
            weights = hashlib.sha256(f"other/{weights}".encode()).hexdigest()
        elif cheat in ("other_seed", "half_steps"):
            # in a real model half the steps changes the picture noticeably; the stand-in has no steps,
            # so it draws from a perturbed key like another seed would
            request = dataclasses.replace(request, seed=(request.seed + 1 + (cheat == "half_steps")) % 2**62)
        frames = standin_frames(weights, request)
        if cheat == "blank":
            frames = [np.zeros_like(frame) for frame in frames]
        rng = np.random.default_rng([self.config.device_seed, int.from_bytes(_request_digest(request)[:8], "big")])
        noisy = [_add_noise(frame, rng, self.config.noise_levels) for frame in frames]
        output: Output
        if isinstance(request, ImageToVideoRequest):
            output = VideoOutput.from_frames(noisy, fps=request.fps)
        else:
            output = ImageOutput.from_array(noisy[0])
        self._last_output = output
        return output

    # --- bookkeeping -----------------------------------------------------------------------

    def _slot(self, model: str) -> _Model:
        try:
            return self._models[model]
        except KeyError:
            raise UnknownModel(model, tuple(self._models)) from None

    def _touch(self, slot: _Model) -> None:
        self._clock += 1
        slot.last_used = self._clock

    def _bump(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    def _row(self, name: str, m: _Model) -> ModelStatus:
        return ModelStatus(
            name=name,
            model_id=m.spec.model_id,
            pipelines=tuple(sorted(m.spec.pipelines)),
            weights_sha256=m.weights_sha256,
            warm=m.warm,
            pinned=m.pinned,
            loading=m.loading,
            compiled=("unet", "vae") if self.gpu.compiled else (),
            vram_estimate_bytes=m.spec.vram_bytes,
            vram_measured_bytes=m.spec.vram_bytes if m.warm else None,
            speed_mpx_steps_per_s=round(statistics.median(m.speeds), 3) if m.speeds else 0.0,
            queued=sum(1 for j in self._queue if j.model == name),
            running=1 if self._running and self._running_model == name else 0,
            problem="",
        )

    async def aclose(self) -> None:
        """Fail queued jobs; safe to call twice."""
        self._closed = True
        for job in self._queue:
            job.error = PoolClosed("the simulated pool closed before the job ran")
            job.done.set()
        self._queue.clear()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_sim_pool(gpu: GpuProfile, config: SimPoolConfig) -> AsyncIterator[SimPool]:
    """A simulated pool on ``gpu``; pinned models are warm (after their load time) when this yields."""
    async with trio.open_nursery() as nursery:
        pool = SimPool(gpu, config)
        await nursery.start(pool._serve)
        try:
            yield pool
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


# --- the stand-in picture ------------------------------------------------------------------------


def _work(request: Request) -> tuple[int, int, int, int]:
    """(width, height, steps, frames) of the work the request asks for."""
    width = getattr(request, "width", NOMINAL_INPUT_SIDE)
    height = getattr(request, "height", NOMINAL_INPUT_SIDE)
    steps = getattr(request, "num_inference_steps", 1)
    if isinstance(request, ImageToImageRequest):
        steps = max(1, int(steps * request.strength))
    frames = getattr(request, "num_frames", 1)
    return width, height, steps, frames


def honest_weights_sha256(model_id: str) -> str:
    """The weights hash every honest simulated worker reports for ``model_id``."""
    return hashlib.sha256(f"simnet-weights/{model_id}".encode()).hexdigest()


def _output_type(request: Request) -> type:
    return VideoOutput if isinstance(request, ImageToVideoRequest) else ImageOutput


def _batch_key(model: str, request: Request) -> Hashable:
    """Jobs batch when the model and every shape parameter agree (prompts and seeds may differ)."""
    if isinstance(request, TextToImageRequest | ImageToImageRequest):
        return (model, request.kind, *_work(request), getattr(request, "guidance_scale", 0.0))
    return (model, request.kind, id(request))  # video and single-pass jobs run alone


def _request_digest(request: Request) -> bytes:
    fields = {
        f.name: (hashlib.sha256(v).hexdigest() if isinstance(v := getattr(request, f.name), bytes) else v)
        for f in dataclasses.fields(request)
    }
    return hashlib.sha256(repr((request.kind, sorted(fields.items()))).encode()).digest()


def standin_frames(weights_sha256: str, request: Request) -> list[np.ndarray]:
    """The noiseless stand-in output: smooth pictures from the job and the model, identical everywhere."""
    seed = hashlib.sha256(weights_sha256.encode() + _request_digest(request)).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:8], "big"))
    count = min(MAX_VIDEO_FRAMES, _work(request)[3]) if request.kind is PipelineKind.IMAGE_TO_VIDEO else 1
    base = rng.uniform(0, 255, size=(8, 8, 3))
    drift = rng.normal(0, 12, size=(8, 8, 3))
    frames = []
    for i in range(count):
        coarse = np.clip(base + i * drift, 0, 255)
        frames.append(_smooth_upscale(coarse, OUTPUT_SIDE))
    return frames


def _smooth_upscale(coarse: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upscale of an 8×8×3 grid: a smooth image whose pHash survives tiny noise."""
    n = coarse.shape[0]
    pos = np.linspace(0, n - 1, side)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    t = (pos - lo)[:, None]
    rows = coarse[lo] * (1 - t)[..., None] + coarse[hi] * t[..., None]  # side × n × 3
    u = (pos - lo)[None, :, None]
    image = rows[:, lo] * (1 - u) + rows[:, hi] * u
    return np.asarray(np.clip(np.rint(image), 0, 255), dtype=np.uint8)


def _add_noise(frame: np.ndarray, rng: np.random.Generator, levels: int) -> np.ndarray:
    if levels <= 0:
        return frame
    noise = rng.integers(-levels, levels + 1, size=frame.shape)
    return np.asarray(np.clip(frame.astype(np.int16) + noise, 0, 255), dtype=np.uint8)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex fingerprints of equal length."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


__all__ = [
    "CHEAT_TIME",
    "SimPool",
    "SimPoolConfig",
    "SimPoolStats",
    "hamming",
    "honest_weights_sha256",
    "open_sim_pool",
    "standin_frames",
]
