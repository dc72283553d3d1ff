"""GPU benchmark of the warm pool: SDXL-Turbo-size UNet + SDXL VAE (512×512, one step) and SVD-XT-size video.

Not a test. Full-size architectures are built from config dicts with random weights, fp16 (no download);
SDXL's text encoders are bypassed with random prompt embeddings, as in the DESIGN.md anchor. Each phase
prints one JSON line and appends it to ``--out``; ``report`` turns those lines into docs/benchmarks.md's markdown.

    python bench/models.py eager-and-cold --cache DIR --out results.jsonl   # baselines, pool eager, batching, cold compile
    python bench/models.py warm-cache --cache DIR --out results.jsonl       # a new process: compile with the cache filled
    python bench/models.py svd --out results.jsonl                          # SVD-XT-size, eager, SVD_FRAMES frames
    python bench/models.py ab --out results.jsonl                           # interleaved bare eager vs pool eager
    python bench/models.py ab-and-compiled --cache DIR --out results.jsonl  # that, then the compiled phase
    python bench/models.py report results.jsonl

``--smoke`` runs every phase on the CPU with tiny configs, to check the code before spending GPU time.

Phases (all in one device call, so ratios compare figures from the same machine and minute):
1. bare diffusers: the StableDiffusionXLPipeline call a plain runner makes (PIL images out), timed directly;
2. pool eager: ``await pool.run`` of the same request, split into the device stage (``timings_ms["device"]``)
   and the output stage (PNG + hashes + fingerprints, ``"encode"``), which runs outside the device limiter;
3. batching: 8 concurrent jobs (one batch) against 8 awaited one after another, and a sustained stream of
   concurrent jobs with batches of up to 8 against a pool whose model takes batches of 1;
4. compiled: a pool with compile="auto" (load + torch.compile + CUDA-graph warm-up timed), then its batch-1
   latency and a batch-1 stream; ``warm-cache`` repeats that in a fresh process reading the same inductor cache;
5. svd: the SVD-XT-size pipeline, bare call against ``await pool.run`` (H.264 encoding in the output stage);
6. ab: the "≤ 3 % overhead when both are eager" question. Eager figures of this launch-bound UNet move by
   ±25 % between phases, so single medians taken minutes apart cannot answer it: this phase alternates one
   bare call and one ``await pool.run`` (which goes first alternates too), AB_PAIRS times, and reports the
   median of the per-pair ratios with a seeded bootstrap 95 % interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
import trio
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import AutoencoderKLTemporalDecoder
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import StableVideoDiffusionPipeline
from lpnode.models._placement import cache_placement, uncached_placement
from lpnode.models.base import (
    CancelToken,
    Limits,
    ModelAdapter,
    ModelSpec,
    PipelineKind,
    ProgressCallback,
    RawOutput,
    Request,
    StageTimer,
    TextToImageRequest,
    make_generator,
    to_uint8_rgb,
)
from lpnode.models.outputs import RawImage, finish_output
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.models.sd import build_tiny_sdxl_modules, turbo_scheduler
from lpnode.models.svd import TINY_SVD, StableVideoDiffusionAdapter, build_tiny_svd_modules, svd_scheduler
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

MODEL = "bench-sdxl-turbo-size"
MODEL_B1 = "bench-sdxl-turbo-size-b1"  # the same model taking batches of 1: the unbatched stream, and compiled runs
SVD_MODEL = "bench-svd-xt-size"
BATCH = 8
AB_PAIRS = 60  # interleaved bare/pool pairs in the ab phase
SVD_FRAMES = 14  # SVD-XT makes 25; 14 keeps the phase near a minute (DESIGN.md: 10.9 s a call at 25 steps)

# stabilityai/sdxl-turbo unet/config.json (2.57B parameters).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids × 256 + pooled text 1280
    "norm_num_groups": 32,
}
# SDXL VAE; force_upcast off as with the fp16-fixed VAE nodes serve (upcasting each call defeats CUDA graphs).
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

# stabilityai/stable-video-diffusion-img2vid-xt: unet (the class defaults are SVD's), vae and image_encoder configs.
SVD_UNET: dict[str, Any] = {"sample_size": 96, "num_frames": 25}
SVD_VAE: dict[str, Any] = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "sample_size": 768,
}
SVD_IMAGE_ENCODER: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What differs between the GPU run and the CPU smoke run."""

    device: str
    size: int  # output side, pixels
    repeats: int  # timed calls per latency figure
    stream_jobs: int  # concurrent jobs in a throughput stream
    svd_size: tuple[int, int]  # width, height
    svd_steps: int


