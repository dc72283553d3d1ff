"""The warm pool on the CPU: budget and LRU eviction, pinning, busy models, errors, batching, cancellation, progress.

Budget tests use a fake adapter whose cost is known exactly (estimate = 2 × spec.vram_bytes at fp32);
batching and progress use the real tiny-sdxl preset. No test sleeps to wait for state: workers are
driven through a semaphore, the event loop through pool.wait_changed, and the batch window through a
MockClock.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
import trio.testing
from lpnode.models import registry
from lpnode.models._budget import Resident, choose_evictions
from lpnode.models.base import (
    CancelToken,
    Limits,
    ModelAdapter,
    ModelSpec,
    Output,
    PipelineKind,
    ProgressCallback,
    RawOutput,
    Request,
    StepProgress,
    TextToImageRequest,
)
from lpnode.models.errors import (
    InferenceFailed,
    InsufficientVram,
    ModelLoadError,
    PoolBusy,
    PoolClosed,
    UnknownModel,
    WeightsMissing,
)
from lpnode.models.outputs import ImageOutput, RawImage, finish_output
from lpnode.models.pool import ModelPool, ModelStatus, PoolConfig, model_offers, open_model_pool
from lpnode.models.sd import StableDiffusionXLAdapter

MIB = 2**20
FAKE_VRAM = 50 * MIB  # fp16 estimate; the pool charges 100 MiB at fp32 on the CPU
FAKE_COST = 2 * FAKE_VRAM


class FakeAdapter(ModelAdapter):
    """A model that holds a few bytes, paints its seed, and takes each step only when ``gate`` allows."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None, world: FakeWorld) -> None:
        super().__init__(spec, weights_dir)
        self.world = world
        self._weights: torch.nn.Module | None = None

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.spec.name in self.world.broken:
            raise RuntimeError("corrupt checkpoint")
        self._weights = torch.nn.Linear(4, 4).to(device, dtype)

    def _unload(self) -> None:
        self._weights = None

    def _modules(self) -> Mapping[str, torch.nn.Module]:
        return {"weights": self._weights} if self._weights is not None else {}

    def _compute_weights_sha256(self) -> str:
        return f"{self.spec.name:0>64}"[:64]

    def batch_key(self, request: Request) -> Hashable | None:
        assert isinstance(request, TextToImageRequest)
        return (request.width, request.height, request.num_inference_steps)

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        self.world.batches.append((self.spec.name, len(requests)))
        first = requests[0]
        assert isinstance(first, TextToImageRequest)
        for step in range(first.num_inference_steps):
            if self.world.gate is not None:
                assert self.world.gate.acquire(timeout=10), "the test never opened the gate"
            cancel.raise_if_cancelled()
            for request in requests:
                self.world.steps[request.seed] = step + 1
            progress(StepProgress("denoise", step + 1, first.num_inference_steps))
        return [
            RawImage(np.full((r.height, r.width, 3), r.seed % 256, dtype=np.uint8))
            for r in requests
            if isinstance(r, TextToImageRequest)
        ]

    def finish(self, raw: RawOutput) -> Output:
        if self.world.encode_hook is not None:
            self.world.encode_hook(raw)
        return finish_output(raw)


class FakeWorld:
    """Shared state of the fakes: which ones fail to load, the step gate, what ran."""

    def __init__(self, gated: bool = False) -> None:
        self.broken: set[str] = set()
        self.gate = threading.Semaphore(0) if gated else None
        self.batches: list[tuple[str, int]] = []
        self.steps: dict[int, int] = {}  # seed -> steps taken
        self.encode_hook: Callable[[RawOutput], None] | None = None  # runs in the output stage's thread

    def resolver(self) -> Callable[[str, Path | None], ModelAdapter]:
        def resolve(name: str, weights_dir: Path | None) -> ModelAdapter:
            if not name.startswith("fake-"):
                return registry.resolve(name, weights_dir)
            spec = ModelSpec(
                name=name,
                model_id=f"test/{name}",
                family="fake",
                pipelines=frozenset({PipelineKind.TEXT_TO_IMAGE}),
                limits=Limits(max_pixels=64 * 64, max_batch=4),
                vram_bytes=FAKE_VRAM,
                tiny=True,
                defaults={"width": 8, "height": 8, "num_inference_steps": 1},
            )
            return FakeAdapter(spec, weights_dir, self)

        return resolve


def t2i(pool: ModelPool, model: str, seed: int, **params: object) -> Request:
    return pool._slots[model].adapter.spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="p", seed=seed, **params)


