"""The compiled path's set-up and its fallback to eager (the compile itself needs CUDA: see test_sd's GPU test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lpnode.models import registry
from lpnode.models._compile import (
    CompileFailures,
    ShapeGate,
    channels_last_fits,
    compile_and_warm,
    compile_hot_path,
)
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

    @property
    def _call_impl(self) -> Any:  # what the set-up wraps: a module whose set-up fails there
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


def test_a_closed_gate_runs_shapes_the_warm_up_never_saw_eager() -> None:
    # torch's eager_on_recompile stance, tried first, compiled nothing at all, warm-up included (review)
    calls: list[str] = []
    gate = ShapeGate(lambda x, **kw: calls.append("compiled"), lambda x, **kw: calls.append("eager"))
    warm = torch.zeros(1, 4, 8, 8)
    gate(warm, added={"time_ids": torch.zeros(1, 6)}, scale=1.0)  # the warm-up
    gate.close()
    gate(torch.ones(1, 4, 8, 8), added={"time_ids": torch.ones(1, 6)}, scale=1.0)  # same shapes: compiled
    gate(torch.zeros(1, 4, 16, 16), added={"time_ids": torch.zeros(1, 6)}, scale=1.0)  # a new size
    gate(torch.zeros(2, 4, 8, 8), added={"time_ids": torch.zeros(2, 6)}, scale=1.0)  # a batch of two
    gate(warm, added={"time_ids": torch.zeros(1, 6)}, scale=2.0)  # another plain value
    gate(warm.half(), added={"time_ids": torch.zeros(1, 6)}, scale=1.0)  # another dtype
    assert calls == ["compiled", "compiled", "eager", "eager", "eager", "eager"]


def test_the_hot_path_goes_through_gates_that_the_warm_up_closes() -> None:
    sdxl = loaded("tiny-sdxl")
    modules = dict(sdxl._modules())
    path = compile_hot_path(modules, "default")
    assert path.components == ("unet", "vae.decode") and len(path.gates) == 2
    unet_gate = modules["unet"]._compiled_call_impl
    assert isinstance(unet_gate, ShapeGate) and isinstance(vars(modules["vae"])["decode"], ShapeGate)
    assert all(gate.learning for gate in path.gates)
    path.close()
    assert not any(gate.learning for gate in path.gates)
    path.revert()
    assert modules["unet"]._compiled_call_impl is None and "decode" not in vars(modules["vae"])


def test_a_compile_that_failed_is_not_tried_again_until_its_memo_goes(tmp_path: Path) -> None:
    # tiny-svd's compile failed after 43 s on an H100, on every start, for the same answer
    sdxl = loaded("tiny-sdxl")
    failures = CompileFailures(tmp_path / "compile-cache")
    tries: list[object] = []

    def failing_run(request: object) -> None:
        tries.append(request)
        raise AssertionError()

    first = compile_and_warm(sdxl, dict(sdxl._modules()), "default", failing_run, failures, "GPU X")
    assert first.error == "AssertionError: AssertionError" and len(tries) == 1
    again = compile_and_warm(sdxl, dict(sdxl._modules()), "default", failing_run, failures, "GPU X")
    assert again.compiled == () and again.error == first.error and len(tries) == 1  # not tried
    # another device (or torch, or weights) tries again; so does a deleted memo
    compile_and_warm(sdxl, dict(sdxl._modules()), "default", failing_run, failures, "GPU Y")
    assert len(tries) == 2
    (tmp_path / "compile-cache" / CompileFailures.FILE).write_text("{not json")
    compile_and_warm(sdxl, dict(sdxl._modules()), "default", failing_run, failures, "GPU X")
    assert len(tries) == 3
