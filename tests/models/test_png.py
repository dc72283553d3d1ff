"""The PNG writer in models/png.py: lossless for any size and pixels, deterministic, read by Pillow."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from lpnode.models.outputs import ImageOutput, encode_png
from lpnode.models.png import BAND_BYTES, encode_png_array, output_executor
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


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(257, 300), (512, 512), (3000, 33)])
def test_bands_deflated_in_parallel_give_the_serial_bytes(height: int, width: int) -> None:
    pixels = _noise(height, width, seed=height)
    pixels[height // 3 :] //= 17  # a smoother part too, so runs cross band boundaries
    assert height * (width * 3 + 1) > 2 * BAND_BYTES  # several bands, or this tests nothing
    serial = encode_png_array(pixels)
    with ThreadPoolExecutor(max_workers=3) as executor:
        assert encode_png_array(pixels, executor) == serial
    assert encode_png_array(pixels, output_executor()) == serial
    with Image.open(io.BytesIO(serial)) as image:
        assert np.array_equal(np.asarray(image), pixels)


def test_a_corrupted_band_fails_the_checksum() -> None:
    pixels = _noise(300, 300)
    png = bytearray(encode_png_array(pixels))
    png[len(png) // 2] ^= 0xFF  # inside the IDAT's deflate data
    with pytest.raises((OSError, SyntaxError, ValueError)), Image.open(io.BytesIO(bytes(png))) as image:
        image.load()
