"""Requester workloads: when jobs arrive (seeded Poisson, with flash crowds) and what they ask for.

The whole arrival list is drawn up front from the scenario's seed, so the jobs
of a run do not depend on how the simulation's tasks happen to interleave.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from lpnode.node.job_requester import JobRequest
from lpnode.protocol.jobspec import ImageToVideoParams, Pipeline, TextToImageParams
from PIL import Image

from .scenario import JobMix, Workload

MAX_JOBS = 1_000_000  # a scenario asking for more is a typo, not an experiment

PROMPTS = (
    "a lighthouse at dusk",
    "a red fox in the snow",
    "an astronaut riding a horse",
    "a bowl of ramen, studio light",
    "a city skyline in the rain",
)


@dataclass(frozen=True)
class PlannedJob:
    index: int
    at_s: float  # virtual seconds after the workload starts
    requester: int  # index among the requesters
    request: JobRequest
    inputs: dict[str, bytes]


def arrival_times(rng: random.Random, workload: Workload, duration_s: float) -> list[float]:
    """Poisson arrivals at the base rate plus each flash crowd's rate while it lasts."""
    times: list[float] = []
    spans = [(0.0, duration_s, workload.rate_per_s)]
    spans += [(f.at_s, min(duration_s, f.at_s + f.duration_s), f.rate_per_s) for f in workload.flashes]
    for start, end, rate in spans:
        if rate <= 0:
            continue
        t = start + rng.expovariate(rate)
        while t < end:
            times.append(t)
            if len(times) > MAX_JOBS:
                raise ValueError(f"the workload asks for more than {MAX_JOBS} jobs")
            t += rng.expovariate(rate)
    return sorted(times)


def plan_jobs(workload: Workload, duration_s: float, seed: int) -> list[PlannedJob]:
    """Every job of the run: arrival time, requester and request, from ``seed`` alone."""
    rng = random.Random(f"workload/{seed}")
    weights = [m.weight for m in workload.mix]
    image = _conditioning_image()
    jobs = []
    for index, at in enumerate(arrival_times(rng, workload, duration_s)):
        mix = rng.choices(workload.mix, weights)[0]
        request, inputs = _request(mix, rng, image)
        jobs.append(PlannedJob(index, at, rng.randrange(workload.requesters), request, inputs))
    return jobs


def _request(mix: JobMix, rng: random.Random, image: bytes) -> tuple[JobRequest, dict[str, bytes]]:
    seed = rng.randrange(2**31)
    pipeline = Pipeline(mix.pipeline)
    if pipeline is Pipeline.TEXT_TO_IMAGE:
        params = TextToImageParams(rng.choice(PROMPTS), mix.width, mix.height, mix.steps, 0.0, "")
        return JobRequest(pipeline, params, mix.model, seed=seed), {}
    if pipeline is Pipeline.IMAGE_TO_VIDEO:
        video = ImageToVideoParams(
            width=mix.width,
            height=mix.height,
            num_frames=mix.frames,
            fps=7,
            motion_bucket_id=127,
            noise_aug_strength=0.02,
            num_inference_steps=mix.steps,
            min_guidance_scale=1.0,
            max_guidance_scale=3.0,
            decode_chunk_size=8,
        )
        return JobRequest(pipeline, video, mix.model, seed=seed), {"image": image}
    raise ValueError(f"simnet workloads do not generate {pipeline} jobs yet")


def _conditioning_image() -> bytes:
    """One small PNG every image-to-video job sends (its content does not matter to the simulation)."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out.getvalue()


__all__ = ["PlannedJob", "arrival_times", "plan_jobs"]
