"""GPU benchmark of the warm pool: SDXL-Turbo-size UNet + SDXL VAE, random weights, fp16, 512×512, one step.

Not a test. Full-size architectures are built from config dicts (no download); text encoders are
bypassed with random prompt embeddings, as in the DESIGN.md anchor. Each phase prints one JSON line
and appends it to ``--out``; ``report`` turns those lines into the markdown of docs/benchmarks.md.

    python bench/models.py eager-and-cold --cache DIR --out results.jsonl   # baselines, pool eager, batching, cold compile
    python bench/models.py warm-cache --cache DIR --out results.jsonl       # a new process: compile with the cache filled
    python bench/models.py report results.jsonl

Phases (all in one device call, so ratios compare figures from the same machine and minute):
1. bare diffusers: the StableDiffusionXLPipeline call the pool's adapter makes, timed directly;
2. pool eager: ``await pool.run`` of the same request (includes PNG encoding + fingerprints, which a
   served job needs and the bare call does not do; reported separately);
3. batching: 8 concurrent jobs through the pool (one run_batch) against 8 sequential ones;
4. compiled: a pool with compile="auto" (load + torch.compile + CUDA-graph warm-up timed), then its
   batch-1 latency; ``warm-cache`` repeats that in a fresh process reading the same inductor cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import trio
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from lpnode.models.base import (
    CancelToken,
    Limits,
    ModelAdapter,
    ModelSpec,
    Output,
    PipelineKind,
    ProgressCallback,
    Request,
    StageTimer,
    TextToImageRequest,
    make_generator,
)
from lpnode.models.outputs import ImageOutput
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.models.sd import turbo_scheduler

MODEL = "bench-sdxl-turbo-size"
SIZE = 512
BATCH = 8
REPEATS = 10

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

SPEC = ModelSpec(
    name=MODEL,
    model_id="bench/sdxl-turbo-size-random",
    family="sdxl",
    pipelines=frozenset({PipelineKind.TEXT_TO_IMAGE}),
    limits=Limits(max_pixels=1024 * 1024, max_side=1024, max_steps=50, max_batch=BATCH),
    vram_bytes=9 * 2**30,
    tiny=True,  # random weights: not for sale
    defaults={"width": SIZE, "height": SIZE, "num_inference_steps": 1, "guidance_scale": 0.0},
)


class BenchSDXL(ModelAdapter):
    """Full-size SDXL-Turbo architecture with random weights; prompts become fixed random embeddings."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None) -> None:
        super().__init__(spec, weights_dir)
        self.pipe: StableDiffusionXLPipeline | None = None

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        torch.manual_seed(0)  # bench only: adapters proper never touch the global RNG
        with torch.device(device):  # initialise on the GPU: 2.6B random parameters on a CPU take minutes
            unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)
            vae = AutoencoderKL(**SDXL_VAE).to(dtype)
        # No text encoders or tokenizers: prompts arrive as embeddings (see _generate).
        components: dict[str, Any] = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None}
        components |= {"tokenizer_2": None, "vae": vae, "unet": unet, "scheduler": turbo_scheduler()}
        pipe = StableDiffusionXLPipeline(**components)
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
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

    def _generate(self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback) -> list[Output]:
        timer = StageTimer()
        with timer.stage("pipeline"):
            images = bare_call(self, [r.seed for r in requests], requests[0])
        with timer.stage("encode"):
            outputs: list[Output] = [ImageOutput.from_pil(img) for img in images]
        for out in outputs:
            out.timings_ms.update(timer.ms)
        return outputs


def bare_call(adapter: BenchSDXL, seeds: Sequence[int], request: Request) -> list[Any]:
    """What a plain diffusers runner does: one pipeline call, PIL images out."""
    assert adapter.pipe is not None and isinstance(request, TextToImageRequest)
    device, dtype, n = adapter.device, adapter.dtype, len(seeds)
    embeds = torch.randn(n, 77, 2048, generator=make_generator(1)).to(device, dtype)
    pooled = torch.randn(n, 1280, generator=make_generator(2)).to(device, dtype)
    result = adapter.pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        width=request.width,
        height=request.height,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=0.0,
        generator=[make_generator(s) for s in seeds],
        output_type="pil",
    )
    return list(result.images)


