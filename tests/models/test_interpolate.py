"""Frame interpolation: IFNet layout compatibility, frame counts, bounds and determinism (CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from lpnode.models.base import FrameInterpolationRequest
from lpnode.models.errors import ModelLoadError, ParameterError, WeightsMissing
from lpnode.models.ifnet import IFNet, IFNetConfig, backward_warp
from lpnode.models.interpolate import PRESETS, InterpolateAdapter, interpolate_frames, probe_video
from lpnode.models.outputs import VideoOutput, encode_mp4
from PIL import Image

SPECS = {p.spec.name: p for p in PRESETS}
RGB = npt.NDArray[np.uint8]


def make_adapter(name: str, weights_dir: Path | None = None) -> InterpolateAdapter:
    adapter = SPECS[name].factory(SPECS[name].spec, weights_dir)
    assert isinstance(adapter, InterpolateAdapter)
    return adapter


def frame(width: int, height: int, shift: int) -> RGB:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x + shift) * 4 % 256, y * 255 // max(height - 1, 1), np.full_like(x, 128)], axis=-1)
    return rgb.astype(np.uint8)


def mp4(frames: list[RGB], fps: float = 10.0) -> bytes:
    return encode_mp4([Image.fromarray(f, mode="RGB") for f in frames], fps)


@pytest.fixture(scope="module")
def tiny() -> InterpolateAdapter:
    adapter = make_adapter("tiny-rife")
    adapter.load("cpu")
    return adapter


@pytest.fixture(scope="module")
def clip() -> bytes:
    return mp4([frame(32, 24, s) for s in (0, 2, 4)])


# --- the network and its published layout ---------------------------------------------------


def test_full_size_keys_match_published_layout() -> None:
    state = IFNet(IFNetConfig()).state_dict()
    for key in (
        "encode.cnn0.weight",
        "encode.cnn3.weight",
        "block0.conv0.0.0.weight",
        "block0.conv0.1.0.bias",
        "block0.convblock.7.conv.weight",
        "block0.convblock.0.beta",
        "block4.lastconv.0.weight",
    ):
        assert key in state
    assert tuple(state["block0.conv0.0.0.weight"].shape) == (96, 7 + 32, 3, 3)
    assert tuple(state["block1.conv0.0.0.weight"].shape) == (64, 8 + 4 + 8 + 32, 3, 3)
    assert tuple(state["block4.lastconv.0.weight"].shape) == (32, 52, 4, 4)
    assert tuple(state["encode.cnn3.weight"].shape) == (16, 16, 4, 4)


def test_zero_flow_warp_is_identity() -> None:
    image = torch.rand(2, 3, 8, 12)
    assert torch.allclose(backward_warp(image, torch.zeros(2, 2, 8, 12)), image, atol=1e-6)


def test_whole_pixel_flow_shifts() -> None:
    image = torch.rand(1, 1, 6, 10)
    flow = torch.zeros(1, 2, 6, 10)
    flow[:, 0] = 1.0  # sample one pixel to the right
    warped = backward_warp(image, flow)
    assert torch.allclose(warped[..., :-1], image[..., 1:], atol=1e-5)


# --- the real preset's loader ---------------------------------------------------------------


def save_flownet(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def test_rife_round_trip_through_published_layout(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = IFNet(IFNetConfig())
    published = {f"module.{k}": v for k, v in net.state_dict().items()}
    published["module.teacher.lastconv.0.bias"] = torch.zeros(52)  # training-only head: ignored
    path = tmp_path / "rife" / "flownet.pkl"
    save_flownet(path, published)

    adapter = make_adapter("rife", tmp_path)
    adapter.load("cpu")
    loaded = adapter.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    assert adapter.weights_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    out = adapter.run(FrameInterpolationRequest(video=mp4([frame(16, 16, 0), frame(16, 16, 1)]), multiplier=2))
    assert isinstance(out, VideoOutput)
    assert (out.num_frames, out.width, out.height) == (3, 16, 16)


def test_file_of_another_version_is_a_load_error(tmp_path: Path) -> None:
    state = {k: v for k, v in IFNet(IFNetConfig()).state_dict().items() if not k.startswith("block4.")}
    save_flownet(tmp_path / "rife" / "flownet.pkl", state)
    with pytest.raises(ModelLoadError, match=r"missing \(first: block4.*Practical-RIFE v4.25"):
        make_adapter("rife", tmp_path).load("cpu")


def test_unknown_extra_weights_are_a_load_error(tmp_path: Path) -> None:
    state = dict(IFNet(IFNetConfig()).state_dict())
    state["contextnet.conv.weight"] = torch.zeros(1)
    save_flownet(tmp_path / "rife" / "flownet.pkl", state)
    with pytest.raises(ModelLoadError, match="unexpected"):
        make_adapter("rife", tmp_path).load("cpu")


def test_missing_weights_name_the_exact_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as info:
        make_adapter("rife", tmp_path).load("cpu")
    assert str(tmp_path / "rife" / "flownet.pkl") in str(info.value)
    assert "Practical-RIFE" in str(info.value)


# --- frames ---------------------------------------------------------------------------------


def test_identical_frames_interpolate_to_themselves(tiny: InterpolateAdapter) -> None:
    still = frame(40, 24, 0)
    with torch.inference_mode():
        out = interpolate_frames(tiny.network, [still, still], multiplier=4, timesteps_per_pass=4)
    assert len(out) == 5
    for mid in out[1:4]:
        assert mid.shape == still.shape
        assert np.abs(mid.astype(int) - still.astype(int)).max() <= 2


def test_batched_timesteps_match_one_at_a_time(tiny: InterpolateAdapter) -> None:
    frames = [frame(24, 16, 0), frame(24, 16, 3)]
    with torch.inference_mode():
        batched = interpolate_frames(tiny.network, frames, multiplier=4, timesteps_per_pass=3)
        single = interpolate_frames(tiny.network, frames, multiplier=4, timesteps_per_pass=1)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(batched, single, strict=True))


def test_mismatched_frame_sizes_are_rejected(tiny: InterpolateAdapter) -> None:
    with pytest.raises(ParameterError, match=r"frames\[1\]"):
        interpolate_frames(tiny.network, [frame(16, 16, 0), frame(18, 16, 0)], 2, 1)
    with pytest.raises(ParameterError, match="at least 2"):
        interpolate_frames(tiny.network, [frame(16, 16, 0)], 2, 1)


# --- the adapter ----------------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", [2, 3])
def test_frame_count_size_and_rate(tiny: InterpolateAdapter, clip: bytes, multiplier: int) -> None:
    out = tiny.run(FrameInterpolationRequest(video=clip, multiplier=multiplier))
    assert isinstance(out, VideoOutput)
    assert out.num_frames == 2 * multiplier + 1
    assert (out.width, out.height) == (32, 24)
    assert out.fps == pytest.approx(10.0 * multiplier)
    assert len(out.to_frames()) == out.num_frames
    assert set(out.timings_ms) == {"decode", "interpolate", "device", "encode"}


def test_deterministic_frames_and_weights_hash(tiny: InterpolateAdapter) -> None:
    # Byte-identical frames out of the network. MP4 bytes are outputs.encode_mp4's
    # guarantee, not asserted here: x264 output was seen to vary within one process.
    frames = [frame(32, 24, 0), frame(32, 24, 3), frame(32, 24, 5)]
    other = make_adapter("tiny-rife")
    other.load("cpu")
    with torch.inference_mode():
        runs = [interpolate_frames(net, frames, 3, 2) for net in (tiny.network, tiny.network, other.network)]
    blobs = [b"".join(f.tobytes() for f in run) for run in runs]
    assert blobs[0] == blobs[1] == blobs[2]
    assert other.weights_sha256() == tiny.weights_sha256() == make_adapter("tiny-rife").weights_sha256()


def test_probe_reads_the_container_without_decoding(clip: bytes) -> None:
    probe = probe_video(clip, max_frames=100)
    assert (probe.width, probe.height, probe.num_frames) == (32, 24, 3)
    assert probe.fps == pytest.approx(10.0)
    assert probe_video(clip, max_frames=1).num_frames == 2  # stops one past the limit


# --- bounds, before any compute -------------------------------------------------------------


def test_multiplier_outside_preset_is_rejected_unloaded(clip: bytes) -> None:
    adapter = make_adapter("tiny-rife")  # never loaded: the check must come first
    with pytest.raises(ParameterError, match="multiplier"):
        adapter.run(FrameInterpolationRequest(video=clip, multiplier=9))
    with pytest.raises(ParameterError, match="multiplier"):
        FrameInterpolationRequest(video=clip, multiplier=1)


def test_oversized_frames_are_rejected_unloaded() -> None:
    big = mp4([np.zeros((260, 64, 3), dtype=np.uint8)] * 2)  # height 260 > max_side 256
    with pytest.raises(ParameterError, match="height"):
        make_adapter("tiny-rife").run(FrameInterpolationRequest(video=big, multiplier=2))


def test_too_many_frames_are_rejected_unloaded() -> None:
    # tiny-rife allows 64 output frames: at ×8 that is 8 input frames.
    long = mp4([frame(16, 16, i) for i in range(9)])
    with pytest.raises(ParameterError, match="more than 8 frames"):
        make_adapter("tiny-rife").run(FrameInterpolationRequest(video=long, multiplier=8))


def test_single_frame_and_garbage_are_rejected() -> None:
    adapter = make_adapter("tiny-rife")
    with pytest.raises(ParameterError, match="1 frames"):
        adapter.check_inputs(FrameInterpolationRequest(video=mp4([frame(16, 16, 0)]), multiplier=2))
    with pytest.raises(ParameterError, match="decodable video"):
        adapter.check_inputs(FrameInterpolationRequest(video=b"not a video", multiplier=2))