GPU = Setup("cuda:0", 512, 10, 32, (1024, 576), 25)
SMOKE = Setup("cpu", 64, 2, 8, (64, 64), 2)
SETUP = GPU  # main() switches to SMOKE for --smoke


def sdxl_spec(name: str, max_batch: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        model_id="bench/sdxl-turbo-size-random",
        family="sdxl",
        pipelines=frozenset({PipelineKind.TEXT_TO_IMAGE}),
        limits=Limits(max_pixels=1024 * 1024, max_side=1024, max_steps=50, max_batch=max_batch),
        vram_bytes=9 * 2**30 if SETUP is GPU else 2**27,
        tiny=True,  # random weights: not for sale
        defaults={"width": SETUP.size, "height": SETUP.size, "num_inference_steps": 1, "guidance_scale": 0.0},
    )


def svd_spec() -> ModelSpec:
    width, height = SETUP.svd_size
    limits = Limits(max_pixels=width * height, max_side=max(width, height), max_steps=50, max_frames=25)
    defaults = {"width": width, "height": height, "num_frames": SVD_FRAMES, "num_inference_steps": SETUP.svd_steps}
    defaults |= {"fps": 7, "decode_chunk_size": 8}
    return dataclasses.replace(TINY_SVD, name=SVD_MODEL, model_id="bench/svd-xt-size-random", limits=limits,
                               vram_bytes=17 * 2**30 if SETUP is GPU else 2**27, defaults=defaults)  # fmt: skip


