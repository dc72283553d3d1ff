"""Output comparison: do two workers' outputs for one job spec agree?

Honest outputs of one job from different hardware never match bit for bit
(other GPU, dtype, attention kernel), so a verdict is a tolerance, chosen per
pipeline (DESIGN.md, comparison tolerance):

* **Diffusion pipelines** (text-to-image, image-to-image, image-to-video) run
  many noisy steps, so honest outputs are *perceptually* close: SSIM and the
  Hamming distance of 64-bit pHashes. A cheat (other seed, other model, blank,
  copied) gives an unrelated image: SSIM near 0, pHash distance near 32.
* **Single-pass pipelines** (upscale, frame interpolation) are near-exact:
  PSNR between honest outputs stays high, and anything else is a cheat.

Videos are compared frame by frame: the *median* frame decides agreement, the
*worst* frame decides disagreement (one blank or copied frame is enough), and
a different frame count is a disagreement outright. Between the agree and
disagree bounds lies ``inconclusive``: not evidence either way, which the
caller may settle with a third peer.

Before any decoding, :func:`compare_receipts` settles the cheap cases from the
signed receipts alone. Decoding is bounded (pixels per frame, frames per video)
so a hostile output cannot make the checker allocate without limit.

The thresholds are calibrated by ``python -m lpnode.reputation.calibrate``
(``docs/verification.md``) and carried by the node config (``Thresholds.from_config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import imagehash
import numpy as np
import numpy.typing as npt
from lpnode.protocol.errors import ConfigError
from lpnode.protocol.jobspec import OUTPUT_MEDIA_TYPES, Pipeline
from lpnode.protocol.receipts import Receipt
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from .errors import OutputUndecodable, Side

__all__ = [
    "PSNR_CAP",
    "Comparison",
    "FrameMetrics",
    "NearExactThresholds",
    "PerceptualThresholds",
    "Thresholds",
    "Verdict",
    "compare_frames",
    "compare_outputs",
    "compare_receipts",
    "decode_frames",
    "frame_metrics",
    "psnr",
    "ssim",
    "worst_verdict",
]

RGB = npt.NDArray[np.uint8]  # H × W × 3
PSNR_CAP = 100.0  # dB reported for identical frames, so every metric is a finite float


class Verdict(StrEnum):
    AGREE = "agree"
    INCONCLUSIVE = "inconclusive"
    DISAGREE = "disagree"


_SEVERITY = {Verdict.AGREE: 0, Verdict.INCONCLUSIVE: 1, Verdict.DISAGREE: 2}


def worst_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict of a job with several outputs: any disagreement wins, then any doubt."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.AGREE)


# ---------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class PerceptualThresholds:
    """Bounds for diffusion pipelines; see docs/verification.md for the measured separation."""

    ssim_agree: float = 0.85  # median frame SSIM at or above this (and pHash within phash_agree) agrees
    ssim_disagree: float = 0.50  # any frame below this disagrees
    phash_agree: int = 10  # bits of 64
    phash_disagree: int = 20  # bits of 64; any frame above this disagrees

    def __post_init__(self) -> None:
        if not -1.0 <= self.ssim_disagree <= self.ssim_agree <= 1.0:
            raise ConfigError(f"need -1 <= ssim_disagree <= ssim_agree <= 1, got {self}")
        if not 0 <= self.phash_agree <= self.phash_disagree <= 64:
            raise ConfigError(f"need 0 <= phash_agree <= phash_disagree <= 64, got {self}")


@dataclass(frozen=True)
class NearExactThresholds:
    """Bounds for single-pass pipelines, on the worst frame's PSNR over RGB."""

    psnr_agree: float = 40.0  # dB
    psnr_disagree: float = 30.0  # dB

    def __post_init__(self) -> None:
        if not 0.0 <= self.psnr_disagree <= self.psnr_agree <= PSNR_CAP:
            raise ConfigError(f"need 0 <= psnr_disagree <= psnr_agree <= {PSNR_CAP}, got {self}")


PipelineThresholds: TypeAlias = PerceptualThresholds | NearExactThresholds


