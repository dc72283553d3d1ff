"""Simulated GPU profiles: how long a job takes on a card, what fits in its memory, how long a model takes to load.

Every timing is anchored on DESIGN.md's H100 measurements (2026-11-23, fp16,
diffusers 0.42, random weights of the real architectures) and scaled to other
cards by one relative-throughput factor per card:

* **SDXL-Turbo, 512², eager** (DESIGN.md "GPU anchor"): 1 step 142.8 ms, 4 steps
  267.5 ms → 41.6 ms per step at 0.262 MPx = 159 ms per MPx-step; UNet alone
  63 ms, VAE decode 22 ms; the rest (~80 ms) is fixed per call. Batch 4 costs
  1.42× one image, batch 8 1.58× (203.5 / 225.6 ms per call).
* **Compiled** (same anchor): ``torch.compile`` reduce-overhead brings the 1-step
  call to 40.2 ms, 0.28× eager. A profile may opt in with ``compiled=True``.
* **SVD-XT, 576×1024, 25 steps** (DESIGN.md "Image-to-video anchor"): 14 frames
  10.9 s, 25 frames 18.7 s → 28.4 ms per frame-step at 0.59 MPx = 48 ms per
  MPx-frame-step plus ~1 s fixed. The seed documents' ~90 s on an RTX 3090 gives
  that card ~0.21× the H100 on video.
* **Relative throughput** of other cards for fp16 diffusion inference, rounded from
  public benchmarks (Tom's Hardware's Stable Diffusion GPU hierarchy, Lambda's and
  Puget Systems' SD/SDXL figures; they disagree by ±20 %, and we never measured
  these cards here): A100 ≈ 0.55× H100, RTX 4090 ≈ 0.55×, RTX 3090 ≈ 0.25× (between
  the SD benchmarks' ~0.3 and the SVD anchor's 0.21), RTX 3060 12 GB ≈ 0.12×.
* **Load times**: weights read from disk and copied to the device, at an assumed
  1.5 GB/s for a home PC (NVMe + PCIe 3/4, page cache cold) and 3 GB/s for a
  datacentre host, plus 1.5 s of fixed pipeline set-up. Guesses, not measurements.

The upscale and frame-interpolation pipelines are single-pass networks; they get a
per-MPx cost (also a guess, small next to diffusion) so mixed workloads run.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from lpnode.models.base import PipelineKind

GIB = 2**30

# --- the H100 anchor, eager fp16 (DESIGN.md) -----------------------------------------------------
SDXL_FIXED_S = 0.080  # per call: scheduler, text path bypassed, launch overheads
SDXL_VAE_S_PER_MPX = 0.084  # 22 ms at 512²
SDXL_UNET_S_PER_MPX_STEP = 0.159  # 41.6 ms per step at 512²
SVD_FIXED_S = 1.0
SVD_S_PER_MPX_FRAME_STEP = 0.048
SINGLE_PASS_S_PER_MPX = 0.05  # upscale / interpolation per output MPx (frame): a guess
COMPILED_FACTOR = 40.2 / 142.8  # torch.compile reduce-overhead vs eager, SDXL-Turbo 512² 1 step

# (batch size, time of the batch / time of one) from the anchor's batch 1/4/8 calls
IMAGE_BATCH_COST = ((1, 1.0), (4, 203.5 / 142.8), (8, 225.6 / 142.8))
LOAD_FIXED_S = 1.5


@dataclass(frozen=True)
class GpuProfile:
    """One simulated card. Times scale from the H100 anchor by ``relative_speed``."""

    name: str  # as an advert's GpuInfo shows it
    vram_bytes: int
    relative_speed: float  # fp16 diffusion throughput, H100 = 1.0
    load_bytes_per_s: float  # weights from disk to the device
    compiled: bool = False  # the warm path runs torch.compile'd (H100 anchor: 0.28× eager)

    def load_s(self, weights_bytes: int) -> float:
        """Seconds to load a model whose weights take ``weights_bytes`` on the device."""
        return LOAD_FIXED_S + weights_bytes / self.load_bytes_per_s

    def run_s(
        self, pipeline: PipelineKind, *, width: int, height: int, steps: int = 1, frames: int = 1, batch: int = 1
    ) -> float:
        """Seconds one call of ``batch`` compatible jobs keeps the device busy (warm model)."""
        mpx = width * height / 1e6
        if pipeline in (PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE):
            one = SDXL_FIXED_S + SDXL_VAE_S_PER_MPX * mpx + SDXL_UNET_S_PER_MPX_STEP * mpx * steps
            if self.compiled:
                one *= COMPILED_FACTOR
            total = one * batch_cost(batch)
        elif pipeline is PipelineKind.IMAGE_TO_VIDEO:
            # a video batch already fills the device: no batching gain is assumed
            total = (SVD_FIXED_S + SVD_S_PER_MPX_FRAME_STEP * mpx * frames * steps) * batch
        else:
            total = SINGLE_PASS_S_PER_MPX * mpx * frames * batch
        return total / self.relative_speed


def batch_cost(batch: int) -> float:
    """Time of a batch of ``batch`` images relative to one: linear between the anchor's measured points."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    sizes = [b for b, _ in IMAGE_BATCH_COST]
    i = bisect.bisect_left(sizes, batch)
    if i < len(sizes) and sizes[i] == batch:
        return IMAGE_BATCH_COST[i][1]
    if i >= len(sizes):  # past the last measured point: extend its marginal cost
        (b0, c0), (b1, c1) = IMAGE_BATCH_COST[-2], IMAGE_BATCH_COST[-1]
    else:
        (b0, c0), (b1, c1) = IMAGE_BATCH_COST[i - 1], IMAGE_BATCH_COST[i]
    return c0 + (c1 - c0) * (batch - b0) / (b1 - b0)


HOME_LOAD = 1.5e9  # bytes/s
DATACENTRE_LOAD = 3.0e9

PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        GpuProfile("RTX 3060 12GB", 12 * GIB, 0.12, HOME_LOAD),
        GpuProfile("RTX 3090 24GB", 24 * GIB, 0.25, HOME_LOAD),
        GpuProfile("RTX 4090 24GB", 24 * GIB, 0.55, HOME_LOAD),
        GpuProfile("A100 80GB", 80 * GIB, 0.55, DATACENTRE_LOAD),
        GpuProfile("H100 80GB", 80 * GIB, 1.0, DATACENTRE_LOAD),
    )
}
# short names for scenario files
ALIASES = {
    "3060": "RTX 3060 12GB",
    "3090": "RTX 3090 24GB",
    "4090": "RTX 4090 24GB",
    "a100": "A100 80GB",
    "h100": "H100 80GB",
}


def profile(name: str) -> GpuProfile:
    """The profile called ``name`` or one of its short names (``3060``, ``h100``...); KeyError listing them."""
    full = ALIASES.get(name.lower(), name)
    try:
        return PROFILES[full]
    except KeyError:
        raise KeyError(f"unknown GPU profile {name!r}; known: {', '.join([*ALIASES, *PROFILES])}") from None


__all__ = ["ALIASES", "PROFILES", "GpuProfile", "batch_cost", "profile"]