async def run(pool: ModelPool, model: str, seed: int = 0, **params: object) -> Output:
    return await pool.run(model, t2i(pool, model, seed, **params))


def rows(pool: ModelPool) -> dict[str, ModelStatus]:
    return {row.name: row for row in pool.status()}


def warm_set(pool: ModelPool) -> set[str]:
    warm = {row.name for row in pool.status() if row.warm}
    # The budget holds at every observation, charged with measured costs where known.
    assert sum(r.vram_measured_bytes or r.vram_estimate_bytes for r in pool.status() if r.warm) <= pool.budget_bytes
    return warm


async def wait_until(pool: ModelPool, predicate: Callable[[], bool]) -> None:
    """Wait on pool state changes (no polling with sleeps) until ``predicate`` holds."""
    seen = pool.state_version
    while not predicate():
        seen = await pool.wait_changed(seen)


def config(*serve: str, budget_models: float = 2.5, **kw: object) -> PoolConfig:
    params: dict[str, object] = {"device": "cpu", "budget_bytes": int(budget_models * FAKE_COST), "batch_window_s": 0.0}
    params |= kw
    return PoolConfig(serve=serve, **params)  # type: ignore[arg-type]


# --- pure eviction logic --------------------------------------------------------------------


def test_choose_evictions_takes_least_recently_used_first_and_only_as_many_as_needed() -> None:
    residents = [Resident("a", 40, 3, True), Resident("b", 40, 1, True), Resident("c", 40, 2, True)]
    assert choose_evictions(20, 140, residents) == []
    assert choose_evictions(40, 120, residents) == ["b"]
    assert choose_evictions(80, 120, residents) == ["b", "c"]
    pinned_or_busy = [Resident("a", 40, 3, True), Resident("b", 40, 1, False), Resident("c", 40, 2, False)]
    assert choose_evictions(80, 120, pinned_or_busy) is None


# --- budget and eviction ------------------------------------------------------------------------


async def test_budget_is_respected_and_eviction_is_least_recently_used() -> None:
    world = FakeWorld()
    async with open_model_pool(config("fake-a", "fake-b", "fake-c"), resolve=world.resolver()) as pool:
        assert warm_set(pool) == set()
        await run(pool, "fake-a")
        await run(pool, "fake-b")
        assert warm_set(pool) == {"fake-a", "fake-b"}
        await run(pool, "fake-a")  # a is now more recent than b
        await run(pool, "fake-c")
        assert warm_set(pool) == {"fake-a", "fake-c"}
        await run(pool, "fake-b")
        assert warm_set(pool) == {"fake-c", "fake-b"}
        assert rows(pool)["fake-b"].vram_measured_bytes == FAKE_COST
    assert warm_set(pool) == set()  # everything unloaded on exit


async def test_pinned_models_load_at_open_and_are_never_evicted() -> None:
    world = FakeWorld()
    cfg = config("fake-a", "fake-b", "fake-c", pinned=("fake-a",))
    async with open_model_pool(cfg, resolve=world.resolver()) as pool:
        assert warm_set(pool) == {"fake-a"} and rows(pool)["fake-a"].pinned
        await run(pool, "fake-b")
        await run(pool, "fake-c")  # a is the least recently used, but pinned: b goes
        assert warm_set(pool) == {"fake-a", "fake-c"}
    cfg = config("fake-a", "fake-b", pinned=("fake-a",), budget_models=1.5)
    async with open_model_pool(cfg, resolve=world.resolver()) as pool:
        with pytest.raises(PoolBusy):
            await run(pool, "fake-b")
        assert warm_set(pool) == {"fake-a"}


async def test_a_model_with_a_running_or_queued_job_is_never_evicted() -> None:
    world = FakeWorld(gated=True)
    async with open_model_pool(config("fake-a", "fake-b", "fake-c"), resolve=world.resolver()) as pool:
        assert world.gate is not None
        world.gate.release(1)
        await run(pool, "fake-a")  # warm and idle, the least recently used
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, pool, "fake-b")  # loads b, then blocks in its worker holding the device
            await wait_until(pool, lambda: rows(pool)["fake-b"].running == 1)
            nursery.start_soon(run, pool, "fake-a")  # queued behind b for the device
            await wait_until(pool, lambda: rows(pool)["fake-a"].queued == 1)
            with pytest.raises(PoolBusy):  # room for c means evicting a (queued) or b (running)
                await run(pool, "fake-c")
            assert warm_set(pool) == {"fake-a", "fake-b"}
            world.gate.release(100)
        await run(pool, "fake-c")  # both idle now: b, whose job finished before a's, goes
        assert warm_set(pool) == {"fake-a", "fake-c"}


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_model_is_refused_at_open_and_at_run() -> None:
    with pytest.raises(UnknownModel, match="no-such-model"):
        async with open_model_pool(config("no-such-model")):
            pass
    world = FakeWorld()
    async with open_model_pool(config("fake-a"), resolve=world.resolver()) as pool:
        with pytest.raises(UnknownModel, match="tiny-svd"):
            await pool.run("tiny-svd", t2i(pool, "fake-a", 0))


