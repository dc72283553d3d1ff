"""RRDBNet, the generator of ESRGAN and Real-ESRGAN.

Module and parameter names follow BasicSR's ``basicsr/archs/rrdbnet_arch.py``
(the architecture Real-ESRGAN imports), so the published weight files load
unchanged: ``RealESRGAN_x4plus.pth`` (scale 4, ``num_feat=64``,
``num_block=23``, ``num_grow_ch=32``) and ``RealESRGAN_x2plus.pth`` (scale 2,
same widths). Their tensors sit under ``params_ema`` (older files under
``params``); :func:`unwrap_esrgan_state` handles both.

For scale 2 and 1 the network first folds space into channels with a pixel
unshuffle (2× and 4×) and then runs the same ×4 body, which is why those files
have 12 and 48 input channels in ``conv_first``. ``torch.nn.functional.pixel_unshuffle``
orders channels exactly as BasicSR's own ``pixel_unshuffle`` helper
(``c * r * r + i * r + j``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .statedict import StateDictError, only_tensors, strip_prefix

SUPPORTED_SCALES = (1, 2, 4)
# Input pixels folded into one feature position for each scale (see module docstring).
_UNSHUFFLE = {1: 4, 2: 2, 4: 1}
_LRELU_SLOPE = 0.2
# ESRGAN scales both residual branches by 0.2 ("residual scaling" in the paper);
# the trained weights assume it.
_RESIDUAL_SCALE = 0.2


@dataclass(frozen=True)
class RRDBNetConfig:
    """Hyper-parameters; the defaults are RealESRGAN_x4plus."""

    scale: int = 4
    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32

    def __post_init__(self) -> None:
        if self.scale not in SUPPORTED_SCALES:
            raise ValueError(f"RRDBNet scale must be one of {SUPPORTED_SCALES}, got {self.scale}")
        for name in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch"):
            if getattr(self, name) < 1:
                raise ValueError(f"RRDBNet {name} must be positive, got {getattr(self, name)}")

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (the unshuffle factor)."""
        return _UNSHUFFLE[self.scale]


class ResidualDenseBlock5C(nn.Module):
    """Five densely connected 3×3 convolutions with a scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), _LRELU_SLOPE)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), _LRELU_SLOPE)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), _LRELU_SLOPE)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), _LRELU_SLOPE)
        x5: torch.Tensor = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * _RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks and an outer residual."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock5C(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock5C(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock5C(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * _RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """Maps an RGB batch in [0, 1], shape (N, 3, H, W), to (N, 3, H·scale, W·scale).

    The output is not clamped; callers clamp before quantising.
    """

    def __init__(self, config: RRDBNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or RRDBNetConfig()
        c = self.config
        unshuffle = _UNSHUFFLE[c.scale]
        self.conv_first = nn.Conv2d(c.num_in_ch * unshuffle * unshuffle, c.num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(c.num_feat, c.num_grow_ch) for _ in range(c.num_block)))
        self.conv_body = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        # Upsampling is nearest-neighbour ×2 then a conv, twice: no transposed
        # convolutions, hence no checkerboard artefacts.
        self.conv_up1 = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(c.num_feat, c.num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(c.num_feat, c.num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unshuffle = _UNSHUFFLE[self.config.scale]
        feat = F.pixel_unshuffle(x, unshuffle) if unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        out: torch.Tensor = self.conv_last(F.leaky_relu(self.conv_hr(feat), _LRELU_SLOPE))
        return out


def unwrap_esrgan_state(loaded: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    """The tensors of a Real-ESRGAN / BasicSR checkpoint, whatever its wrapper.

    Real-ESRGAN's own loader prefers ``params_ema`` (the EMA generator it
    publishes) over ``params``; so do we. A bare state dict is accepted too,
    and a ``module.`` prefix (saved from DataParallel) is stripped.
    """
    inner: object = loaded
    for key in ("params_ema", "params"):
        if key in loaded:
            inner = loaded[key]
            break
    if not isinstance(inner, Mapping):
        raise StateDictError(f"{source}: expected a dict of tensors, found {type(inner).__name__}")
    tensors = only_tensors({str(k): v for k, v in inner.items()}, source)
    return strip_prefix(tensors, "module.")


_BODY_KEY = re.compile(r"^body\.(\d+)\.")


def infer_rrdbnet_config(state: Mapping[str, torch.Tensor], source: str) -> RRDBNetConfig:
    """Read the hyper-parameters off the tensor shapes of a state dict.

    Lets a loader report "this is an x2 file, the preset wants x4" instead of
    a wall of shape mismatches.
    """
    try:
        first = state["conv_first.weight"]
        grow = state["body.0.rdb1.conv1.weight"]
        last = state["conv_last.weight"]
    except KeyError as exc:
        raise StateDictError(f"{source}: not an RRDBNet state dict (no {exc.args[0]})") from exc
    blocks = {int(m.group(1)) for k in state if (m := _BODY_KEY.match(k))}
    folded_in = int(first.shape[1])
    by_fold = {3 * f * f: s for s, f in _UNSHUFFLE.items()}
    if folded_in not in by_fold:
        raise StateDictError(f"{source}: conv_first takes {folded_in} channels; expected 3, 12 or 48")
    return RRDBNetConfig(
        scale=by_fold[folded_in],
        num_in_ch=3,
        num_out_ch=int(last.shape[0]),
        num_feat=int(first.shape[0]),
        num_block=len(blocks),
        num_grow_ch=int(grow.shape[0]),
    )