def resolve(name: str, weights_dir: Path | None) -> ModelAdapter:
    return BenchSDXL(SPEC, weights_dir)


def request(seed: int) -> Request:
    return SPEC.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="bench", seed=seed)


def median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


def timed(fn: Any) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


async def timed_async(coro_fn: Any) -> float:
    start = time.perf_counter()
    await coro_fn()
    return time.perf_counter() - start


def emit(out: Path, record: dict[str, Any]) -> None:
    record = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, **record}
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


async def open_pool(compile_setting: str, cache: Path, window_s: float) -> tuple[ModelPool, Any, float]:
    cm = open_model_pool(
        PoolConfig(
            serve=(MODEL,),
            pinned=(MODEL,),
            device="cuda:0",
            batch_window_s=window_s,
            compile=compile_setting,  # type: ignore[arg-type]
            compile_cache_dir=cache,
        ),
        resolve=resolve,
    )
    start = time.perf_counter()
    pool = await cm.__aenter__()
    return pool, cm, time.perf_counter() - start


async def pool_latency(pool: ModelPool, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Wall time of ``await pool.run`` and the adapter's own pipeline and encode stages, in seconds."""
    walls, pipes, encodes = [], [], []
    for i in range(repeats):
        start = time.perf_counter()
        out = await pool.run(MODEL, request(100 + i))
        walls.append(time.perf_counter() - start)
        pipes.append(out.timings_ms.get("pipeline", 0.0) / 1000.0)
        encodes.append(out.timings_ms.get("encode", 0.0) / 1000.0)
    return walls, pipes, encodes


async def bare_in_pool_thread(pool: ModelPool, repeats: int) -> list[float]:
    """The bare pipeline call on the pool's model thread (where its CUDA graphs live), without the pool."""
    slot = pool._slots[MODEL]
    adapter = slot.adapter
    assert isinstance(adapter, BenchSDXL)
    req = request(1)

    def once() -> float:
        with torch.inference_mode():
            return timed(lambda: bare_call(adapter, [1], req))

    return [await pool._in_slot_thread(slot, once) for _ in range(repeats)]


async def pool_batch(pool: ModelPool, n: int) -> float:
    async def one(seed: int) -> None:
        await pool.run(MODEL, request(seed))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, 200 + i)
    return time.perf_counter() - start