async def test_a_model_larger_than_the_budget_is_insufficient_vram() -> None:
    world = FakeWorld()
    async with open_model_pool(config("fake-a", budget_models=0.5), resolve=world.resolver()) as pool:
        with pytest.raises(InsufficientVram):
            await run(pool, "fake-a")


async def test_load_failures_are_typed_and_the_pool_keeps_serving(tmp_path: Path) -> None:
    world = FakeWorld()
    world.broken.add("fake-broken")
    # sdxl-turbo's estimate is 18 GiB at fp32: a budget number only, nothing is allocated.
    cfg = config("sdxl-turbo", "fake-broken", "fake-a", weights_dir=tmp_path, budget_bytes=64 * 2**30)
    async with open_model_pool(cfg, resolve=world.resolver()) as pool:
        request = pool._slots["sdxl-turbo"].adapter.spec.build_request(
            PipelineKind.TEXT_TO_IMAGE, prompt="p", seed=0, width=64, height=64
        )
        with pytest.raises(WeightsMissing, match="sdxl-turbo"):
            await pool.run("sdxl-turbo", request)
        with pytest.raises(ModelLoadError, match="corrupt checkpoint"):
            await run(pool, "fake-broken")
        assert isinstance(await run(pool, "fake-a", 7), ImageOutput)
        status = rows(pool)
        assert "missing" in status["sdxl-turbo"].problem and not status["sdxl-turbo"].warm
        assert "corrupt" in status["fake-broken"].problem
        assert status["fake-a"].warm and status["fake-a"].problem == ""


async def test_a_pinned_model_that_fails_to_load_leaves_the_pool_up() -> None:
    world = FakeWorld()
    world.broken.add("fake-broken")
    cfg = config("fake-broken", "fake-a", pinned=("fake-broken",))
    async with open_model_pool(cfg, resolve=world.resolver()) as pool:
        assert not rows(pool)["fake-broken"].warm
        assert isinstance(await run(pool, "fake-a"), ImageOutput)


# --- cancellation and progress ------------------------------------------------------------------


async def test_cancelling_a_running_job_stops_it_between_steps_and_frees_the_device() -> None:
    world = FakeWorld(gated=True)
    async with open_model_pool(config("fake-a"), resolve=world.resolver()) as pool:
        assert world.gate is not None
        first_step = trio.Event()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def job() -> None:
                    request = t2i(pool, "fake-a", 1, num_inference_steps=5)
                    await pool.run("fake-a", request, progress=lambda p: first_step.set())

                nursery.start_soon(job)
                world.gate.release(1)
                await first_step.wait()
                scope.cancel()
        assert scope.cancelled_caught
        world.gate.release(100)  # the worker passes its gate, sees the token, stops
        out = await run(pool, "fake-a", 2, num_inference_steps=3)  # runs only once the device is free
        assert isinstance(out, ImageOutput)
        assert world.steps == {1: 1, 2: 3}
        assert rows(pool)["fake-a"].running == 0 and rows(pool)["fake-a"].queued == 0


async def test_cancelling_a_queued_job_removes_it_before_it_runs() -> None:
    world = FakeWorld(gated=True)
    async with open_model_pool(config("fake-a"), resolve=world.resolver()) as pool:
        assert world.gate is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, pool, "fake-a", 1)
            await wait_until(pool, lambda: rows(pool)["fake-a"].running == 1)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(functools.partial(run, pool, "fake-a", 2, width=16))  # another key
                    await wait_until(pool, lambda: rows(pool)["fake-a"].queued == 1)
                    scope.cancel()
            assert rows(pool)["fake-a"].queued == 0
            world.gate.release(100)
        await run(pool, "fake-a", 3)
        assert sorted(world.steps) == [1, 3]


async def test_progress_arrives_in_order_before_the_result() -> None:
    async with open_model_pool(config("tiny-sdxl", budget_bytes=2**30)) as pool:
        seen: list[StepProgress] = []
        out = await pool.run("tiny-sdxl", t2i(pool, "tiny-sdxl", 5, num_inference_steps=4), progress=seen.append)
        assert isinstance(out, ImageOutput)
        assert [(p.stage, p.step, p.total) for p in seen] == [("denoise", i, 4) for i in range(1, 5)]
        assert rows(pool)["tiny-sdxl"].speed_mpx_steps_per_s > 0


