"""IFNet, the flow network of RIFE (Real-time Intermediate Flow Estimation).

This is the architecture of **Practical-RIFE v4.25** (hzwer/Practical-RIFE,
``train_log/IFNet_HDv3.py`` beside a ``RIFE_HDv3.py`` declaring
``version = 4.25``; another release loads only if its file has exactly these
tensors): a shared 16-channel feature encoder (``encode``: ``cnn0``..``cnn3``)
and five coarse-to-fine ``IFBlock`` s of widths
192, 128, 96, 64, 32 run at 1/16, 1/8, 1/4, 1/2 and full resolution. Each block
refines two flows (t→0 and t→1), a blend-mask logit and 8 channels of
features handed to the next block. The output frame is the two backward-warped
inputs blended by the sigmoid of the final mask.

Module and parameter names match the published ``flownet.pkl`` (whose keys
carry DataParallel's ``module.`` prefix; :func:`unwrap_rife_state` strips it).
Training-only heads that some files may carry (``teacher``, ``caltime``) are
not part of inference and are listed in :data:`TRAINING_ONLY_PREFIXES`.

Differences from the published inference code, all in our favour for
verification: the warping grid is built per call instead of cached in a
module-global dict; the timestep may be a per-sample tensor, so the in-between
frames of one pair run as one batch; the caller pads and crops (see
:func:`pad_multiple`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .statedict import StateDictError, only_tensors, strip_prefix

TRAINING_ONLY_PREFIXES = ("teacher.", "caltime.")
_LRELU_SLOPE = 0.2
# Each block ends with a transposed conv to 4·13 channels and a 2× pixel
# shuffle: 13 = 4 flow channels + 1 mask logit + 8 feature channels.
_FLOW_CH = 4
_BLOCK_FEAT_CH = 8
_BLOCK_OUT_CH = _FLOW_CH + 1 + _BLOCK_FEAT_CH
# The published inference (inference_video.py) pads frames to a multiple of
# max(128, 128 / scale); at 1/16 scale plus two stride-2 convs, smaller
# multiples would not round-trip through the coarsest block.
_PAD_BASE = 128


@dataclass(frozen=True)
class IFNetConfig:
    """Hyper-parameters; the defaults are Practical-RIFE v4.25."""

    block_widths: tuple[int, ...] = (192, 128, 96, 64, 32)
    head_ch: int = 16

    def __post_init__(self) -> None:
        if len(self.block_widths) != 5:
            raise ValueError(f"IFNet has 5 blocks, got widths {self.block_widths}")
        if any(w < 2 or w % 2 for w in self.block_widths):
            raise ValueError(f"IFNet block widths must be even and ≥ 2, got {self.block_widths}")
        if self.head_ch < 1:
            raise ValueError(f"IFNet head_ch must be positive, got {self.head_ch}")


def _conv(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    # A Sequential (not a bare conv) so the keys read ``conv0.0.0.weight`` as published.
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.LeakyReLU(_LRELU_SLOPE))


class Head(nn.Module):
    """Per-frame feature encoder: half resolution inside, full resolution out."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, ch, 3, 2, 1)
        self.cnn1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.cnn2 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(ch, ch, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.cnn0(x), _LRELU_SLOPE)
        x = F.leaky_relu(self.cnn1(x), _LRELU_SLOPE)
        x = F.leaky_relu(self.cnn2(x), _LRELU_SLOPE)
        out: torch.Tensor = self.cnn3(x)
        return out


class ResConv(nn.Module):
    """3×3 conv with a learned per-channel gain on the residual branch."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, c, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, _LRELU_SLOPE)


class IFBlock(nn.Module):
    """One refinement level: runs at 1/(4·scale) inside, returns full-size maps."""

    def __init__(self, in_planes: int, c: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock = nn.Sequential(*(ResConv(c) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * _BLOCK_OUT_CH, 4, 2, 1), nn.PixelShuffle(2))

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            # Flow is in pixels, so it shrinks with the image.
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) * (1.0 / scale)
            x = torch.cat((x, flow), 1)
        feat = self.convblock(self.conv0(x))
        tmp = F.interpolate(self.lastconv(feat), scale_factor=scale, mode="bilinear", align_corners=False)
        return tmp[:, :_FLOW_CH] * scale, tmp[:, _FLOW_CH : _FLOW_CH + 1], tmp[:, _FLOW_CH + 1 :]


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at (x + flow_x, y + flow_y); flow in pixels, shape (N, 2, H, W).

    Same arithmetic as RIFE's ``warplayer.warp`` (normalised grid from
    ``linspace(-1, 1)``, bilinear, border padding, ``align_corners=True``), so
    trained weights see the warps they were trained with.
    """
    n, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    grid = torch.cat((xs, ys), 1)
    norm = torch.cat((flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0), flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)), 1)
    return F.grid_sample(
        image, (grid + norm).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=True
    )