class BenchSDXL(ModelAdapter):
    """Full-size SDXL-Turbo architecture with random weights; prompts become fixed random embeddings."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None) -> None:
        super().__init__(spec, weights_dir)
        self.pipe: StableDiffusionXLPipeline | None = None

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        torch.manual_seed(0)  # bench only: adapters proper never touch the global RNG
        if SETUP is SMOKE:
            tiny = build_tiny_sdxl_modules()
            unet, vae = tiny["unet"].to(device, dtype), tiny["vae"].to(device, dtype)
        else:
            with torch.device(device):  # initialise on the GPU: 2.6B random parameters on a CPU take minutes
                unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)
                vae = AutoencoderKL(**SDXL_VAE).to(dtype)
        # No text encoders or tokenizers: prompts arrive as embeddings (see bare_call).
        components: dict[str, Any] = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None}
        components |= {"tokenizer_2": None, "vae": vae, "unet": unet, "scheduler": turbo_scheduler()}
        pipe = StableDiffusionXLPipeline(**components)
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        cache_placement(pipe)  # as StableDiffusionXLAdapter does; ModelAdapter.load does the models
        self.pipe = pipe

    def _unload(self) -> None:
        self.pipe = None

    def _modules(self) -> Mapping[str, torch.nn.Module]:
        return {} if self.pipe is None else {"unet": self.pipe.unet, "vae": self.pipe.vae}

    def _compute_weights_sha256(self) -> str:
        return "0" * 64

    def batch_key(self, request: Request) -> Hashable | None:
        assert isinstance(request, TextToImageRequest)
        return (request.width, request.height, request.num_inference_steps)

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        # As StableDiffusionXLAdapter does: tensors out, quantised on the device, no encoding here.
        timer = StageTimer()
        with timer.stage("pipeline"):
            seeds = [r.seed for r in requests]
            images = to_uint8_rgb(bare_call(self, seeds, requests[0], output_type="pt", plain=False))
        return [RawImage(image, dict(timer.ms)) for image in images]


def bare_call(
    adapter: BenchSDXL, seeds: Sequence[int], request: Request, output_type: str = "pil", plain: bool = True
) -> Any:
    """What a plain diffusers runner does: one pipeline call, PIL images out.

    ``plain`` runs it with diffusers' own ``.device``/``.dtype`` (each a walk over every
    submodule), as a runner that does not know about models/_placement.py would; the
    pool's path and the compiled phase (whose CUDA graphs were recorded with the cache,
    and a class swap could make dynamo recompile) pass False.
    """
    assert adapter.pipe is not None and isinstance(request, TextToImageRequest)
    if plain:
        with uncached_placement(adapter.pipe, adapter.pipe.unet, adapter.pipe.vae):
            return bare_call(adapter, seeds, request, output_type, plain=False)
    device, dtype, n = adapter.device, adapter.dtype, len(seeds)
    unet = adapter.pipe.unet.config
    pooled_dim = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
    embeds = torch.randn(n, 77, unet.cross_attention_dim, generator=make_generator(1)).to(device, dtype)
    pooled = torch.randn(n, pooled_dim, generator=make_generator(2)).to(device, dtype)
    result = adapter.pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        width=request.width,
        height=request.height,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=0.0,
        generator=[make_generator(s) for s in seeds],
        output_type=output_type,
    )
    return result.images


class BenchSVD(StableVideoDiffusionAdapter):
    """SVD-XT-size architecture with random weights."""

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        if SETUP is SMOKE:
            modules = build_tiny_svd_modules()
        else:
            with torch.device(device):
                modules = {
                    "unet": UNetSpatioTemporalConditionModel(**SVD_UNET),
                    "vae": AutoencoderKLTemporalDecoder(**SVD_VAE),
                    "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_IMAGE_ENCODER)),
                }
        components: dict[str, Any] = {**modules, "scheduler": svd_scheduler()}
        pipe = StableVideoDiffusionPipeline(**components, feature_extractor=CLIPImageProcessor())
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        pipe.to(device, dtype)
        self._pipe = pipe

    def _compute_weights_sha256(self) -> str:
        return "0" * 64


def resolve(name: str, weights_dir: Path | None) -> ModelAdapter:
    if name == SVD_MODEL:
        return BenchSVD(svd_spec(), weights_dir)
    return BenchSDXL(sdxl_spec(name, 1 if name == MODEL_B1 else BATCH), weights_dir)


def request(seed: int) -> Request:
    return sdxl_spec(MODEL, BATCH).build_request(PipelineKind.TEXT_TO_IMAGE, prompt="bench", seed=seed)


def median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


def sync() -> None:
    if torch.cuda.is_available() and SETUP is GPU:
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def emit(out: Path, record: dict[str, Any]) -> None:
    gpu = torch.cuda.get_device_name(0) if SETUP is GPU else "cpu (smoke)"
    record = {"gpu": gpu, "torch": torch.__version__, **record}
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


@asynccontextmanager
async def open_pool(
    model: str, compile_setting: str, cache: Path, window_s: float
) -> AsyncIterator[tuple[ModelPool, float]]:
    """A pool serving ``model``, warm when it yields, and the seconds opening it took."""
    config = PoolConfig(
        serve=(model,),
        pinned=(model,),
        device=SETUP.device,
        dtype=torch.float16 if SETUP is GPU else torch.float32,
        batch_window_s=window_s,
        compile=compile_setting,  # type: ignore[arg-type]
        compile_cache_dir=cache,
    )
    start = time.perf_counter()
    async with open_model_pool(config, resolve=resolve) as pool:
        row = pool.status()[0]
        assert row.warm, f"{model} did not load: {row.problem}"  # a pinned load failure only logs
        yield pool, time.perf_counter() - start


async def pool_latency(pool: ModelPool, model: str, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``await pool.run`` one job at a time, and its device and output stages."""
    got: dict[str, list[float]] = {"wall": [], "device": [], "encode": []}
    for i in range(repeats):
        start = time.perf_counter()
        out = await pool.run(model, request(100 + i))
        got["wall"].append(time.perf_counter() - start)
        got["device"].append(out.timings_ms["device"] / 1000.0)
        got["encode"].append(out.timings_ms["encode"] / 1000.0)
    return got


