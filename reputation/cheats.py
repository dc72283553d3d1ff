"""How a dishonest worker cheats, and how honest workers differ: the two sides a verdict must tell apart.

Cheats (:class:`CheatMode`) are what a worker gains from: less compute (half
the steps, a blank or copied output), a cheaper or wrong model, or a seed of its
own choosing. They are used by a test-only worker flag, by simnet's
adversaries and by calibration; nothing here runs in an honest node.

Honest variants (:class:`HonestVariant`) are the numeric noise that different
hardware puts on the *same* job: another dtype, another attention kernel, and a
1e-3 relative perturbation of the denoiser's input each step, standing in for
another device's rounding. Comparison thresholds must accept all of them.

Everything runs on the CPU with tiny presets in tests and calibration; the
helpers take any :class:`~lpnode.models.base.ModelAdapter`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from lpnode.models import registry
from lpnode.models.base import (
    MAX_SEED,
    ImageToImageRequest,
    ImageToVideoRequest,
    ModelAdapter,
    PipelineKind,
    Request,
    TextToImageRequest,
)
from lpnode.models.outputs import RawImage, RawOutput, RawVideo

__all__ = [
    "CheatMode",
    "Cheater",
    "HonestVariant",
    "applicable_cheats",
    "cheat_output",
    "cheat_request",
    "honest_variant_adapter",
    "other_model_adapter",
]


class CheatMode(StrEnum):
    OTHER_SEED = "other_seed"  # runs the job with a seed of its own (e.g. a cached result's)
    HALF_STEPS = "half_steps"  # half the denoising steps: half the compute
    OTHER_MODEL = "other_model"  # another model of the same architecture (cheaper, or not the one paid for)
    BLANK = "blank"  # an all-black output of the right size: no compute at all
    COPIED = "copied"  # returns a previous job's output: no compute at all


class HonestVariant(StrEnum):
    REFERENCE = "reference"  # float32, the default attention processor
    ATTENTION = "attention"  # diffusers' plain AttnProcessor instead of the SDPA one
    BFLOAT16 = "bfloat16"  # weights and activations in bfloat16
    LATENT_NOISE = "latent_noise"  # 1e-3 relative noise on the network's input at every call


_DIFFUSION = frozenset({PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE, PipelineKind.IMAGE_TO_VIDEO})
LATENT_NOISE_SCALE = 1e-3  # relative to the input's standard deviation
OTHER_MODEL_SEED = 7_777  # the default weight permutation of other_model_adapter


def applicable_cheats(kind: PipelineKind | str) -> tuple[CheatMode, ...]:
    """The cheats that change the output of ``kind``: single-pass pipelines use no seed and no steps."""
    if PipelineKind(kind) in _DIFFUSION:
        return tuple(CheatMode)
    return (CheatMode.OTHER_MODEL, CheatMode.BLANK, CheatMode.COPIED)


def cheat_request(request: Request, mode: CheatMode, rng: random.Random) -> Request:
    """The request a cheater actually runs: another seed or half the steps; other modes keep it."""
    if mode is CheatMode.OTHER_SEED:
        seed = rng.randrange(MAX_SEED)
        return dataclasses.replace(request, seed=seed if seed != request.seed else seed + 1)
    if mode is CheatMode.HALF_STEPS and isinstance(request, TextToImageRequest | ImageToVideoRequest):
        return dataclasses.replace(request, num_inference_steps=max(1, request.num_inference_steps // 2))
    if mode is CheatMode.HALF_STEPS and isinstance(request, ImageToImageRequest):
        # img2img runs int(steps × strength) steps; keep at least one so the request stays valid.
        floor = math.ceil(1 / request.strength)
        steps = max(floor, request.num_inference_steps // 2)
        return dataclasses.replace(request, num_inference_steps=min(steps, request.num_inference_steps))
    return request


def cheat_output(raw: RawOutput, mode: CheatMode, previous: RawOutput | None = None) -> RawOutput:
    """The output a cheater returns instead of ``raw``: black, or ``previous`` (black when there is none)."""
    if mode is CheatMode.COPIED and previous is not None:
        return previous
    if mode in (CheatMode.BLANK, CheatMode.COPIED):
        if isinstance(raw, RawImage):
            return RawImage(np.zeros_like(raw.pixels))
        return RawVideo(tuple(np.zeros_like(f) for f in raw.frames), raw.fps)
    return raw


class Cheater:
    """A worker that cheats with ``mode`` on a share ``rate`` of its jobs (seeded), honest otherwise.

    ``other_model`` serves OTHER_MODEL cheats. BLANK and COPIED run the honest job
    first only to learn the output's shape; a real cheater would skip it, and the
    comparison sees the same bytes either way.
    """

    def __init__(
        self, mode: CheatMode, rate: float = 1.0, *, rng: random.Random, other_model: ModelAdapter | None = None
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"cheat rate must be in [0, 1], got {rate}")
        if mode is CheatMode.OTHER_MODEL and other_model is None:
            raise ValueError("an other_model cheater needs the other model")
        self.mode, self.rate, self.rng, self.other_model = mode, rate, rng, other_model
        self.previous: RawOutput | None = None  # the last output returned, copied by COPIED
        self.cheated = 0  # jobs cheated on so far

    def generate(self, adapter: ModelAdapter, request: Request) -> RawOutput:
        cheat = self.rng.random() < self.rate
        if not cheat:
            raw = adapter.generate(request)
        elif self.mode is CheatMode.OTHER_MODEL:
            assert self.other_model is not None
            raw = self.other_model.generate(request)
        else:
            raw = adapter.generate(cheat_request(request, self.mode, self.rng))
            raw = cheat_output(raw, self.mode, self.previous)
        self.cheated += cheat
        self.previous = raw
        return raw


# ---------------------------------------------------------------- models for cheats and honest variants


def _denoiser(adapter: ModelAdapter) -> torch.nn.Module:
    """The network called once per step (the UNet), or the single network of a one-pass adapter."""
    modules = dict(adapter._modules())  # a loaded adapter's live modules
    if "unet" in modules:
        return modules["unet"]
    if len(modules) != 1:
        raise ValueError(f"{adapter.spec.name}: no single network to perturb among {sorted(modules)}")
    return next(iter(modules.values()))


def other_model_adapter(name: str, seed: int = OTHER_MODEL_SEED, device: str = "cpu") -> ModelAdapter:
    """Preset ``name`` loaded with every weight tensor's values shuffled by ``seed``.

    Same architecture and the same weight statistics, other weights: a stand-in
    for a model of the right family that is not the one the job asked for. The
    adapter still reports the real preset's weights hash, as a lying worker would.
    """
    adapter = registry.resolve(name)
    adapter.load(device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adapter._modules().values():
            for param in module.parameters():
                flat = param.detach().reshape(-1)
                order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
                param.copy_(flat[order].reshape(param.shape))
    return adapter


def honest_variant_adapter(name: str, variant: HonestVariant, *, seed: int = 0, device: str = "cpu") -> ModelAdapter:
    """Preset ``name`` loaded as another honest node might run it (``seed`` drives LATENT_NOISE)."""
    adapter = registry.resolve(name)
    adapter.load(device, torch.bfloat16 if variant is HonestVariant.BFLOAT16 else torch.float32)
    if variant is HonestVariant.ATTENTION:
        from diffusers.models.attention_processor import AttnProcessor

        for module in adapter._modules().values():
            setter: Callable[[Any], None] | None = getattr(module, "set_attn_processor", None)
            if setter is not None:
                setter(AttnProcessor())
    elif variant is HonestVariant.LATENT_NOISE:
        _denoiser(adapter).register_forward_pre_hook(_noise_hook(seed), with_kwargs=True)
    return adapter


def _noise_hook(seed: int) -> Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], Any]:
    generator = torch.Generator().manual_seed(seed)

    def perturb(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        sample = args[0]
        noise = torch.randn(sample.shape, generator=generator, dtype=torch.float32).to(sample.device, sample.dtype)
        scale = LATENT_NOISE_SCALE * float(sample.float().std())
        return (sample + scale * noise, *args[1:]), kwargs

    return perturb