class IFNet(nn.Module):
    """Synthesises the frame at ``timestep`` ∈ [0, 1] between ``img0`` and ``img1``.

    Inputs are RGB in [0, 1], shape (N, 3, H, W), with H and W multiples of
    :func:`pad_multiple` (``scale``). ``timestep`` is a float or a tensor of N
    values. The output is not clamped.
    """

    def __init__(self, config: IFNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or IFNetConfig()
        widths = self.config.block_widths
        feat = self.config.head_ch
        # Block 0 sees both frames, both feature maps and the timestep; later
        # blocks also see the mask logit, the previous block's features and the flow.
        first_in = 3 + 3 + 2 * feat + 1
        later_in = 3 + 3 + 2 * feat + 1 + 1 + _BLOCK_FEAT_CH + _FLOW_CH
        self.block0 = IFBlock(first_in, c=widths[0])
        self.block1 = IFBlock(later_in, c=widths[1])
        self.block2 = IFBlock(later_in, c=widths[2])
        self.block3 = IFBlock(later_in, c=widths[3])
        self.block4 = IFBlock(later_in, c=widths[4])
        self.encode = Head(feat)

    def forward(
        self,
        img0: torch.Tensor,
        img1: torch.Tensor,
        timestep: float | torch.Tensor = 0.5,
        scale: float = 1.0,
    ) -> torch.Tensor:
        if img0.shape != img1.shape:
            raise ValueError(f"frames differ in shape: {tuple(img0.shape)} vs {tuple(img1.shape)}")
        n, _, h, w = img0.shape
        multiple = pad_multiple(scale)
        if h % multiple or w % multiple:
            raise ValueError(f"frame size {w}x{h} is not a multiple of {multiple}; pad first")
        t = torch.as_tensor(timestep, dtype=img0.dtype, device=img0.device).reshape(-1, 1, 1, 1)
        if t.shape[0] not in (1, n):
            raise ValueError(f"{t.shape[0]} timesteps for a batch of {n}")
        t_map = t.expand(n, 1, h, w)
        scales = [16.0 / scale, 8.0 / scale, 4.0 / scale, 2.0 / scale, 1.0 / scale]
        f0 = self.encode(img0)
        f1 = self.encode(img1)
        blocks: Sequence[IFBlock] = (self.block0, self.block1, self.block2, self.block3, self.block4)
        flow, mask, feat = blocks[0](torch.cat((img0, img1, f0, f1, t_map), 1), None, scale=scales[0])
        warped0 = backward_warp(img0, flow[:, :2])
        warped1 = backward_warp(img1, flow[:, 2:4])
        for block, block_scale in zip(blocks[1:], scales[1:], strict=True):
            wf0 = backward_warp(f0, flow[:, :2])
            wf1 = backward_warp(f1, flow[:, 2:4])
            x = torch.cat((warped0, warped1, wf0, wf1, t_map, mask, feat), 1)
            delta, mask, feat = block(x, flow, scale=block_scale)
            flow = flow + delta
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


def pad_multiple(scale: float = 1.0) -> int:
    """Frames are padded to a multiple of this before :class:`IFNet` (as published)."""
    return max(_PAD_BASE, int(_PAD_BASE / scale))


def unwrap_rife_state(loaded: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``flownet.pkl``, with DataParallel's ``module.`` prefix removed."""
    tensors = only_tensors(loaded, source)
    if not tensors:
        raise StateDictError(f"{source}: the weight file holds no tensors")
    return strip_prefix(tensors, "module.")