async def bare_in_pool_thread(pool: ModelPool, model: str, repeats: int) -> list[float]:
    """The bare pipeline call on the pool's model thread (where its CUDA graphs live), without the pool."""
    slot = pool._slots[model]
    adapter = slot.adapter
    assert isinstance(adapter, BenchSDXL)
    req = request(1)

    def once() -> float:
        with torch.inference_mode():
            return timed(lambda: bare_call(adapter, [1], req, plain=False))

    return [await pool._in_slot_thread(slot, once) for _ in range(repeats)]


async def concurrent_jobs(pool: ModelPool, model: str, n: int) -> tuple[float, list[float]]:
    """Wall seconds for ``n`` jobs submitted at once, and each one's device-stage seconds."""
    device: list[float] = []

    async def one(seed: int) -> None:
        out = await pool.run(model, request(seed))
        device.append(out.timings_ms["device"] / 1000.0)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, 200 + i)
    return time.perf_counter() - start, device


async def repeat_async(times: int, fn: Callable[[], Awaitable[float]]) -> list[float]:
    return [await fn() for _ in range(times)]


def encode_parallelism(adapter: BenchSDXL) -> dict[str, float]:
    """The output stage of 8 images, one after another and on 8 threads (does it release the GIL?)."""
    images = bare_call(adapter, list(range(BATCH)), request(1))
    raws = [RawImage.from_pil(image) for image in images]
    serial = min(timed(lambda: [finish_output(r) for r in raws]) for _ in range(3))
    with ThreadPoolExecutor(BATCH) as executor:
        parallel = min(timed(lambda: list(executor.map(finish_output, raws))) for _ in range(3))
    return {
        "encode_serial_ms_per_image": round(serial * 1000 / BATCH, 2),
        "encode_8_threads_ms": round(parallel * 1000, 2),
    }


async def eager_and_cold(cache: Path, out: Path) -> None:
    n = SETUP.stream_jobs
    # Latency with the batch window off (a lone job would otherwise wait the window for company).
    async with open_pool(MODEL, "off", cache, 0.0) as (pool, open_s):
        adapter = pool._slots[MODEL].adapter
        assert isinstance(adapter, BenchSDXL)
        emit(out, {"phase": "cold_load_eager", "seconds": round(open_s, 2), "params": adapter.param_count()})
        req = request(1)
        for _ in range(3):
            timed(lambda: bare_call(adapter, [1], req))
        bare = [timed(lambda: bare_call(adapter, [1], req)) for _ in range(SETUP.repeats)]
        bare8 = [timed(lambda: bare_call(adapter, list(range(BATCH)), req)) for _ in range(5)]
        encode = encode_parallelism(adapter)
        await pool_latency(pool, MODEL, 2)
        lat = await pool_latency(pool, MODEL, SETUP.repeats)
        # The same 8 jobs awaited one after another: what a node without batching or concurrency serves.
        seq_walls = [sum((await pool_latency(pool, MODEL, BATCH))["wall"]) for _ in range(2)]
    async with open_pool(MODEL, "off", cache, 0.02) as (pool, _):
        await concurrent_jobs(pool, MODEL, BATCH)
        batch_walls = await repeat_async(5, lambda: concurrent_jobs_wall(pool, MODEL, BATCH))
        stream8, stream8_device = [], []
        for _ in range(3):
            wall, device = await concurrent_jobs(pool, MODEL, n)
            stream8.append(wall)
            stream8_device += device
    async with open_pool(MODEL_B1, "off", cache, 0.0) as (pool, _):
        await concurrent_jobs(pool, MODEL_B1, BATCH)
        stream1, stream1_device = [], []
        for _ in range(3):
            wall, device = await concurrent_jobs(pool, MODEL_B1, n)
            stream1.append(wall)
            stream1_device += device
    emit(
        out,
        {
            "phase": "eager",
            "bare_diffusers_ms": median_ms(bare),
            "pool_eager_ms": median_ms(lat["wall"]),
            "pool_device_ms": median_ms(lat["device"]),
            "pool_encode_ms": median_ms(lat["encode"]),
            "bare_diffusers_batch8_ms": median_ms(bare8),
            "pool_batch8_wall_ms": median_ms(batch_walls),
            "pool_sequential8_wall_ms": median_ms(seq_walls),
            "stream_jobs": n,
            "pool_stream_batch8_ms": median_ms(stream8),
            "pool_stream_batch8_device_ms": median_ms(stream8_device),
            "pool_stream_batch1_ms": median_ms(stream1),
            "pool_stream_batch1_device_ms": median_ms(stream1_device),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if SETUP is GPU else 0.0,
            **encode,
        },
    )
    await compiled("compiled_cold", cache, out)