@dataclass(frozen=True)
class Thresholds:
    """Per-pipeline tolerances plus the decoding bounds. ``from_config`` reads the node config's table."""

    text_to_image: PerceptualThresholds = field(default_factory=PerceptualThresholds)
    image_to_image: PerceptualThresholds = field(default_factory=PerceptualThresholds)
    # Video frames are smaller and blurrier per frame than stills; the same bounds held in calibration.
    image_to_video: PerceptualThresholds = field(default_factory=PerceptualThresholds)
    upscale: NearExactThresholds = field(default_factory=NearExactThresholds)
    # Interpolated frames come back as H.264: the encoder turns an honest half-precision run's ~40 dB difference
    # into 27.5–36 dB (worst frame; 940 honest comparisons, docs/verification.md), so the upscale bounds blamed
    # honest nodes. Blank and copied clips stay at ≤ 10.1 dB, far under these bounds.
    frame_interpolation: NearExactThresholds = field(
        default_factory=lambda: NearExactThresholds(psnr_agree=24.0, psnr_disagree=16.0)
    )
    max_pixels: int = 4096 * 4096  # per decoded image or frame
    max_frames: int = 1024  # per decoded video

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_frames < 1:
            raise ConfigError("max_pixels and max_frames must be at least 1")

    def for_pipeline(self, pipeline: Pipeline | str) -> PipelineThresholds:
        value: PipelineThresholds = getattr(self, Pipeline(pipeline).value.replace("-", "_"))
        return value

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Thresholds:
        """Build from a config table: keys are pipeline names (``text-to-image`` or ``text_to_image``)
        holding partial threshold tables, plus ``max_pixels`` / ``max_frames``. Unknown keys are a ConfigError."""
        base = cls()
        changes: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name in ("max_pixels", "max_frames"):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"verification thresholds: {key} must be an integer, got {value!r}")
                changes[name] = value
                continue
            current = getattr(base, name, None)
            if not isinstance(current, PerceptualThresholds | NearExactThresholds):
                raise ConfigError(f"verification thresholds: unknown key {key!r}")
            if not isinstance(value, Mapping):
                raise ConfigError(f"verification thresholds: {key} must be a table, got {value!r}")
            known = {f.name: f.type for f in dataclasses.fields(current)}
            for sub, number in value.items():
                if sub not in known:
                    raise ConfigError(f"verification thresholds: unknown key {key}.{sub} (known: {sorted(known)})")
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise ConfigError(f"verification thresholds: {key}.{sub} must be a number, got {number!r}")
                if known[sub] in ("int", int) and not float(number).is_integer():
                    raise ConfigError(f"verification thresholds: {key}.{sub} must be an integer, got {number!r}")
            typed: dict[str, Any] = {k: int(v) if known[k] in ("int", int) else float(v) for k, v in value.items()}
            changes[name] = dataclasses.replace(current, **typed)
        return dataclasses.replace(base, **changes)

    def to_config(self) -> dict[str, Any]:
        """The inverse of ``from_config`` (wire names for pipelines), for docs and ``lpnode config show``."""
        out: dict[str, Any] = {}
        for pipeline in Pipeline:
            out[pipeline.value] = dataclasses.asdict(self.for_pipeline(pipeline))
        out["max_pixels"], out["max_frames"] = self.max_pixels, self.max_frames
        return out


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class FrameMetrics:
    ssim: float  # mean SSIM over the luma plane, -1..1
    psnr: float  # dB over RGB, capped at PSNR_CAP
    phash: int  # Hamming distance of 64-bit pHashes, 0..64
    dhash: int  # Hamming distance of 64-bit dHashes, 0..64
    max_abs: int  # largest per-channel difference, 0..255


@dataclass(frozen=True)
class Comparison:
    """A verdict and why. For videos ``median`` and ``worst`` are per metric over frames
    (``worst`` takes each metric's worst frame, not one frame); for images both are the one frame."""

    verdict: Verdict
    reason: str  # short word: within_tolerance, uncertain, ssim, phash, psnr, size_mismatch, frame_count_mismatch, ...
    frames: int = 0  # frames compared (1 for an image; 0 when settled without pixels)
    median: FrameMetrics | None = None
    worst: FrameMetrics | None = None