async def test_closing_the_pool_fails_queued_jobs_and_refuses_new_ones() -> None:
    world = FakeWorld(gated=True)
    async with open_model_pool(config("fake-a"), resolve=world.resolver()) as pool:
        assert world.gate is not None
        errors: list[BaseException] = []
        first_step = trio.Event()

        async def job(seed: int, width: int) -> None:
            request = t2i(pool, "fake-a", seed, width=width, num_inference_steps=2)
            try:
                await pool.run("fake-a", request, progress=lambda p: first_step.set())
            except PoolClosed as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, 1, 8)
            await wait_until(pool, lambda: rows(pool)["fake-a"].running == 1)
            nursery.start_soon(job, 2, 16)
            await wait_until(pool, lambda: rows(pool)["fake-a"].queued == 1)
            world.gate.release(1)
            await first_step.wait()
            async with trio.open_nursery() as closer:
                closer.start_soon(pool.aclose)
                await trio.testing.wait_all_tasks_blocked()
                assert len(errors) == 1  # the queued job, at once
                world.gate.release(100)  # the running one stops at its next step
        assert len(errors) == 2
        await pool.aclose()  # idempotent
        with pytest.raises(PoolClosed):
            await run(pool, "fake-a")
        assert not rows(pool)["fake-a"].warm
    assert world.steps == {1: 1}


# --- batching -----------------------------------------------------------------------------------


