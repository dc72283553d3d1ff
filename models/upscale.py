"""Upscaling with Real-ESRGAN's RRDBNet at ×2 or ×4: an image (PNG in, PNG out) or a video (MP4 in, MP4 out).

Device stages: (1) decode the image or every frame of the video, (2) run the
network tile by tile (frame after frame for a video); the output stage
(``ModelAdapter.finish``, off the device) encodes the PNG, or the frames as
H.264 at the input's frame rate, so a video keeps its frame count and duration.
Frames are upscaled independently, exactly as images are: no temporal model,
so each output frame is the image upscale of its input frame.

Tiling is part of the *model definition* here, not a node setting: a tile's
output depends (slightly) on how much context it saw, so every honest node
must cut the same tiles to produce the same pixels. Each preset therefore fixes
``tile`` (input pixels per tile side) and ``tile_pad`` (input pixels of context
read around each tile and thrown away after). Peak memory is bounded by one
tile's activations plus the uint8 output image (every output frame, for a
video: hence the preset's ``max_total_pixels``).

A ×2 request on a ×4 network averages each 2×2 block of the ×4 output (the role
of Real-ESRGAN's ``--outscale``, which resizes with Lanczos; the box filter is
exact, needs no resampling library and aligns with tile seams).
"""

from __future__ import annotations

import dataclasses
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
    Limits,
    ModelAdapter,
    ModelSpec,
    PipelineKind,
    Preset,
    ProgressCallback,
    Request,
    StageTimer,
    StepProgress,
    UpscaleRequest,
    check_output_size,
    check_video_output,
)
from .errors import ModelLoadError, ParameterError
from .interpolate import probe_video
from .outputs import RGB, RawImage, RawOutput, RawVideo, decode_image_bytes, decode_video_bytes, image_size
from .rrdbnet import RRDBNet, RRDBNetConfig, infer_rrdbnet_config, unwrap_esrgan_state
from .statedict import StateDictError, load_published, read_published
from .weights import tiny_init

__all__ = [
    "PRESETS",
    "UpscaleAdapter",
    "UpscaleInput",
    "UpscalerSetup",
    "check_upscale_input",
    "probe_upscale_input",
    "tile_grid",
    "upscale_array",
]

TINY_SEED = 0
_MIB = 1 << 20


