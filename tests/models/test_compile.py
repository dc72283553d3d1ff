"""The compiled path's set-up and its fallback to eager (the compile itself needs CUDA: see test_sd's GPU test)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lpnode.models import registry
from lpnode.models._compile import channels_last_fits, compile_and_warm, compile_hot_path
from lpnode.models.base import ModelAdapter


def loaded(name: str) -> ModelAdapter:
    adapter = registry.resolve(name, None)
    adapter.load(torch.device("cpu"), torch.float32)
    return adapter


def test_video_models_keep_their_layout_image_models_take_nhwc() -> None:
    svd, sdxl = loaded("tiny-svd"), loaded("tiny-sdxl")
    # 3-D convolutions: 5-D weights, which channels_last refuses (it raised on a GPU before this check)
    assert not channels_last_fits(svd._modules()["unet"])
    assert not channels_last_fits(svd._modules()["vae"])
    with pytest.raises(RuntimeError, match="rank 4"):
        svd._modules()["unet"].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    assert channels_last_fits(sdxl._modules()["unet"])
    assert channels_last_fits(sdxl._modules()["vae"])


class _Uncompilable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this module cannot be compiled")


class _Decoder(torch.nn.Module):
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_a_path_that_fails_half_way_leaves_every_module_as_it_was() -> None:
    vae = _Decoder()
    with pytest.raises(RuntimeError, match="cannot be compiled"):
        compile_hot_path({"vae": vae, "unet": _Uncompilable()}, "default")
    assert "decode" not in vars(vae)  # the decoder compiled first is eager again: its class's method


def test_warm_up_that_fails_serves_eager_and_says_why() -> None:
    sdxl = loaded("tiny-sdxl")
    unet = sdxl._modules()["unet"]
    calls = []

    def failing_run(request: object) -> None:
        calls.append(request)
        raise RuntimeError("inductor could not build a kernel")

    report = compile_and_warm(sdxl, dict(sdxl._modules()), "default", failing_run)
    assert report.compiled == () and "inductor could not build a kernel" in report.error
    assert len(calls) == 1
    assert unet._compiled_call_impl is None  # eager again
    assert "decode" not in vars(sdxl._modules()["vae"])


def test_set_up_that_fails_serves_eager_too() -> None:
    sdxl = loaded("tiny-sdxl")
    modules = {**sdxl._modules(), "unet": _Uncompilable()}
    report = compile_and_warm(sdxl, modules, "default", lambda request: None)
    assert report.compiled == () and "cannot be compiled" in report.error
    assert "decode" not in vars(sdxl._modules()["vae"])
