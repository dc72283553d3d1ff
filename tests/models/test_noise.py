"""Noise for a seed is the float32 draw, cast: the same on every dtype and torch version."""

from __future__ import annotations

import torch
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl as sdxl_module
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_module
from lpnode.models._noise import draw_noise_in_float32
from lpnode.models.base import make_generator


def test_half_precision_noise_is_the_float32_noise_rounded() -> None:
    draw_noise_in_float32()
    for module in (sdxl_module, euler_a_module):  # latents, and the ancestral sampler's step noise
        half = module.randn_tensor((2, 4, 8, 8), generator=make_generator(7), dtype=torch.float16)
        single = module.randn_tensor((2, 4, 8, 8), generator=make_generator(7), dtype=torch.float32)
        assert half.dtype == torch.float16 and single.dtype == torch.float32
        assert torch.equal(half, single.to(torch.float16))


def test_batched_generators_still_draw_each_element_from_its_own() -> None:
    draw_noise_in_float32()
    pair = sdxl_module.randn_tensor((2, 4, 8, 8), generator=[make_generator(1), make_generator(2)], dtype=torch.float16)
    alone = sdxl_module.randn_tensor((1, 4, 8, 8), generator=make_generator(2), dtype=torch.float16)
    assert torch.equal(pair[1:], alone)


def test_installing_twice_changes_nothing() -> None:
    draw_noise_in_float32()
    first = sdxl_module.randn_tensor
    draw_noise_in_float32()
    assert sdxl_module.randn_tensor is first
