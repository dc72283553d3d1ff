"""models/_placement.py: loaded diffusers models answer .device/.dtype from a cache that moving them clears."""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from lpnode.models._placement import cache_placement, uncached_placement
from lpnode.models.base import PipelineKind
from lpnode.models.registry import resolve
from lpnode.models.sd import StableDiffusionXLAdapter, build_tiny_sdxl_modules


def test_the_cached_answer_is_diffusers_answer_and_moving_the_model_clears_it() -> None:
    vae = build_tiny_sdxl_modules()["vae"]
    assert isinstance(vae, AutoencoderKL)
    cache_placement(vae)
    cache_placement(vae)  # idempotent: one subclass, not a chain of them
    assert type(vae).__mro__[1] is AutoencoderKL and type(vae).__name__ == "AutoencoderKL"
    assert isinstance(vae, AutoencoderKL)
    assert (vae.device, vae.dtype) == (torch.device("cpu"), torch.float32)
    assert "_lpnode_placement" in vars(vae)  # remembered: the next access walks nothing
    vae.to(torch.float64)
    assert vae.dtype == torch.float64
    with uncached_placement(vae):
        assert type(vae) is AutoencoderKL and vae.dtype == torch.float64
    assert type(vae) is not AutoencoderKL


def test_modules_that_are_not_diffusers_models_are_left_alone() -> None:
    text_encoder = build_tiny_sdxl_modules()["text_encoder"]
    before = type(text_encoder)
    cache_placement(text_encoder)
    assert type(text_encoder) is before


def test_a_loaded_adapter_caches_its_models_and_pipelines_and_gives_the_same_image() -> None:
    adapter = resolve("tiny-sdxl")
    adapter.load("cpu")
    assert isinstance(adapter, StableDiffusionXLAdapter) and adapter._t2i is not None
    pipe = adapter._t2i
    for obj in (pipe, pipe.unet, pipe.vae):
        assert hasattr(type(obj), "_lpnode_uncached_class"), type(obj)
    request = adapter.spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a lighthouse", seed=7)
    cached = adapter.run(request)
    with uncached_placement(pipe, pipe.unet, pipe.vae):
        assert pipe._execution_device == torch.device("cpu")
        plain = adapter.run(request)
    assert cached == plain


def test_moving_a_pipeline_clears_its_cached_device() -> None:
    adapter = resolve("tiny-sdxl")
    adapter.load("cpu")
    assert isinstance(adapter, StableDiffusionXLAdapter) and adapter._t2i is not None
    pipe = adapter._t2i
    assert pipe._execution_device == torch.device("cpu")
    assert "_lpnode_placement" in vars(pipe)
    pipe.to("cpu", torch.float64)
    assert "_lpnode_placement" not in vars(pipe)
    assert pipe.unet.dtype == torch.float64
