"""The simulated GPUs and pool, in virtual time: timing anchors, warm/cold, batching, VRAM, outputs."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from lpnode.models.base import ImageToVideoRequest, PipelineKind, TextToImageRequest
from lpnode.models.errors import InsufficientVram, UnknownModel
from lpnode.models.outputs import ImageOutput, VideoOutput
from lpnode.simnet.gpus import PROFILES, batch_cost, profile
from lpnode.simnet.sim_pool import SimPoolConfig, hamming, open_sim_pool
from lpnode.simnet.workload import _conditioning_image

T2I_KIND = PipelineKind.TEXT_TO_IMAGE


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_h100_profile_reproduces_the_design_anchor() -> None:
    h100 = profile("h100")
    assert h100.run_s(T2I_KIND, width=512, height=512, steps=1) == pytest.approx(0.1428, rel=0.02)
    assert h100.run_s(T2I_KIND, width=512, height=512, steps=4) == pytest.approx(0.2675, rel=0.02)
    # batch 8 costs 1.58× one image in the anchor: ~5.6× the images per second
    assert h100.run_s(T2I_KIND, width=512, height=512, batch=8) == pytest.approx(0.2256, rel=0.02)
    assert batch_cost(2) == pytest.approx(1 + (203.5 / 142.8 - 1) / 3)
    # slower cards are slower, in the order of the public benchmarks
    times = [p.run_s(T2I_KIND, width=512, height=512) for p in PROFILES.values()]
    assert times[0] == max(times) and times[-1] == min(times)


async def test_cold_load_then_warm_runs_and_batching(autojump_clock: trio.testing.MockClock) -> None:
    gpu = profile("4090")
    async with open_sim_pool(gpu, SimPoolConfig(serve=("sdxl-turbo",))) as pool:
        assert not pool.status()[0].warm and pool.status()[0].speed_mpx_steps_per_s == 0.0
        t0 = trio.current_time()
        first = await pool.run("sdxl-turbo", TextToImageRequest("a cat", seed=1))
        cold = trio.current_time() - t0
        assert cold > gpu.load_s(9 * 2**30)  # the load is paid once
        assert pool.status()[0].warm and pool.status()[0].speed_mpx_steps_per_s > 0
        t0 = trio.current_time()
        await pool.run("sdxl-turbo", TextToImageRequest("a cat", seed=2))
        warm = trio.current_time() - t0
        assert warm < 0.5 < cold
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for seed in range(8):
                nursery.start_soon(pool.run, "sdxl-turbo", TextToImageRequest("a dog", seed=seed))
        assert trio.current_time() - t0 < 2 * warm  # eight jobs in about one batch's time
        assert pool.stats.runs == 3 and pool.stats.jobs == 10 and pool.stats.loads == 1
        assert isinstance(first, ImageOutput) and first.png.startswith(b"\x89PNG")


async def test_vram_limits_and_lru_eviction(autojump_clock: trio.testing.MockClock) -> None:
    image = _conditioning_image()
    async with open_sim_pool(profile("3060"), SimPoolConfig(serve=("sdxl-turbo", "svd-xt"))) as small:
        with pytest.raises(InsufficientVram):  # SVD-XT needs ~17 GB; a 3060 has 12
            await small.run("svd-xt", ImageToVideoRequest(image=image, seed=1))
        with pytest.raises(UnknownModel):
            await small.run("tiny-sdxl", TextToImageRequest("x", seed=1))
    config = SimPoolConfig(serve=("sdxl-turbo", "svd-xt"))
    async with open_sim_pool(profile("3090"), config) as pool:  # 24 GB: 9 + 17 do not fit together
        await pool.run("sdxl-turbo", TextToImageRequest("x", seed=1))
        video = await pool.run("svd-xt", ImageToVideoRequest(image=image, seed=1, num_frames=4, num_inference_steps=2))
        assert isinstance(video, VideoOutput) and video.num_frames == 4
        warm = {row.name: row.warm for row in pool.status()}
        assert warm == {"sdxl-turbo": False, "svd-xt": True} and pool.stats.evictions == 1


async def test_honest_outputs_agree_perceptually_across_gpus_but_not_bitwise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outputs = []
    for device_seed, gpu in enumerate(("3090", "h100")):
        async with open_sim_pool(profile(gpu), SimPoolConfig(serve=("sdxl-turbo",), device_seed=device_seed)) as pool:
            outputs.append(await pool.run("sdxl-turbo", TextToImageRequest("a cat", seed=7)))
            outputs.append(await pool.run("sdxl-turbo", TextToImageRequest("a cat", seed=8)))
    a, other_seed, b, _ = outputs
    assert isinstance(a, ImageOutput) and isinstance(b, ImageOutput) and isinstance(other_seed, ImageOutput)
    assert a.sha256 != b.sha256  # hardware noise: never bit-identical
    assert hamming(a.phash, b.phash) <= 4
    assert hamming(a.phash, other_seed.phash) >= 16  # another seed is another picture


async def test_cheats_save_time_and_change_the_output(autojump_clock: trio.testing.MockClock) -> None:
    gpu = profile("4090")
    async with open_sim_pool(gpu, SimPoolConfig(serve=("sdxl-turbo",), pinned=("sdxl-turbo",))) as honest:
        good = await honest.run("sdxl-turbo", TextToImageRequest("a cat", seed=7))
    cheat = SimPoolConfig(serve=("sdxl-turbo",), pinned=("sdxl-turbo",), cheat="blank", cheat_share=1.0)
    async with open_sim_pool(gpu, cheat) as cheater:
        t0 = trio.current_time()
        bad = await cheater.run("sdxl-turbo", TextToImageRequest("a cat", seed=7))
        assert trio.current_time() - t0 < 0.05  # the batch window, no device time
    assert isinstance(good, ImageOutput) and isinstance(bad, ImageOutput)
    assert cheater.stats.cheated == 1 and hamming(good.phash, bad.phash) > 10
