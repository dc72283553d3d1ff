"""Frame interpolation with RIFE's IFNet: a video in, ``multiplier`` × the frames out.

Stages: (1) probe and decode the MP4, (2) for each pair of consecutive frames
synthesise ``multiplier - 1`` in-between frames at t = i / multiplier; then the
output stage (``ModelAdapter.finish``, off the device) encodes the input frames
with the new ones between them as H.264 at ``fps × multiplier``.
So ``n`` input frames give ``(n - 1) · multiplier + 1`` output frames and the
duration is kept.

The in-between frames of one pair run as batches of at most ``timesteps_per_pass``
(a preset constant, like everything that changes pixels: float results can
depend on batch size, so it must not vary between nodes). Frames are padded
with zeros to a multiple of 128 and cropped back, as Practical-RIFE's
``inference_video.py`` does. Unlike that script we do not detect scene cuts or
skip static frames: the output is a pure function of the input.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ._single_net import SingleNetworkAdapter
from .base import (
    CancelToken,
    FrameInterpolationRequest,
    Limits,
    ModelAdapter,
    ModelSpec,
    PipelineKind,
    Preset,
    ProgressCallback,
    Request,
    StageTimer,
    StepProgress,
    check_int,
    check_output_size,
)
from .errors import ModelLoadError, ParameterError
from .ifnet import TRAINING_ONLY_PREFIXES, IFNet, IFNetConfig, pad_multiple, unwrap_rife_state
from .outputs import RawOutput, RawVideo, decode_video_bytes
from .statedict import StateDictError, load_published, read_published
from .weights import tiny_init

__all__ = ["PRESETS", "InterpolateAdapter", "InterpolatorSetup", "VideoProbe", "interpolate_frames", "probe_video"]

RGB = npt.NDArray[np.uint8]  # H × W × 3
TINY_SEED = 0
# The tiny preset starts near a cross-fade: each block's output layer is scaled
# down so random weights predict sub-pixel flows. Its outputs then look like
# the inputs (perceptual hashes stay meaningful in simulations) and two equal
# frames interpolate to themselves, while every warp still runs.
TINY_OUTPUT_GAIN = 1e-3
_MIB = 1 << 20


@dataclass(frozen=True)
class InterpolatorSetup:
    """What a preset fixes beyond its ModelSpec: the network, its file, the batching."""

    config: IFNetConfig
    weight_file: str | None  # under weights_dir / spec.weights_subdir; None: tiny random weights
    source: str  # where the file is published, for WeightsMissing
    timesteps_per_pass: int  # in-between frames of one pair computed in one forward pass

    def __post_init__(self) -> None:
        if self.timesteps_per_pass < 1:
            raise ValueError(f"timesteps_per_pass must be positive, got {self.timesteps_per_pass}")


def _to_tensor(frame: RGB, like: torch.Tensor) -> torch.Tensor:
    # A copy: decoded frames are often read-only views, which torch will not wrap.
    tensor = torch.from_numpy(np.array(frame, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    return tensor.to(device=like.device, dtype=like.dtype) / 255.0


def check_frames(frames: Sequence[RGB]) -> tuple[int, int]:
    """At least two H × W × 3 uint8 frames of one size; returns (width, height)."""
    if len(frames) < 2:
        raise ParameterError("frames", len(frames), "at least 2 frames")
    first = frames[0]
    for index, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ParameterError(f"frames[{index}]", f"{frame.dtype} {frame.shape}", "H × W × 3 uint8 RGB")
        if frame.shape != first.shape:
            raise ParameterError(
                f"frames[{index}]",
                f"{frame.shape[1]}x{frame.shape[0]}",
                f"the size of frame 0, {first.shape[1]}x{first.shape[0]}",
            )
    return int(first.shape[1]), int(first.shape[0])


def interpolate_frames(
    net: IFNet,
    frames: Sequence[RGB],
    multiplier: int,
    timesteps_per_pass: int,
    cancel: CancelToken | None = None,
    progress: ProgressCallback | None = None,
) -> list[RGB]:
    """The input frames with ``multiplier - 1`` synthesised frames between each pair."""
    check_int("multiplier", multiplier, 2, 64)
    width, height = check_frames(frames)
    param = next(net.parameters())
    multiple = pad_multiple()
    padding = (0, -width % multiple, 0, -height % multiple)
    timesteps = [i / multiplier for i in range(1, multiplier)]
    out: list[RGB] = [frames[0]]
    pairs = len(frames) - 1
    next_img = F.pad(_to_tensor(frames[0], param), padding)
    for index in range(pairs):
        img0, next_img = next_img, F.pad(_to_tensor(frames[index + 1], param), padding)
        for start in range(0, len(timesteps), timesteps_per_pass):
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = torch.tensor(timesteps[start : start + timesteps_per_pass], dtype=param.dtype)
            k = chunk.shape[0]
            mid = net(img0.expand(k, -1, -1, -1), next_img.expand(k, -1, -1, -1), chunk.to(param.device))
            # Round half up after clamping: the same quantisation on every device.
            quantised = (mid[:, :, :height, :width].float().clamp(0.0, 1.0) * 255.0 + 0.5).floor()
            out.extend(q for q in quantised.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        out.append(frames[index + 1])
        if progress is not None:
            progress(StepProgress("pair", index + 1, pairs))
    return out


@dataclass(frozen=True)
class VideoProbe:
    width: int  # pixels
    height: int  # pixels
    num_frames: int  # packets in the video stream, capped at the probe's limit + 1
    fps: float  # average frames per second; 0.0 when the container does not say


def probe_video(data: bytes, max_frames: int) -> VideoProbe:
    """Size, frame count and rate from the container, without decoding a frame.

    Counting stops one past ``max_frames`` so an enormous stream costs nothing.
    """
    import av  # here, not at the top: nodes serving only image models never load FFmpeg

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            if codec is None:  # a damaged container can name a stream FFmpeg has no decoder state for
                raise ParameterError("video", f"<{len(data)} bytes>", "a decodable video (its stream has no codec)")
            width, height = int(codec.width), int(codec.height)
            rate = stream.average_rate or stream.guessed_rate
            count = 0
            for packet in container.demux(stream):
                count += packet.size > 0  # the demuxer ends with an empty flush packet
                if count > max_frames:
                    break
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise ParameterError("video", f"<{len(data)} bytes>", f"a decodable video ({exc})") from exc
    return VideoProbe(width, height, count, float(rate) if rate else 0.0)


def _max_input_frames(limits: Limits, multiplier: int) -> int:
    # (n - 1) · multiplier + 1 output frames must fit in limits.max_frames.
    return (limits.max_frames - 1) // multiplier + 1


class InterpolateAdapter(SingleNetworkAdapter[IFNet, InterpolatorSetup]):
    """Serves ``frame-interpolation`` with one IFNet; see the module docstring."""

    MODULE_NAME = "flownet"

    def _build_tiny(self) -> IFNet:
        with tiny_init(TINY_SEED):
            net = IFNet(self.setup.config)
        with torch.no_grad():
            for block in (net.block0, net.block1, net.block2, net.block3, net.block4):
                for p in block.lastconv.parameters():
                    p.mul_(TINY_OUTPUT_GAIN)
        return net

    def _read_real(self) -> IFNet:
        path = self._weight_path()
        try:
            state = unwrap_rife_state(read_published(path), str(path))
        except StateDictError as exc:
            raise ModelLoadError(str(exc)) from exc
        net = IFNet(self.setup.config)
        load_published(net, state, path, TRAINING_ONLY_PREFIXES, expected=self.setup.source)
        return net

    def check_inputs(self, request: Request) -> None:
        super().check_inputs(request)
        if isinstance(request, FrameInterpolationRequest):
            limits = self.spec.limits
            max_in = _max_input_frames(limits, request.multiplier)
            probe = probe_video(request.video, max_in)
            check_output_size(limits, probe.width, probe.height)
            if not 2 <= probe.num_frames <= max_in:
                shown = f"more than {max_in}" if probe.num_frames > max_in else probe.num_frames
                raise ParameterError(
                    "video", f"{shown} frames", f"2 to {max_in} frames at multiplier {request.multiplier}"
                )
            if probe.fps <= 0:
                raise ParameterError("video", "no frame rate", "a video whose container states its frame rate")

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        assert self._net is not None
        outputs: list[RawOutput] = []
        for request in requests:
            assert isinstance(request, FrameInterpolationRequest)
            timer = StageTimer()
            max_in = _max_input_frames(self.spec.limits, request.multiplier)
            with timer.stage("decode"):
                # The probe read the container's size and counted packets; a stream can still decode to
                # other sizes (a new SPS) or counts. Each frame is checked as it is decoded: the size the
                # container states (which check_inputs held to the limits), within the limits, and no
                # more frames than the limits take.
                images, fps = decode_video_bytes(
                    request.video, max_frames=max_in, max_pixels=self.spec.limits.max_pixels
                )
                frames = [np.asarray(image, dtype=np.uint8) for image in images]
            check_frames(frames)
            check_int("video frames", len(frames), 2, max_in)
            with timer.stage("interpolate"):
                result = interpolate_frames(
                    self._net, frames, request.multiplier, self.setup.timesteps_per_pass, cancel, progress
                )
            outputs.append(RawVideo(tuple(result), fps * request.multiplier, timer.ms))
        return outputs


# --- presets -------------------------------------------------------------------------------

_TINY = InterpolatorSetup(
    IFNetConfig(block_widths=(16, 16, 8, 8, 8), head_ch=4), weight_file=None, source="", timesteps_per_pass=4
)
_RIFE = InterpolatorSetup(
    IFNetConfig(),
    weight_file="flownet.pkl",
    source="train_log/flownet.pkl of the Practical-RIFE v4.25 model archive, "
    "linked from github.com/hzwer/Practical-RIFE",
    timesteps_per_pass=2,
)


def _factory(setup: InterpolatorSetup) -> Callable[[ModelSpec, Path | None], ModelAdapter]:
    def make(spec: ModelSpec, weights_dir: Path | None) -> ModelAdapter:
        return InterpolateAdapter(spec, weights_dir, setup)

    return make


_INTERPOLATE = frozenset({PipelineKind.FRAME_INTERPOLATION})
_MULTIPLIERS = (2, 3, 4, 5, 6, 7, 8)

PRESETS: tuple[Preset, ...] = (
    Preset(
        ModelSpec(
            name="tiny-rife",
            model_id="lpnode/tiny-rife",
            family="rife",
            pipelines=_INTERPOLATE,
            limits=Limits(max_pixels=256 * 256, max_side=256, size_multiple=2, max_frames=64, scales=_MULTIPLIERS),
            vram_bytes=64 * _MIB,
            tiny=True,
        ),
        _factory(_TINY),
    ),
    Preset(
        ModelSpec(
            name="rife",
            model_id="hzwer/Practical-RIFE-4.25",
            family="rife",
            pipelines=_INTERPOLATE,
            limits=Limits(max_pixels=2560 * 1440, max_side=2560, size_multiple=2, max_frames=1024, scales=_MULTIPLIERS),
            # fp16 weights (11 MB) plus two timesteps of full-resolution maps at
            # 2560×1536 (padded 1440p): the last block's 52-channel input dominates.
            vram_bytes=3072 * _MIB,
            tiny=False,
            weights_subdir="rife",
            source=_RIFE.source,
        ),
        _factory(_RIFE),
    ),
)
