"""The adapter contract: request bounds, spec defaults, cancel tokens, generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lpnode.models.base import (
    CancelToken,
    ImageToVideoRequest,
    PipelineKind,
    TextToImageRequest,
    UpscaleRequest,
    make_generator,
    to_uint8_rgb,
)
from lpnode.models.errors import Cancelled, ModelError, ParameterError, UnsupportedPipeline
from lpnode.models.sd import TINY_SDXL
from lpnode.protocol.errors import LpnodeError


def test_device_quantisation_matches_diffusers_pil_output() -> None:
    from diffusers.image_processor import VaeImageProcessor

    images = torch.rand(3, 3, 17, 23, generator=make_generator(0))
    images[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 0.0, 1.0])  # ties round half to even in both
    expected = np.stack([np.asarray(i) for i in VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images))])
    assert np.array_equal(to_uint8_rgb(images), expected)
    assert to_uint8_rgb(images.half()).shape == (3, 17, 23, 3)


def test_error_tree_is_rooted_in_lpnode_error() -> None:
    assert issubclass(ParameterError, ModelError)
    assert issubclass(ModelError, LpnodeError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"width": 0}, "width"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"prompt": "x" * 5000}, "prompt"),
    ],
)
def test_request_rejects_values_no_model_accepts(kwargs: dict[str, object], field: str) -> None:
    params: dict[str, object] = {"prompt": "a cat", "seed": 0} | kwargs
    with pytest.raises(ParameterError) as info:
        TextToImageRequest(**params)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value) and "expected" in str(info.value)


def test_request_bounds_message_names_value_and_range() -> None:
    with pytest.raises(ParameterError, match=r"motion_bucket_id=300 .* \[0, 255\]"):
        ImageToVideoRequest(image=b"x", seed=0, motion_bucket_id=300)


def test_request_repr_hides_bulky_bytes() -> None:
    assert "image" not in repr(UpscaleRequest(image=b"\x89PNG" * 1000))


def test_build_request_fills_model_defaults() -> None:
    request = TINY_SDXL.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a cat", seed=3)
    assert isinstance(request, TextToImageRequest)
    assert (request.width, request.height, request.num_inference_steps) == (64, 64, 2)


def test_build_request_refuses_unknown_fields_missing_fields_and_other_pipelines() -> None:
    with pytest.raises(ParameterError, match="stepz"):
        TINY_SDXL.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a", seed=0, stepz=3)
    with pytest.raises(ParameterError, match="required"):
        TINY_SDXL.build_request(PipelineKind.TEXT_TO_IMAGE, seed=0)
    with pytest.raises(UnsupportedPipeline):
        TINY_SDXL.build_request(PipelineKind.UPSCALE, image=b"x")


def test_cancel_token_and_all_of() -> None:
    a, b = CancelToken(), CancelToken()
    both = CancelToken.all_of([a, b])
    a.cancel()
    assert a.cancelled and not both.cancelled
    b.cancel()
    assert both.cancelled
    with pytest.raises(Cancelled):
        both.raise_if_cancelled()


def test_generator_is_cpu_and_reproducible_without_touching_global_rng() -> None:
    state = torch.random.get_rng_state()
    x = torch.randn(4, generator=make_generator(5))
    y = torch.randn(4, generator=make_generator(5))
    assert make_generator(5).device.type == "cpu"
    assert torch.equal(x, y)
    assert torch.equal(state, torch.random.get_rng_state())