@dataclass(frozen=True)
class UpscalerSetup:
    """What a preset fixes beyond its ModelSpec: the network, its file, the tiling."""

    config: RRDBNetConfig
    weight_file: str | None  # under weights_dir / spec.weights_subdir; None: tiny random weights
    source: str  # where the file is published, for WeightsMissing
    tile: int  # input pixels per tile side
    tile_pad: int  # input pixels of context around each tile

    def __post_init__(self) -> None:
        # Keeping tile and pad multiples of 4 keeps every crop aligned with the
        # pixel unshuffle of ×2/×1 networks and with the 2×2 averaging of ×2-from-×4.
        if self.tile < 4 or self.tile % 4 or self.tile_pad < 0 or self.tile_pad % 4:
            raise ValueError(f"tile ({self.tile}) and tile_pad ({self.tile_pad}) must be multiples of 4")


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(y0, y1, x0, x1)`` covering an image row by row; edge tiles are smaller."""
    return [
        (y0, min(y0 + tile, height), x0, min(x0 + tile, width))
        for y0 in range(0, height, tile)
        for x0 in range(0, width, tile)
    ]


def upscale_array(
    net: RRDBNet,
    rgb: npt.NDArray[np.uint8],
    out_scale: int,
    tile: int | None,
    tile_pad: int,
    cancel: CancelToken | None = None,
    progress: ProgressCallback | None = None,
) -> npt.NDArray[np.uint8]:
    """Upscale an H × W × 3 uint8 image by ``out_scale`` (the net's scale, or half of it).

    ``tile=None`` runs the whole image at once (for tests and small inputs).
    """
    net_scale = net.config.scale
    if out_scale not in (net_scale, net_scale // 2) or out_scale < 1:
        raise ValueError(f"a ×{net_scale} network cannot produce ×{out_scale}")
    pool = net_scale // out_scale
    height, width = rgb.shape[:2]
    param = next(net.parameters())
    # A copy: decoded images are often read-only views, which torch will not wrap.
    image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
    image = image.to(device=param.device, dtype=param.dtype) / 255.0
    # ×2/×1 networks fold 2×2/4×4 pixel blocks into channels: replicate the last
    # row/column up to a whole block and crop the output afterwards.
    multiple = net.config.input_multiple
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    full_h, full_w = image.shape[2], image.shape[3]
    out = np.empty((full_h * out_scale, full_w * out_scale, 3), dtype=np.uint8)
    tiles = tile_grid(full_h, full_w, tile if tile is not None else max(full_h, full_w))
    for index, (y0, y1, x0, x1) in enumerate(tiles, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        cy0, cy1 = max(0, y0 - tile_pad), min(full_h, y1 + tile_pad)
        cx0, cx1 = max(0, x0 - tile_pad), min(full_w, x1 + tile_pad)
        result = net(image[:, :, cy0:cy1, cx0:cx1])
        s = net_scale
        result = result[:, :, (y0 - cy0) * s : (y1 - cy0) * s, (x0 - cx0) * s : (x1 - cx0) * s]
        # Clamp before the box filter, as Real-ESRGAN clamps before resizing.
        result = result.float().clamp(0.0, 1.0)
        if pool > 1:
            result = F.avg_pool2d(result, pool)
        # Round half up: the same quantisation on every device.
        quantised = (result * 255.0 + 0.5).floor().to(torch.uint8)
        o = out_scale
        out[y0 * o : y1 * o, x0 * o : x1 * o] = quantised[0].permute(1, 2, 0).cpu().numpy()
        if progress is not None:
            progress(StepProgress("tile", index, len(tiles)))
    return out[: height * out_scale, : width * out_scale]


def _image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header only, so oversized inputs fail before decoding (the output's
    limits bound them, ``check_upscale_input``; decoding refuses more than MAX_IMAGE_PIXELS whatever)."""
    return image_size(data, "image", max_pixels=None)


@dataclass(frozen=True)
class UpscaleInput:
    """An upscale request's input as its header or container describes it (nothing decoded)."""

    width: int  # pixels
    height: int  # pixels
    num_frames: int  # 1 for an image; for a video the packets counted, capped at the probe's limit + 1
    fps: float  # frames per second of a video; 0.0 for an image or a container that does not say


def probe_upscale_input(request: UpscaleRequest, max_frames: int) -> UpscaleInput:
    """Size (and frame count and rate, for a video) of the request's input; ParameterError if undecodable."""
    if request.video is not None:
        probe = probe_video(request.video, max_frames)
        return UpscaleInput(probe.width, probe.height, probe.num_frames, probe.fps)
    assert request.image is not None  # UpscaleRequest holds exactly one
    width, height = _image_size(request.image)
    return UpscaleInput(width, height, 1, 0.0)


def check_upscale_input(limits: Limits, request: UpscaleRequest) -> UpscaleInput:
    """The output an upscale request would make, against ``limits``, from the input's header alone."""
    found = probe_upscale_input(request, limits.max_frames)
    width, height = found.width * request.scale, found.height * request.scale
    if request.video is None:
        check_output_size(limits, width, height)
        return found
    if found.num_frames > limits.max_frames:
        raise ParameterError("video", f"more than {limits.max_frames} frames", f"1 to {limits.max_frames} frames")
    if found.num_frames < 1:
        raise ParameterError("video", "no frames", f"1 to {limits.max_frames} frames")
    check_video_output(limits, width, height, found.num_frames)
    if found.fps <= 0:
        raise ParameterError("video", "no frame rate", "a video whose container states its frame rate")
    return found


def _check_decoded(limits: Limits, frames: Sequence[RGB], scale: int) -> None:
    """The probe read the container; the decoded stream must still hold one size and a bounded count."""
    first = frames[0]
    for index, frame in enumerate(frames):
        if frame.shape != first.shape:
            shown = f"{frame.shape[1]}x{frame.shape[0]}"
            raise ParameterError(
                f"video frame {index}", shown, f"the size of frame 0, {first.shape[1]}x{first.shape[0]}"
            )
    check_video_output(limits, int(first.shape[1]) * scale, int(first.shape[0]) * scale, len(frames))


# What the tiny net's output is rescaled to on a fixed probe image: mid-grey with visible
# contrast, so its images are neither black nor saturated after the clamp to [0, 1].
_TINY_OUTPUT_MEAN = 0.5
_TINY_OUTPUT_STD = 0.2
_TINY_PROBE_SIDE = 32


@torch.no_grad()
def _centre_tiny_output(net: RRDBNet) -> None:
    """Rescale a random RRDBNet's last conv so its outputs land mid-range.

    Left as built, a random-weight RRDBNet answers every image with values
    around -0.06 ± 0.03: black after the clamp, so a blank (cheating) output
    would look exactly like an honest one and comparisons would mean nothing.
    Shifting and scaling ``conv_last`` per channel (an affine map of the same
    architecture, decided by a probe image drawn from the tiny seed) keeps the
    output a function of the input and the weights hash stable.
    """
    probe = torch.rand(1, net.config.num_in_ch, _TINY_PROBE_SIDE, _TINY_PROBE_SIDE)
    out = net(probe)
    mean = out.mean(dim=(0, 2, 3))
    std = out.std(dim=(0, 2, 3)).clamp_min(1e-6)
    gain = _TINY_OUTPUT_STD / std
    net.conv_last.weight.mul_(gain.view(-1, 1, 1, 1))
    assert net.conv_last.bias is not None  # built with bias=True
    net.conv_last.bias.sub_(mean).mul_(gain).add_(_TINY_OUTPUT_MEAN)


class UpscaleAdapter(SingleNetworkAdapter[RRDBNet, UpscalerSetup]):
    """Serves ``upscale`` with one RRDBNet; see the module docstring for tiling."""

    MODULE_NAME = "generator"

    def _build_tiny(self) -> RRDBNet:
        with tiny_init(TINY_SEED):
            net = RRDBNet(self.setup.config)
            _centre_tiny_output(net)
        return net

    def _read_real(self) -> RRDBNet:
        path = self._weight_path()
        try:
            state = unwrap_esrgan_state(read_published(path), str(path))
            found = infer_rrdbnet_config(state, str(path))
        except StateDictError as exc:
            raise ModelLoadError(str(exc)) from exc
        if found != self.setup.config:
            raise ModelLoadError(
                f"{path} holds an RRDBNet with {found}; preset {self.spec.name} needs {self.setup.config}"
            )
        net = RRDBNet(self.setup.config)
        load_published(net, state, path)
        return net

    def check_inputs(self, request: Request) -> None:
        super().check_inputs(request)
        if isinstance(request, UpscaleRequest):
            check_upscale_input(self.spec.limits, request)

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        assert self._net is not None
        outputs: list[RawOutput] = []
        for request in requests:
            assert isinstance(request, UpscaleRequest)
            if request.video is not None:
                outputs.append(self._upscale_video(request.video, request.scale, cancel, progress))
                continue
            assert request.image is not None
            timer = StageTimer()
            with timer.stage("decode"):
                rgb = np.asarray(decode_image_bytes(request.image), dtype=np.uint8)
            with timer.stage("upscale"):
                out = upscale_array(
                    self._net, rgb, request.scale, self.setup.tile, self.setup.tile_pad, cancel, progress
                )
            outputs.append(RawImage(out, timer.ms))
        return outputs

    def _upscale_video(self, video: bytes, scale: int, cancel: CancelToken, progress: ProgressCallback) -> RawVideo:
        assert self._net is not None
        timer = StageTimer()
        with timer.stage("decode"):
            # Frames of the size the container states (checked against the limits in check_inputs), no more
            # than the limits take: the decoder stops at the first that is not, holding no more.
            images, fps = decode_video_bytes(video, max_frames=self.spec.limits.max_frames)
            frames = [np.asarray(image, dtype=np.uint8) for image in images]
        _check_decoded(self.spec.limits, frames, scale)
        out: list[RGB] = []
        with timer.stage("upscale"):
            for index, frame in enumerate(frames, start=1):
                # tiles report nothing here: a video's progress is its frames
                out.append(upscale_array(self._net, frame, scale, self.setup.tile, self.setup.tile_pad, cancel))
                progress(StepProgress("frame", index, len(frames)))
        return RawVideo(tuple(out), fps, timer.ms)


# --- presets -------------------------------------------------------------------------------

_TINY = UpscalerSetup(
    RRDBNetConfig(scale=4, num_feat=8, num_block=1, num_grow_ch=4),
    weight_file=None,
    source="",
    tile=32,
    tile_pad=8,
)
_X4 = UpscalerSetup(
    RRDBNetConfig(scale=4),
    weight_file="RealESRGAN_x4plus.pth",
    source="Real-ESRGAN release v0.1.0, github.com/xinntao/Real-ESRGAN/releases",
    tile=256,
    tile_pad=16,
)
_X2 = UpscalerSetup(
    RRDBNetConfig(scale=2),
    weight_file="RealESRGAN_x2plus.pth",
    source="Real-ESRGAN release v0.2.1, github.com/xinntao/Real-ESRGAN/releases",
    tile=256,
    tile_pad=16,
)


def _factory(setup: UpscalerSetup) -> Callable[[ModelSpec, Path | None], ModelAdapter]:
    def make(spec: ModelSpec, weights_dir: Path | None) -> ModelAdapter:
        return UpscaleAdapter(spec, weights_dir, setup)

    return make


_UPSCALE = frozenset({PipelineKind.UPSCALE})
# A video's output frames wait in memory for the encoder: 2**27 output pixels (~400 MB of
# RGB) is 16 frames of 4K or 64 of 1080p.
_REAL_LIMITS = Limits(
    max_pixels=4096 * 4096, max_side=8192, size_multiple=2, scales=(2, 4), max_frames=1024, max_total_pixels=1 << 27
)

PRESETS: tuple[Preset, ...] = (
    Preset(
        ModelSpec(
            name="tiny-realesrgan",
            model_id="lpnode/tiny-realesrgan",
            family="rrdbnet",
            pipelines=_UPSCALE,
            limits=Limits(
                max_pixels=512 * 512,
                max_side=512,
                size_multiple=2,
                scales=(2, 4),
                max_frames=32,
                max_total_pixels=1 << 20,
            ),
            vram_bytes=64 * _MIB,
            tiny=True,
        ),
        _factory(_TINY),
    ),
    Preset(
        ModelSpec(
            name="realesrgan-x4",
            model_id="xinntao/RealESRGAN_x4plus",
            family="rrdbnet",
            pipelines=_UPSCALE,
            limits=_REAL_LIMITS,
            # fp16 weights (33 MB) plus one 288×288-input tile's activations, the
            # largest being a few 64-channel maps at 1152×1152.
            vram_bytes=1536 * _MIB,
            tiny=False,
            weights_subdir="realesrgan",
            source=_X4.source,
        ),
        _factory(_X4),
    ),
    Preset(
        ModelSpec(
            name="realesrgan-x2",
            model_id="xinntao/RealESRGAN_x2plus",
            family="rrdbnet",
            pipelines=_UPSCALE,
            limits=dataclasses.replace(_REAL_LIMITS, scales=(2,)),
            vram_bytes=1024 * _MIB,
            tiny=False,
            weights_subdir="realesrgan",
            source=_X2.source,
            defaults={"scale": 2},
        ),
        _factory(_X2),
    ),
)