_GAUSS_SIGMA = 1.5  # Wang et al. 2004: 11-tap Gaussian window, sigma 1.5
_GAUSS_TAPS = 11
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _luma(rgb: RGB) -> npt.NDArray[np.float64]:
    x = rgb.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # BT.601, as SSIM's reference code


def _window(size: int) -> npt.NDArray[np.float64]:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights: npt.NDArray[np.float64] = np.exp(-(offsets**2) / (2 * _GAUSS_SIGMA**2))
    return weights / float(weights.sum())


def _filter(x: npt.NDArray[np.float64], g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Separable 'valid' Gaussian filter: rows, then columns."""
    rows: npt.NDArray[np.float64] = sliding_window_view(x, len(g), axis=1) @ g
    cols: npt.NDArray[np.float64] = sliding_window_view(rows, len(g), axis=0) @ g
    return cols


def ssim(a: RGB, b: RGB) -> float:
    """Mean SSIM of the luma planes (Gaussian window; smaller for frames under 11 pixels a side)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim of frames of different shapes {a.shape} and {b.shape}")
    x, y = _luma(a), _luma(b)
    taps = min(_GAUSS_TAPS, *x.shape)
    taps -= 1 - taps % 2  # odd, so the window has a centre
    g = _window(taps)
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    var_x = _filter(x * x, g) - mu_x**2
    var_y = _filter(y * y, g) - mu_y**2
    cov = _filter(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


def psnr(a: RGB, b: RGB) -> float:
    """PSNR in dB over all channels; ``PSNR_CAP`` for identical frames."""
    if a.shape != b.shape:
        raise ValueError(f"psnr of frames of different shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def frame_metrics(a: RGB, b: RGB) -> FrameMetrics:
    """Every metric for one pair of equally sized frames."""
    ia, ib = Image.fromarray(a, mode="RGB"), Image.fromarray(b, mode="RGB")
    return FrameMetrics(
        ssim=ssim(a, b),
        psnr=psnr(a, b),
        phash=int(imagehash.phash(ia) - imagehash.phash(ib)),
        dhash=int(imagehash.dhash(ia) - imagehash.dhash(ib)),
        max_abs=int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16)))),
    )


# ---------------------------------------------------------------- decoding, bounded


def decode_frames(data: bytes, media_type: str, *, max_pixels: int, max_frames: int, side: Side = "a") -> list[RGB]:
    """The RGB frames of a PNG (one frame) or an MP4, refusing absurd sizes before allocating them."""
    if media_type.startswith("image/"):
        return [_decode_image(data, max_pixels, side)]
    if media_type.startswith("video/"):
        return _decode_video(data, max_pixels, max_frames, side)
    raise ValueError(f"cannot compare media type {media_type!r}")


def _decode_image(data: bytes, max_pixels: int, side: Side) -> RGB:
    try:
        with Image.open(io.BytesIO(data)) as img:
            # The header gives the size: refuse before load() allocates the pixels.
            if img.width * img.height > max_pixels:
                raise OutputUndecodable(side, f"{img.width}x{img.height} image, limit {max_pixels} pixels")
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise OutputUndecodable(side, f"not a decodable image ({exc})") from exc


def _decode_video(data: bytes, max_pixels: int, max_frames: int, side: Side) -> list[RGB]:
    frames = list(_video_frames(data, max_pixels, max_frames, side))
    if not frames:
        raise OutputUndecodable(side, "a video without frames")
    return frames


def _video_frames(data: bytes, max_pixels: int, max_frames: int, side: Side) -> Iterator[RGB]:
    """The RGB frames of an MP4, one at a time (a caller holding none keeps memory at a frame)."""
    import av  # FFmpeg loads only where a video is compared (an image-only node never needs it)

    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # frame order and pixels must not depend on threading
            ctx = stream.codec_context
            if ctx is None:  # a damaged container can name a stream FFmpeg has no decoder state for
                raise OutputUndecodable(side, "not a decodable video (its stream has no codec)")
            if ctx.width * ctx.height > max_pixels:
                raise OutputUndecodable(side, f"{ctx.width}x{ctx.height} video, limit {max_pixels} pixels")
            for frame in container.decode(stream):
                if frame.width * frame.height > max_pixels:
                    raise OutputUndecodable(side, f"a {frame.width}x{frame.height} frame, limit {max_pixels} pixels")
                if count >= max_frames:
                    raise OutputUndecodable(side, f"more than {max_frames} frames")
                count += 1
                yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    except (av.FFmpegError, IndexError, ValueError) as exc:
        raise OutputUndecodable(side, f"not a decodable video ({exc})") from exc


