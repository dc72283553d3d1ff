"""Noise drawn in float32, whatever the model's dtype, so a seed means one thing on every node.

diffusers draws its noise (initial latents, image noise augmentation, ancestral
sampler steps) with ``randn_tensor(..., dtype=<the model's dtype>)``. On a CPU
generator a float16 draw is not a float32 draw cast down, and which float16
numbers come out has changed between torch releases (measured: torch 2.11 and
2.13 give unrelated fp16 noise for one seed, identical fp32 noise). Two honest
nodes on different torch versions, or one in fp16 and one in fp32, would then
make unrelated images from the same job, and the spot checks would blame them
as cheaters. Drawing in float32 and casting removes the dependency: fp16 noise
becomes the fp32 noise rounded, the same everywhere.

diffusers' modules import ``randn_tensor`` by name, so :func:`draw_noise_in_float32`
rebinds it in every loaded diffusers module that holds the original. Pipelines
call it after importing their pipeline modules (at load); calling it again is harmless.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from diffusers.utils import torch_utils

_original = torch_utils.randn_tensor
_lock = threading.Lock()


def _randn_tensor_float32(
    shape: Any,
    generator: Any = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
    layout: Any = None,
) -> torch.Tensor:
    wanted = dtype if dtype is not None else torch.float32
    drawn: torch.Tensor = _original(shape, generator=generator, device=device, dtype=torch.float32, layout=layout)
    return drawn if wanted == torch.float32 else drawn.to(wanted)


def draw_noise_in_float32() -> None:
    """Make every loaded diffusers module draw noise through :func:`_randn_tensor_float32`."""
    with _lock:
        for name, module in list(sys.modules.items()):
            if name.startswith("diffusers") and getattr(module, "randn_tensor", None) is _original:
                module.randn_tensor = _randn_tensor_float32  # type: ignore[attr-defined]


__all__ = ["draw_noise_in_float32"]