async def eager_and_cold(cache: Path, out: Path) -> None:
    # Latency with the batch window off (a lone job would otherwise wait the window for company).
    pool, cm, open_s = await open_pool("off", cache, 0.0)
    adapter = pool._slots[MODEL].adapter
    assert isinstance(adapter, BenchSDXL)
    params = sum(p.numel() for m in adapter._modules().values() for p in m.parameters())
    emit(out, {"phase": "cold_load_eager", "seconds": round(open_s, 2), "params": params})
    req = request(1)
    for _ in range(3):
        timed(lambda: bare_call(adapter, [1], req))
    bare = [timed(lambda: bare_call(adapter, [1], req)) for _ in range(REPEATS)]
    bare8 = [timed(lambda: bare_call(adapter, list(range(BATCH)), req)) for _ in range(5)]
    await pool_latency(pool, 2)
    walls, pipes, encodes = await pool_latency(pool, REPEATS)
    # The same 8 jobs one after another: what a node without batching serves.
    seq_walls = [sum((await pool_latency(pool, BATCH))[0]) for _ in range(2)]
    await cm.__aexit__(None, None, None)
    pool, cm, _ = await open_pool("off", cache, 0.02)
    await pool_batch(pool, BATCH)
    batch_walls = [await pool_batch(pool, BATCH) for _ in range(5)]
    emit(
        out,
        {
            "phase": "eager",
            "bare_diffusers_ms": median_ms(bare),
            "pool_eager_ms": median_ms(walls),
            "pool_pipeline_ms": median_ms(pipes),
            "pool_encode_ms": median_ms(encodes),
            "bare_diffusers_batch8_ms": median_ms(bare8),
            "pool_batch8_wall_ms": median_ms(batch_walls),
            "pool_sequential8_wall_ms": median_ms(seq_walls),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )
    await cm.__aexit__(None, None, None)
    await compiled("compiled_cold", cache, out)


async def compiled(phase: str, cache: Path, out: Path) -> None:
    pool, cm, open_s = await open_pool("auto", cache, 0.0)
    walls, pipes, encodes = await pool_latency(pool, REPEATS)
    bare = await bare_in_pool_thread(pool, REPEATS)
    row = pool.status()[0]
    emit(
        out,
        {
            "phase": phase,
            "load_compile_warmup_s": round(open_s, 2),
            "compiled": list(row.compiled),
            "pool_compiled_ms": median_ms(walls),
            "pool_pipeline_ms": median_ms(pipes),
            "pool_encode_ms": median_ms(encodes),
            "bare_compiled_ms": median_ms(bare),
            "speed_mpx_steps_per_s": row.speed_mpx_steps_per_s,
        },
    )
    await cm.__aexit__(None, None, None)


def report(path: Path) -> str:
    """Markdown table of one run's phases; every ratio is against a baseline of the same run."""
    rows = {r["phase"]: r for r in map(json.loads, path.read_text().splitlines())}
    e, load = rows["eager"], rows["cold_load_eager"]
    bare = e["bare_diffusers_ms"]
    lines = [
        f"GPU: {e['gpu']}, torch {e['torch']}, {load['params'] / 1e9:.2f}B params (UNet + VAE), fp16, "
        f"{SIZE}×{SIZE}, 1 step",
        "",
        "| figure | ms | against bare eager diffusers (batch 1) |",
        "|---|---|---|",
        f"| bare diffusers call, batch 1 (PIL out) | {bare} | 1.00 |",
        f"| pool eager: pipeline stage | {e['pool_pipeline_ms']} | {e['pool_pipeline_ms'] / bare:.2f}× the time |",
        f"| pool eager: PNG + hashes + fingerprints | {e['pool_encode_ms']} | |",
        f"| pool eager: whole `await pool.run` | {e['pool_eager_ms']} | {e['pool_eager_ms'] / bare:.2f}× the time |",
    ]
    for phase, name in (("compiled_cold", "cold cache"), ("compiled_warm", "warm cache")):
        if r := rows.get(phase):
            lines += [
                f"| compiled ({name}): bare call on the pool's thread | {r['bare_compiled_ms']} "
                f"| {bare / r['bare_compiled_ms']:.2f}× faster |",
                f"| compiled ({name}): pool pipeline stage | {r['pool_pipeline_ms']} "
                f"| {bare / r['pool_pipeline_ms']:.2f}× faster |",
                f"| compiled ({name}): whole `await pool.run` (encode {r['pool_encode_ms']} ms) "
                f"| {r['pool_compiled_ms']} | {bare / r['pool_compiled_ms']:.2f}× faster |",
            ]
    seq, b8, bare8 = e["pool_sequential8_wall_ms"], e["pool_batch8_wall_ms"], e["bare_diffusers_batch8_ms"]
    lines += [
        "",
        "| throughput (eager) | ms for 8 images | images/s | ratio |",
        "|---|---|---|---|",
        f"| bare diffusers, batch 1 | {8 * bare:.0f} | {8000 / (8 * bare):.1f} | 1.00 |",
        f"| bare diffusers, batch 8 | {bare8} | {8000 / bare8:.1f} | {8 * bare / bare8:.2f} |",
        f"| pool, 8 jobs one after another | {seq} | {8000 / seq:.1f} | 1.00 |",
        f"| pool, 8 concurrent jobs (one run_batch) | {b8} | {8000 / b8:.1f} | {seq / b8:.2f} |",
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
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("phase", choices=("eager-and-cold", "warm-cache", "report"))
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lpnode-bench-inductor"))
    parser.add_argument("--out", type=Path, default=Path("bench-models.jsonl"))
    args = parser.parse_args(argv)
    if args.phase == "report":
        print(report(args.file or args.out))
    elif args.phase == "eager-and-cold":
        trio.run(eager_and_cold, args.cache, args.out)
    else:
        trio.run(compiled, "compiled_warm", args.cache, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
