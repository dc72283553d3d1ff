"""Upscaling: RRDBNet layout compatibility, tiling, bounds and determinism, images and videos (CPU, tiny sizes)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from lpnode.models.base import CancelToken, ModelSpec, StepProgress, UpscaleRequest
from lpnode.models.errors import Cancelled, ModelLoadError, NotLoaded, ParameterError, WeightsMissing
from lpnode.models.outputs import ImageOutput, RawImage, RawVideo, VideoOutput, decode_video_bytes, encode_mp4
from lpnode.models.rrdbnet import RRDBNet, RRDBNetConfig, infer_rrdbnet_config, unwrap_esrgan_state
from lpnode.models.upscale import PRESETS, UpscaleAdapter, probe_upscale_input, tile_grid, upscale_array
from PIL import Image

SPECS = {p.spec.name: p for p in PRESETS}


def make_adapter(name: str, weights_dir: Path | None = None) -> UpscaleAdapter:
    adapter = SPECS[name].factory(SPECS[name].spec, weights_dir)
    assert isinstance(adapter, UpscaleAdapter)
    return adapter


def gradient(width: int, height: int) -> npt.NDArray[np.uint8]:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return rgb.astype(np.uint8)


def png(rgb: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny() -> UpscaleAdapter:
    adapter = make_adapter("tiny-realesrgan")
    adapter.load("cpu")
    return adapter


def tiny_spec() -> ModelSpec:
    return SPECS["tiny-realesrgan"].spec


# --- the network and its published layout ---------------------------------------------------


def test_full_size_keys_match_published_layout() -> None:
    state = RRDBNet(RRDBNetConfig()).state_dict()
    for key in ("conv_first.weight", "body.0.rdb1.conv1.weight", "body.22.rdb3.conv5.bias", "conv_body.weight"):
        assert key in state
    for key in ("conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.weight"):
        assert key in state
    assert tuple(state["conv_first.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["body.0.rdb1.conv5.weight"].shape) == (64, 64 + 4 * 32, 3, 3)
    assert sum(v.numel() for v in state.values()) == 16_697_987  # RealESRGAN_x4plus's parameter count


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_config_is_read_back_from_shapes(scale: int) -> None:
    config = RRDBNetConfig(scale=scale, num_feat=8, num_block=2, num_grow_ch=4)
    assert infer_rrdbnet_config(RRDBNet(config).state_dict(), "x") == config


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare", "module"])
def test_checkpoint_wrappers_unwrap(layout: str) -> None:
    state = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)).state_dict()
    wrapped: dict[str, object]
    if layout == "bare":
        wrapped = dict(state)
    elif layout == "module":
        wrapped = {f"module.{k}": v for k, v in state.items()}
    else:
        wrapped = {layout: state, "ignored": 1}
    assert unwrap_esrgan_state(wrapped, "x").keys() == state.keys()


def test_params_ema_wins_over_params() -> None:
    ema = {"conv_first.weight": torch.ones(1)}
    raw = {"conv_first.weight": torch.zeros(1)}
    assert unwrap_esrgan_state({"params": raw, "params_ema": ema}, "x")["conv_first.weight"].item() == 1.0


@pytest.mark.parametrize("scale", [1, 2])
def test_pixel_unshuffle_networks_take_any_size(scale: int) -> None:
    net = RRDBNet(RRDBNetConfig(scale=scale, num_feat=8, num_block=1, num_grow_ch=4)).eval()
    with torch.inference_mode():
        out = upscale_array(net, gradient(13, 9), scale, tile=8, tile_pad=4)
    assert out.shape == (9 * scale, 13 * scale, 3)


# --- the real preset's loader ---------------------------------------------------------------


def test_realesrgan_x4_round_trip_through_published_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = RRDBNet(RRDBNetConfig())
    path = tmp_path / "realesrgan" / "RealESRGAN_x4plus.pth"
    path.parent.mkdir()
    torch.save({"params_ema": net.state_dict()}, path)

    adapter = make_adapter("realesrgan-x4", tmp_path)
    adapter.load("cpu")
    loaded = adapter.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    assert adapter.weights_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    out = adapter.run(UpscaleRequest(image=png(gradient(6, 4)), scale=4))
    assert isinstance(out, ImageOutput)
    assert (out.width, out.height) == (24, 16)


def test_wrong_architecture_file_is_a_load_error(tmp_path: Path) -> None:
    small = RRDBNet(RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4))
    (tmp_path / "realesrgan").mkdir()
    torch.save({"params_ema": small.state_dict()}, tmp_path / "realesrgan" / "RealESRGAN_x4plus.pth")
    adapter = make_adapter("realesrgan-x4", tmp_path)
    with pytest.raises(ModelLoadError, match="num_feat=8"):
        adapter.load("cpu")


def test_garbage_file_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "realesrgan").mkdir()
    (tmp_path / "realesrgan" / "RealESRGAN_x4plus.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable torch weight file"):
        make_adapter("realesrgan-x4", tmp_path).load("cpu")


@pytest.mark.parametrize("has_dir", [True, False])
def test_missing_weights_name_the_exact_file(tmp_path: Path, has_dir: bool) -> None:
    adapter = make_adapter("realesrgan-x4", tmp_path if has_dir else None)
    with pytest.raises(WeightsMissing) as info:
        adapter.load("cpu")
    expected = (str(tmp_path) if has_dir else "<weights_dir>") + "/realesrgan/RealESRGAN_x4plus.pth"
    assert expected in str(info.value)
    assert "github.com/xinntao/Real-ESRGAN" in str(info.value)
    assert info.value.missing == ("RealESRGAN_x4plus.pth",)


# --- the adapter ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_output_size(tiny: UpscaleAdapter, scale: int) -> None:
    out = tiny.run(UpscaleRequest(image=png(gradient(20, 12)), scale=scale))
    assert isinstance(out, ImageOutput)
    assert (out.width, out.height) == (20 * scale, 12 * scale)
    assert out.to_pil().size == (20 * scale, 12 * scale)
    assert set(out.timings_ms) == {"decode", "upscale", "device", "encode"}


def test_deterministic_bytes_and_weights_hash(tiny: UpscaleAdapter) -> None:
    request = UpscaleRequest(image=png(gradient(40, 36)), scale=4)
    other = make_adapter("tiny-realesrgan")
    other.load("cpu")
    first, second, third = tiny.run(request), tiny.run(request), other.run(request)
    assert isinstance(first, ImageOutput) and isinstance(second, ImageOutput) and isinstance(third, ImageOutput)
    assert first.png == second.png == third.png
    assert make_adapter("tiny-realesrgan").weights_sha256() == tiny.weights_sha256()


def test_x2_is_the_box_filtered_x4(tiny: UpscaleAdapter) -> None:
    rgb = gradient(16, 12)
    with torch.inference_mode():
        x4 = upscale_array(tiny.network, rgb, 4, tile=None, tile_pad=0).astype(np.float64)
        x2 = upscale_array(tiny.network, rgb, 2, tile=None, tile_pad=0).astype(np.float64)
    boxed = x4.reshape(12 * 2, 2, 16 * 2, 2, 3).mean(axis=(1, 3))
    assert np.abs(boxed - x2).max() <= 1.0


def test_tile_grid_covers_image_once() -> None:
    covered = np.zeros((50, 70), dtype=int)
    for y0, y1, x0, x1 in tile_grid(50, 70, 32):
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()


def test_tiles_with_enough_context_match_untiled(tiny: UpscaleAdapter) -> None:
    rgb = gradient(64, 48)
    with torch.inference_mode():
        whole = upscale_array(tiny.network, rgb, 4, tile=None, tile_pad=0).astype(int)
        # One RRDB is 17 convolutions deep at input resolution: 24 pixels of context cover it.
        tiled = upscale_array(tiny.network, rgb, 4, tile=16, tile_pad=24).astype(int)
    assert np.abs(whole - tiled).max() <= 1


def test_tiles_agree_away_from_seams(tiny: UpscaleAdapter) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    tile, pad, scale = 32, 8, 4
    with torch.inference_mode():
        whole = upscale_array(tiny.network, rgb, scale, tile=None, tile_pad=0).astype(int)
        tiled = upscale_array(tiny.network, rgb, scale, tile=tile, tile_pad=pad).astype(int)
    # Distance (input pixels) from each output pixel to the nearest interior seam.
    ys = np.arange(64 * scale) // scale
    xs = np.arange(96 * scale) // scale
    dy = np.min([np.abs(ys - s) for s in range(tile, 64, tile)], axis=0)
    dx = np.min([np.abs(xs - s) for s in range(tile, 96, tile)], axis=0)
    far = (dy[:, None] >= 12) & (dx[None, :] >= 12)
    assert far.sum() > 0
    assert np.abs(whole - tiled)[far].max() <= 1
    assert np.abs(whole - tiled).mean() < 2.0


# --- bounds, before any compute -------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 3, 8])
def test_scale_outside_preset_is_rejected_unloaded(scale: int) -> None:
    adapter = make_adapter("tiny-realesrgan")  # never loaded: the check must come first
    with pytest.raises(ParameterError, match="scale"):
        adapter.run(UpscaleRequest(image=png(gradient(8, 8)), scale=scale))


def test_oversized_input_is_rejected_from_the_header() -> None:
    adapter = make_adapter("tiny-realesrgan")
    big = png(np.zeros((200, 100, 3), dtype=np.uint8))  # ×4 → 400×800 > max_side 512
    with pytest.raises(ParameterError, match="height"):
        adapter.check_inputs(UpscaleRequest(image=big, scale=4))
    with pytest.raises(ParameterError):
        adapter.run(UpscaleRequest(image=big, scale=4))


def test_undecodable_input_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="image"):
        make_adapter("tiny-realesrgan").check_inputs(UpscaleRequest(image=b"\x89PNG broken", scale=4))


def test_cancel_between_tiles(tiny: UpscaleAdapter) -> None:
    token = CancelToken()
    seen: list[StepProgress] = []

    def on_progress(step: StepProgress) -> None:
        seen.append(step)
        token.cancel()

    with pytest.raises(Cancelled):
        tiny.run(UpscaleRequest(image=png(gradient(64, 64)), scale=4), cancel=token, progress=on_progress)
    assert [(s.stage, s.step, s.total) for s in seen] == [("tile", 1, 4)]


# --- video: frame by frame ----------------------------------------------------------------------


def mp4(frames: list[npt.NDArray[np.uint8]], fps: float = 8.0) -> bytes:
    return encode_mp4(frames, fps)


def moving(width: int, height: int, count: int) -> list[npt.NDArray[np.uint8]]:
    return [np.roll(gradient(width, height), 2 * k, axis=1) for k in range(count)]


def test_video_is_upscaled_frame_by_frame(tiny: UpscaleAdapter) -> None:
    video = mp4(moving(32, 32, 4), fps=8.0)
    events: list[StepProgress] = []
    out = tiny.run(UpscaleRequest(video=video, scale=4), progress=events.append)
    assert isinstance(out, VideoOutput)
    assert (out.width, out.height, out.num_frames, out.fps) == (128, 128, 4, 8.0)
    assert len(out.frame_phash) == len(out.frame_dhash) == 4
    assert [(e.stage, e.step, e.total) for e in events] == [("frame", i, 4) for i in range(1, 5)]
    # each output frame, before H.264, is exactly the image upscale of its decoded input frame
    raw = tiny.generate(UpscaleRequest(video=video, scale=4))
    assert isinstance(raw, RawVideo)
    for index, frame in enumerate(decode_video_bytes(video)[0]):
        expected = tiny.generate(UpscaleRequest(image=png(np.asarray(frame)), scale=4))
        assert isinstance(expected, RawImage)
        assert np.array_equal(raw.frames[index], expected.pixels)
    assert tiny.finish(raw).sha256 == out.sha256  # deterministic bytes


def test_video_x2_keeps_fps_and_count(tiny: UpscaleAdapter) -> None:
    raw = tiny.generate(UpscaleRequest(video=mp4(moving(16, 12, 3), fps=30000 / 1001), scale=2))
    assert isinstance(raw, RawVideo)
    assert (raw.width, raw.height, raw.num_frames) == (32, 24, 3)
    assert abs(raw.fps - 30000 / 1001) < 1e-6


def test_request_takes_exactly_one_input() -> None:
    with pytest.raises(ParameterError, match="exactly one of image and video"):
        UpscaleRequest(scale=4)
    with pytest.raises(ParameterError, match="exactly one of image and video"):
        UpscaleRequest(image=b"\x89PNG", video=b"....ftyp", scale=4)
    with pytest.raises(ParameterError, match="video"):
        UpscaleRequest(video=b"", scale=4)
    assert "video" not in repr(UpscaleRequest(video=b"\x00" * 100))


def test_video_bounds_are_checked_from_the_container_unloaded() -> None:
    adapter = make_adapter("tiny-realesrgan")  # never loaded: the checks need no device
    limits = tiny_spec().limits
    assert limits.max_frames == 32 and limits.max_total_pixels == 1 << 20
    with pytest.raises(ParameterError, match="more than 32 frames"):
        adapter.check_inputs(UpscaleRequest(video=mp4(moving(8, 8, 33)), scale=2))
    # 5 frames of 128x128 make 5 × 512² output pixels, over the 2**20 total though each frame fits
    with pytest.raises(ParameterError, match=r"frames\*width\*height"):
        adapter.check_inputs(UpscaleRequest(video=mp4(moving(128, 128, 5)), scale=4))
    with pytest.raises(ParameterError, match="width"):  # a frame over max_side
        adapter.check_inputs(UpscaleRequest(video=mp4(moving(160, 16, 2)), scale=4))
    with pytest.raises(ParameterError, match="decodable video"):
        adapter.check_inputs(UpscaleRequest(video=b"\x00\x00\x00\x18ftypmp42 not really", scale=4))
    adapter.check_inputs(UpscaleRequest(video=mp4(moving(128, 128, 4)), scale=4))  # exactly 2**20: fits
    with pytest.raises(NotLoaded):
        adapter.run(UpscaleRequest(video=mp4(moving(8, 8, 2)), scale=2))


def test_probe_reads_the_input_without_decoding() -> None:
    found = probe_upscale_input(UpscaleRequest(video=mp4(moving(16, 12, 3), fps=12.0)), 32)
    assert (found.width, found.height, found.num_frames, found.fps) == (16, 12, 3, 12.0)
    image = probe_upscale_input(UpscaleRequest(image=png(gradient(10, 6))), 32)
    assert (image.width, image.height, image.num_frames, image.fps) == (10, 6, 1, 0.0)


def test_cancel_between_video_frames(tiny: UpscaleAdapter) -> None:
    token = CancelToken()

    def on_progress(event: StepProgress) -> None:
        if event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        tiny.run(UpscaleRequest(video=mp4(moving(16, 16, 4)), scale=2), cancel=token, progress=on_progress)
