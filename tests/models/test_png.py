"""The PNG writer in models/outputs.py: lossless for any size and pixels, deterministic, read by Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from lpnode.models.outputs import ImageOutput, encode_png, encode_png_array
from PIL import Image


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (5, 1), (3, 5), (64, 48)])
def test_decodes_to_the_same_pixels(height: int, width: int) -> None:
    pixels = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    png = encode_png_array(pixels)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (width, height)
        assert np.array_equal(np.asarray(image), pixels)


def test_same_pixels_same_bytes_from_array_or_image() -> None:
    gradient = np.linspace(0, 255, 40 * 48 * 3).reshape(40, 48, 3).astype(np.uint8)
    assert encode_png_array(gradient) == encode_png_array(gradient.copy())
    assert encode_png(Image.fromarray(gradient)) == encode_png_array(gradient)


def test_a_non_contiguous_view_encodes_its_own_pixels() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    view = pixels[:, ::2]  # every other column: not contiguous
    output = ImageOutput.from_array(view)
    assert np.array_equal(np.asarray(output.to_pil()), view)
    assert (output.width, output.height) == (16, 16)


def test_refuses_what_is_not_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        encode_png_array(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="pixel"):
        encode_png_array(np.zeros((0, 4, 3), dtype=np.uint8))