async def concurrent_jobs_wall(pool: ModelPool, model: str, n: int) -> float:
    return (await concurrent_jobs(pool, model, n))[0]


async def compiled(phase: str, cache: Path, out: Path) -> None:
    # Batches of 1 only: every other batch size would compile and record CUDA graphs again.
    async with open_pool(MODEL_B1, "auto", cache, 0.0) as (pool, open_s):
        lat = await pool_latency(pool, MODEL_B1, SETUP.repeats)
        bare = await bare_in_pool_thread(pool, MODEL_B1, SETUP.repeats)
        streams = [await concurrent_jobs(pool, MODEL_B1, SETUP.stream_jobs) for _ in range(3)]
        row = pool.status()[0]
    record: dict[str, Any] = {"phase": phase, "load_compile_warmup_s": round(open_s, 2), "compiled": list(row.compiled)}
    record |= {"pool_compiled_ms": median_ms(lat["wall"]), "pool_device_ms": median_ms(lat["device"])}
    record |= {"pool_encode_ms": median_ms(lat["encode"]), "bare_compiled_ms": median_ms(bare)}
    record |= {"stream_jobs": SETUP.stream_jobs, "pool_stream_batch1_ms": median_ms([w for w, _ in streams])}
    record |= {"pool_stream_batch1_device_ms": median_ms([d for _, ds in streams for d in ds])}
    emit(out, record | {"speed_mpx_steps_per_s": row.speed_mpx_steps_per_s})