def _compare_videos(pipeline: Pipeline, a: bytes, b: bytes, thresholds: Thresholds) -> Comparison:
    """Both clips decoded side by side, one frame of each at a time; only per-frame metrics are kept.

    Decoded whole, a hostile clip of the right frame size and a thousand frames (400 kB of H.264)
    held ~1.6 GB per side before the frame counts were compared (review); a legitimate long
    interpolation would not fit either. A clip that ends first still lets the other be read to its
    end (decoded, not kept), so an undecodable side is named as such, as before.
    """
    bounds = {"max_pixels": thresholds.max_pixels, "max_frames": thresholds.max_frames}
    counts = {"a": 0, "b": 0}
    per_frame: list[FrameMetrics] = []
    mismatch = ""
    pairs = itertools.zip_longest(_video_frames(a, side="a", **bounds), _video_frames(b, side="b", **bounds))
    for fa, fb in pairs:
        counts["a"] += fa is not None
        counts["b"] += fb is not None
        if fa is None or fb is None:
            mismatch = "frame_count_mismatch"
        elif fa.shape != fb.shape:
            mismatch = mismatch or "size_mismatch"
        elif not mismatch:
            per_frame.append(frame_metrics(fa, fb))
    for side in ("a", "b"):
        if not counts[side]:
            raise OutputUndecodable(side, "a video without frames")
    if mismatch:
        return Comparison(Verdict.DISAGREE, mismatch)
    median, worst = _summarise(per_frame)
    verdict, reason = _decide(thresholds.for_pipeline(pipeline), median, worst)
    return Comparison(verdict, reason, len(per_frame), median, worst)


# ---------------------------------------------------------------- verdicts


def compare_outputs(
    pipeline: Pipeline | str,
    a: bytes,
    b: bytes,
    media_type: str,
    thresholds: Thresholds | None = None,
    *,
    claimed_pixels: tuple[str | None, str | None] = (None, None),
) -> Comparison:
    """Compare two encoded outputs of one job spec. Raises OutputUndecodable naming the bad side.

    ``claimed_pixels``: each side's receipt's ``pixel_sha256``, when there is one. For an image
    (PNG decodes bit-exactly everywhere) a claim that is not the sha256 of the decoded pixels is
    a signed false statement about the output: that side disagrees, whatever the pixels look like.
    Video claims are not checked here: YUV to RGB conversion may differ between FFmpeg builds.
    """
    thresholds = thresholds or Thresholds()
    pipeline = Pipeline(pipeline)
    if media_type not in OUTPUT_MEDIA_TYPES[pipeline]:
        raise ValueError(f"{pipeline} outputs {sorted(OUTPUT_MEDIA_TYPES[pipeline])}, not {media_type}")
    if media_type.startswith("video/"):
        return _compare_videos(pipeline, a, b, thresholds)
    bounds = {"max_pixels": thresholds.max_pixels, "max_frames": thresholds.max_frames}
    frames_a = decode_frames(a, media_type, side="a", **bounds)
    frames_b = decode_frames(b, media_type, side="b", **bounds)
    if media_type.startswith("image/"):
        for side, claim, frames in (("a", claimed_pixels[0], frames_a), ("b", claimed_pixels[1], frames_b)):
            if claim is not None and hashlib.sha256(frames[0].tobytes()).hexdigest() != claim:
                return Comparison(Verdict.DISAGREE, f"false_pixel_hash_{side}")
    return compare_frames(pipeline, frames_a, frames_b, thresholds)