class RecordingSDXL(StableDiffusionXLAdapter):
    batch_sizes: list[int]

    def generate_batch(
        self,
        requests: Sequence[Request],
        *,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[RawOutput]:
        self.batch_sizes.append(len(requests))
        return super().generate_batch(requests, cancel=cancel, progress=progress)


def recording_resolver(sizes: list[int]) -> Callable[[str, Path | None], ModelAdapter]:
    def resolve(name: str, weights_dir: Path | None) -> ModelAdapter:
        adapter = RecordingSDXL(registry.spec(name), weights_dir)
        adapter.batch_sizes = sizes
        return adapter

    return resolve


def pixels(out: Output) -> np.ndarray:
    assert isinstance(out, ImageOutput)
    return np.asarray(out.to_pil(), dtype=np.int16)


async def test_batched_jobs_match_solo_runs_and_keep_their_seeds(mock_clock: trio.testing.MockClock) -> None:
    sizes: list[int] = []
    cfg = config("tiny-sdxl", pinned=("tiny-sdxl",), budget_bytes=2**30, batch_window_s=0.01)
    async with open_model_pool(cfg, resolve=recording_resolver(sizes)) as pool:
        seeds = (11, 12, 13)
        batched: dict[int, Output] = {}

        async def job(seed: int) -> None:
            batched[seed] = await run(pool, "tiny-sdxl", seed)

        async with trio.open_nursery() as nursery:
            for seed in seeds:
                nursery.start_soon(job, seed)
            await wait_until(pool, lambda: rows(pool)["tiny-sdxl"].queued == len(seeds))
            mock_clock.jump(0.01)  # the window closes (time stands still otherwise)
        assert sizes[-1] == len(seeds)
        solo = {}
        for seed in seeds:  # a lone job: the window passes with nobody joining
            async with trio.open_nursery() as nursery:

                async def one(seed: int = seed) -> None:
                    solo[seed] = await run(pool, "tiny-sdxl", seed)

                nursery.start_soon(one)
                await wait_until(pool, lambda: rows(pool)["tiny-sdxl"].queued == 1)
                mock_clock.jump(0.01)
        assert sizes[-3:] == [1, 1, 1]
        for seed in seeds:
            assert np.abs(pixels(batched[seed]) - pixels(solo[seed])).max() <= 2
        assert len({out.sha256 for out in batched.values() if isinstance(out, ImageOutput)}) == len(seeds)


async def test_a_job_cancelled_inside_a_batch_is_dropped_and_the_others_finish(
    mock_clock: trio.testing.MockClock,
) -> None:
    world = FakeWorld(gated=True)
    async with open_model_pool(config("fake-a", batch_window_s=0.01), resolve=world.resolver()) as pool:
        assert world.gate is not None
        outputs: dict[int, Output] = {}
        in_batch = trio.Event()

        async def job(seed: int) -> None:
            request = t2i(pool, "fake-a", seed, num_inference_steps=3)
            outputs[seed] = await pool.run("fake-a", request, progress=lambda p: in_batch.set())

        victim = trio.CancelScope()

        async def victim_job() -> None:
            with victim:
                await job(2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, 1)
            nursery.start_soon(job, 3)
            nursery.start_soon(victim_job)
            await wait_until(pool, lambda: rows(pool)["fake-a"].queued == 3)
            mock_clock.jump(0.01)
            world.gate.release(1)
            await in_batch.wait()
            victim.cancel()
            await trio.testing.wait_all_tasks_blocked()
            world.gate.release(100)
        assert world.batches == [("fake-a", 3)]
        assert sorted(outputs) == [1, 3]
        assert [pixels(outputs[s])[0, 0, 0] for s in (1, 3)] == [1, 3]


# --- the output stage ---------------------------------------------------------------------------


def seed_of(raw: RawOutput) -> int:
    assert isinstance(raw, RawImage)
    return int(raw.pixels[0, 0, 0])  # the fake paints its seed


async def test_encoding_runs_off_the_device_and_within_its_own_bound() -> None:
    world = FakeWorld()
    gate = threading.Event()
    encoding = threading.Event()

    def hook(raw: RawOutput) -> None:
        if seed_of(raw) == 1:
            encoding.set()
            assert gate.wait(timeout=10), "the test never opened the gate"

    world.encode_hook = hook
    done: list[int] = []
    async with open_model_pool(config("fake-a", encode_threads=1), resolve=world.resolver()) as pool:

        async def job(seed: int) -> None:
            await run(pool, "fake-a", seed)
            done.append(seed)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(job, 1)
                await trio.to_thread.run_sync(encoding.wait, 10)
                nursery.start_soon(job, 2)
                # Job 2's device stage runs while job 1 is still encoding: the device is free.
                await wait_until(pool, lambda: len(world.batches) == 2 and rows(pool)["fake-a"].running == 0)
                await trio.testing.wait_all_tasks_blocked()
                assert done == []  # ... but its encoding waits for the one encode slot
                gate.set()
        finally:
            gate.set()
    assert done == [1, 2]


async def test_outputs_of_one_batch_encode_in_parallel(mock_clock: trio.testing.MockClock) -> None:
    world = FakeWorld()
    together = threading.Barrier(2, timeout=10)  # broken (a test failure) unless both encodes overlap

    def hook(raw: RawOutput) -> None:
        together.wait()

    world.encode_hook = hook
    cfg = config("fake-a", encode_threads=2, batch_window_s=0.01)
    async with open_model_pool(cfg, resolve=world.resolver()) as pool:
        outputs: dict[int, Output] = {}

        async def job(seed: int) -> None:
            outputs[seed] = await run(pool, "fake-a", seed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, 1)
            nursery.start_soon(job, 2)
            await wait_until(pool, lambda: rows(pool)["fake-a"].queued == 2)
            mock_clock.jump(0.01)
    assert world.batches == [("fake-a", 2)]
    assert [pixels(outputs[s])[0, 0, 0] for s in (1, 2)] == [1, 2]
    assert all({"device", "encode"} <= set(out.timings_ms) for out in outputs.values())


async def test_an_encoder_failure_fails_only_its_job() -> None:
    world = FakeWorld()

    def hook(raw: RawOutput) -> None:
        if seed_of(raw) == 1:
            raise ValueError("encoder broke")

    world.encode_hook = hook
    async with open_model_pool(config("fake-a"), resolve=world.resolver()) as pool:
        with pytest.raises(InferenceFailed, match="encoder broke"):
            await run(pool, "fake-a", 1)
        assert isinstance(await run(pool, "fake-a", 2), ImageOutput)


# --- status for adverts -------------------------------------------------------------------------


async def test_status_rows_feed_advert_offers() -> None:
    world = FakeWorld()
    async with open_model_pool(config("fake-a", "tiny-sdxl", budget_bytes=2**30), resolve=world.resolver()) as pool:
        assert not pool.compile_on  # compile="auto" is off on the CPU
        await run(pool, "fake-a")
        await wait_until(pool, lambda: all(r.weights_sha256 for r in pool.status()))
        offers = model_offers(pool.status(), price_per_mpx_step=100)
        assert {(o.model_id, o.pipeline, o.warm) for o in offers} == {
            ("test/fake-a", "text-to-image", True),
            ("lpnode/tiny-sdxl", "text-to-image", False),
            ("lpnode/tiny-sdxl", "image-to-image", False),
        }
        assert all(len(o.weights_sha256) == 64 for o in offers)