async def svd(out: Path) -> None:
    width, height = SETUP.svd_size
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(buf, format="PNG")
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    async with open_pool(SVD_MODEL, "off", Path("/tmp/lpnode-bench-unused"), 0.0) as (pool, open_s):
        adapter = pool._slots[SVD_MODEL].adapter
        assert isinstance(adapter, BenchSVD) and adapter._pipe is not None
        pipe = adapter._pipe
        req = adapter.spec.build_request(PipelineKind.IMAGE_TO_VIDEO, image=buf.getvalue(), seed=3)

        def bare_once() -> Any:
            with torch.inference_mode():
                return pipe(image=image, width=width, height=height, num_frames=SVD_FRAMES,
                            num_inference_steps=SETUP.svd_steps, decode_chunk_size=8,
                            generator=make_generator(3), output_type="pil")  # fmt: skip

        # On the model's own thread, as the pool runs it.
        first = await pool._in_slot_thread(pool._slots[SVD_MODEL], lambda: timed(bare_once))
        bare = await pool._in_slot_thread(pool._slots[SVD_MODEL], lambda: timed(bare_once))
        start = time.perf_counter()
        video = await pool.run(SVD_MODEL, req)
        wall = time.perf_counter() - start
        params = adapter.param_count()
    emit(
        out,
        {
            "phase": "svd",
            "params": params,
            "frames": SVD_FRAMES,
            "steps": SETUP.svd_steps,
            "size": f"{width}x{height}",
            "load_s": round(open_s, 2),
            "bare_first_s": round(first, 2),
            "bare_s": round(bare, 2),
            "pool_s": round(wall, 2),
            "pool_device_s": round(video.timings_ms["device"] / 1000, 2),
            "pool_encode_s": round(video.timings_ms["encode"] / 1000, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if SETUP is GPU else 0.0,
        },
    )


def bootstrap_median_ci(values: Sequence[float], rounds: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the median of ``values`` (seeded: the same data, the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


async def ab(out: Path) -> None:
    """Interleaved pairs: a bare eager diffusers call and an eager ``await pool.run``, on the same thread."""
    async with open_pool(MODEL_B1, "off", Path("/tmp/lpnode-bench-unused"), 0.0) as (pool, _):
        slot = pool._slots[MODEL_B1]
        adapter = slot.adapter
        assert isinstance(adapter, BenchSDXL)
        req = request(1)

        def bare_once() -> float:
            with torch.inference_mode():
                return timed(lambda: bare_call(adapter, [1], req))

        async def pool_once(seed: int) -> tuple[float, float, float]:
            sync()
            start = time.perf_counter()
            out = await pool.run(MODEL_B1, request(seed))
            return time.perf_counter() - start, out.timings_ms["device"] / 1000, out.timings_ms["encode"] / 1000

        for i in range(5):
            await pool._in_slot_thread(slot, bare_once)
            await pool_once(900 + i)
        got: dict[str, list[float]] = {"bare": [], "wall": [], "device": [], "encode": []}
        for i in range(SETUP.repeats * 6 if SETUP is SMOKE else AB_PAIRS):
            for kind in ("bare", "pool") if i % 2 == 0 else ("pool", "bare"):
                if kind == "bare":
                    got["bare"].append(await pool._in_slot_thread(slot, bare_once))
                else:
                    wall, device, encode = await pool_once(i)
                    got["wall"].append(wall)
                    got["device"].append(device)
                    got["encode"].append(encode)
    record: dict[str, Any] = {"phase": "ab", "pairs": len(got["bare"])}
    record |= {f"{k}_ms": median_ms(v) for k, v in got.items()}
    for name in ("device", "wall"):
        ratios = [p / b for p, b in zip(got[name], got["bare"], strict=True)]
        low, high = bootstrap_median_ci(ratios)
        record |= {
            f"{name}_over_bare": round(statistics.median(ratios), 4),
            f"{name}_over_bare_ci": [round(low, 4), round(high, 4)],
        }
    record["bare_spread_ms"] = [round(min(got["bare"]) * 1000, 2), round(max(got["bare"]) * 1000, 2)]
    emit(out, record)


def serial_output_ms(pixels: Any) -> float:
    """The output stage as it was before the banded PNG: everything on the calling thread."""
    import hashlib

    import imagehash
    from lpnode.models.png import encode_png_array

    def once() -> None:
        png = encode_png_array(pixels)
        hashlib.sha256(png).hexdigest()
        hashlib.sha256(pixels.data).hexdigest()
        gray = Image.fromarray(pixels, mode="RGB").convert("L")
        str(imagehash.phash(gray)), str(imagehash.dhash(gray))

    return min(timed(once) for _ in range(10)) * 1000


async def profile(cache: Path, out: Path, trace: Path | None) -> None:
    """Where a compiled job's time goes: GPU busy time against the wall, and the output stage serial vs banded."""
    from lpnode.models.outputs import ImageOutput

    async with open_pool(MODEL_B1, "auto", cache, 0.0) as (pool, open_s):
        slot = pool._slots[MODEL_B1]
        adapter = slot.adapter
        lat = await pool_latency(pool, MODEL_B1, SETUP.repeats)
        raw = (await pool._in_slot_thread(slot, lambda: adapter.generate_batch([request(5)])))[0]
        assert isinstance(raw, RawImage)
        serial = serial_output_ms(raw.pixels)
        banded = min(timed(lambda: ImageOutput.from_array(raw.pixels)) for _ in range(10)) * 1000

        def profiled() -> dict[str, Any]:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if SETUP is GPU else [])
            walls = []
            with torch_profile(activities=activities) as prof:
                for seed in (300, 301, 302):
                    walls.append(timed(lambda seed=seed: adapter.generate_batch([request(seed)])))
            if trace is not None:
                prof.export_chrome_trace(str(trace))
            table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
            table_gpu = (
                prof.key_averages().table(sort_by="self_device_time_total", row_limit=30) if SETUP is GPU else ""
            )
            return {"walls_ms": [round(w * 1000, 2) for w in walls], "cpu": table_cpu, "gpu": table_gpu}

        prof = await pool._in_slot_thread(slot, profiled)
    print(prof["cpu"])
    print(prof["gpu"])
    record: dict[str, Any] = {"phase": "profile", "load_compile_warmup_s": round(open_s, 2)}
    record |= {"pool_compiled_ms": median_ms(lat["wall"]), "pool_device_ms": median_ms(lat["device"])}
    record |= {"pool_encode_ms": median_ms(lat["encode"]), "output_serial_ms": round(serial, 2)}
    record |= {"output_banded_ms": round(banded, 2), "profiled_walls_ms": prof["walls_ms"]}
    emit(out, record)


async def ab_and_compiled(cache: Path, out: Path) -> None:
    await ab(out)
    await compiled("compiled_cold", cache, out)


def speed(base_ms: float, ms: float) -> str:
    return f"{base_ms / ms:.2f}× faster" if ms <= base_ms else f"{ms / base_ms:.2f}× slower"


def report(path: Path) -> str:
    """Markdown tables of one run's phases; every ratio is against a baseline of the same run."""
    rows = {r["phase"]: r for r in map(json.loads, path.read_text().splitlines())}
    e, load = rows["eager"], rows["cold_load_eager"]
    bare = e["bare_diffusers_ms"]
    lines = [
        f"GPU: {e['gpu']}, torch {e['torch']}, {load['params'] / 1e9:.2f}B params (UNet + VAE), fp16, "
        f"{SETUP.size}×{SETUP.size}, 1 step",
        "",
        "| batch-1 latency, one job at a time | ms | against bare eager diffusers (batch 1) |",
        "|---|---|---|",
        f"| bare diffusers call (PIL out) | {bare} | 1.00 |",
        f"| pool eager: device stage | {e['pool_device_ms']} | {speed(bare, e['pool_device_ms'])} |",
        f"| pool eager: output stage (PNG + hashes + fingerprints) | {e['pool_encode_ms']} | |",
        f"| pool eager: whole `await pool.run` | {e['pool_eager_ms']} | {speed(bare, e['pool_eager_ms'])} |",
    ]
    for phase, name in (("compiled_cold", "cold cache"), ("compiled_warm", "warm cache")):
        if r := rows.get(phase):
            lines += [
                f"| compiled ({name}): bare call on the pool's thread | {r['bare_compiled_ms']} "
                f"| {speed(bare, r['bare_compiled_ms'])} |",
                f"| compiled ({name}): pool device stage | {r['pool_device_ms']} | {speed(bare, r['pool_device_ms'])} |",
                f"| compiled ({name}): whole `await pool.run` (output stage {r['pool_encode_ms']} ms) "
                f"| {r['pool_compiled_ms']} | {speed(bare, r['pool_compiled_ms'])} |",
            ]
    seq, b8, bare8 = e["pool_sequential8_wall_ms"], e["pool_batch8_wall_ms"], e["bare_diffusers_batch8_ms"]
    n, s1, s8 = e["stream_jobs"], e["pool_stream_batch1_ms"], e["pool_stream_batch8_ms"]

    def row(name: str, images: int, ms: float, pool_base_ms: float | None = None) -> str:
        own = f"{pool_base_ms / ms:.2f}" if pool_base_ms else ""
        return f"| {name} | {images} | {ms:.0f} | {1000 * images / ms:.1f} | {bare * images / ms:.2f} | {own} |"

    lines += [
        "",
        "| throughput | images | ms | images/s | × bare eager batch 1 | × the pool's own batch-1 row |",
        "|---|---|---|---|---|---|",
        row("bare diffusers eager, batch 1", 8, 8 * bare),
        row("bare diffusers eager, batch 8", 8, bare8),
        row("pool eager, 8 jobs awaited one after another", 8, seq, seq),
        row("pool eager, 8 concurrent jobs (one batch)", 8, b8, seq),
        row(
            f"pool eager, {n} concurrent jobs, batches of 1 (device stage {e['pool_stream_batch1_device_ms']} ms)",
            n,
            s1,
            s1,
        ),
        row(
            f"pool eager, {n} concurrent jobs, batches of 8 (device stage {e['pool_stream_batch8_device_ms']} ms)",
            n,
            s8,
            s1,
        ),
    ]
    for phase, name in (("compiled_cold", "cold cache"), ("compiled_warm", "warm cache")):
        if r := rows.get(phase):
            label = f"pool compiled ({name}), {r['stream_jobs']} concurrent jobs, batches of 1 (device stage {r['pool_stream_batch1_device_ms']} ms)"
            lines.append(row(label, r["stream_jobs"], r["pool_stream_batch1_ms"]))
    lines += [
        "",
        f"Output stage of 8 images on the GPU machine's CPU: {e['encode_serial_ms_per_image']} ms an image one "
        f"after another, {e['encode_8_threads_ms']} ms for all 8 on 8 threads.",
        "",
        "| start-up | s |",
        "|---|---|",
        f"| cold load, eager (random init on the GPU, no disk read) | {load['seconds']} |",
    ]
    for phase, name in (("compiled_cold", "empty"), ("compiled_warm", "filled")):
        if r := rows.get(phase):
            lines.append(
                f"| load + compile + CUDA-graph warm-up, inductor cache {name} | {r['load_compile_warmup_s']} |"
            )
    if v := rows.get("svd"):
        lines += [
            "",
            f"SVD-XT-size ({v['params'] / 1e9:.2f}B params), eager, {v['size']}, {v['frames']} frames, "
            f"{v['steps']} steps: bare call {v['bare_s']} s (first {v['bare_first_s']} s); `await pool.run` "
            f"{v['pool_s']} s = device stage {v['pool_device_s']} s + H.264 output stage {v['pool_encode_s']} s "
            f"({v['pool_device_s'] / v['bare_s']:.2f}× the bare call on the device); peak {v['peak_gib']} GiB.",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    global SETUP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "phase", choices=("eager-and-cold", "warm-cache", "svd", "ab", "ab-and-compiled", "profile", "report")
    )
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lpnode-bench-inductor"))
    parser.add_argument("--out", type=Path, default=Path("bench-models.jsonl"))
    parser.add_argument("--trace", type=Path, default=None, help="profile: write a Chrome trace here")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: checks the code, not speed")
    args = parser.parse_args(argv)
    if args.smoke:
        SETUP = SMOKE
    if args.phase == "report":
        print(report(args.file or args.out))
    elif args.phase == "eager-and-cold":
        trio.run(eager_and_cold, args.cache, args.out)
    elif args.phase == "svd":
        trio.run(svd, args.out)
    elif args.phase == "ab":
        trio.run(ab, args.out)
    elif args.phase == "profile":
        trio.run(profile, args.cache, args.out, args.trace)
    elif args.phase == "ab-and-compiled":
        trio.run(ab_and_compiled, args.cache, args.out)
    else:
        trio.run(compiled, "compiled_warm", args.cache, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