def compare_frames(
    pipeline: Pipeline | str, frames_a: Sequence[RGB], frames_b: Sequence[RGB], thresholds: Thresholds | None = None
) -> Comparison:
    """The verdict on decoded frames (one for an image). Calibration calls this to skip re-decoding."""
    thresholds = thresholds or Thresholds()
    bounds = thresholds.for_pipeline(pipeline)
    if len(frames_a) != len(frames_b):
        return Comparison(Verdict.DISAGREE, "frame_count_mismatch")
    if any(fa.shape != fb.shape for fa, fb in zip(frames_a, frames_b, strict=True)):
        return Comparison(Verdict.DISAGREE, "size_mismatch")
    per_frame = [frame_metrics(fa, fb) for fa, fb in zip(frames_a, frames_b, strict=True)]
    median, worst = _summarise(per_frame)
    verdict, reason = _decide(bounds, median, worst)
    return Comparison(verdict, reason, len(per_frame), median, worst)


def _summarise(per_frame: Sequence[FrameMetrics]) -> tuple[FrameMetrics, FrameMetrics]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    ssims = [m.ssim for m in per_frame]
    psnrs = [m.psnr for m in per_frame]
    phashes = [float(m.phash) for m in per_frame]
    dhashes = [float(m.dhash) for m in per_frame]
    median = FrameMetrics(
        ssim=med(ssims),
        psnr=med(psnrs),
        phash=round(med(phashes)),
        dhash=round(med(dhashes)),
        max_abs=round(med([float(m.max_abs) for m in per_frame])),
    )
    worst = FrameMetrics(
        ssim=min(ssims),
        psnr=min(psnrs),
        phash=max(m.phash for m in per_frame),
        dhash=max(m.dhash for m in per_frame),
        max_abs=max(m.max_abs for m in per_frame),
    )
    return median, worst


def _decide(bounds: PipelineThresholds, median: FrameMetrics, worst: FrameMetrics) -> tuple[Verdict, str]:
    if isinstance(bounds, NearExactThresholds):
        # Single-pass: every frame must be near-exact, so the worst frame decides both ways.
        if worst.psnr < bounds.psnr_disagree:
            return Verdict.DISAGREE, "psnr"
        if worst.psnr >= bounds.psnr_agree:
            return Verdict.AGREE, "within_tolerance"
        return Verdict.INCONCLUSIVE, "uncertain"
    if worst.ssim < bounds.ssim_disagree:
        return Verdict.DISAGREE, "ssim"
    if worst.phash > bounds.phash_disagree:
        return Verdict.DISAGREE, "phash"
    if median.ssim >= bounds.ssim_agree and median.phash <= bounds.phash_agree:
        return Verdict.AGREE, "within_tolerance"
    return Verdict.INCONCLUSIVE, "uncertain"


def compare_receipts(a: Receipt, b: Receipt) -> Comparison | None:
    """Settle a comparison from two verified receipts of one job spec, or None when pixels must decide.

    Identical output files agree at once: the requester checked every received byte against
    the receipt's ``sha256``, so equal file hashes are equal files. Nothing else a receipt
    claims can make two runs agree, because nothing checked it (two identities of one cheat
    could sign the same made-up ``pixel_sha256`` over different images): the pixels decide.
    A different output count or media type, or other weights under the same model id,
    disagree at once: those are each worker's own signed words against it. Different model
    ids (the spec let each worker route) cannot be settled here. Caller bug (ValueError):
    receipts of two different specs.
    """
    if a.spec != b.spec:
        raise ValueError("compare_receipts needs two receipts of the same job spec")
    if len(a.outputs) != len(b.outputs):
        return Comparison(Verdict.DISAGREE, "output_count_mismatch")
    if any(x.media_type != y.media_type for x, y in zip(a.outputs, b.outputs, strict=True)):
        return Comparison(Verdict.DISAGREE, "media_type_mismatch")
    if all(x.sha256 == y.sha256 for x, y in zip(a.outputs, b.outputs, strict=True)):
        return Comparison(Verdict.AGREE, "files_equal")
    if a.model_id == b.model_id and a.weights_sha256 != b.weights_sha256:
        return Comparison(Verdict.DISAGREE, "weights_differ")
    if any(len(x.phash) != len(y.phash) for x, y in zip(a.outputs, b.outputs, strict=True)):
        return Comparison(Verdict.DISAGREE, "frame_count_mismatch")
    return None
