"""CapabilityAdvert: what a node offers, signed, versioned and expiring.

Published on the gossip topic every few seconds and on every change. A
receiver admits an advert only through :func:`verify_advert`, which checks,
in order: size, framing, signature, that the signer is the gossip origin,
that the advert names its signer, that it is not from the future (clock skew)
and not expired. Sequence monotonicity needs memory of earlier adverts and
is the peer directory's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from .codec import Bound, message
from .envelope import open_envelope, seal
from .errors import AdvertRejected, InvalidSignature, ProtocolError
from .signing import NodeKey

ADVERT_MAX_BYTES = 64 * 1024
MAX_ADVERT_LIFETIME_MS = 10 * 60 * 1000  # an advert may not claim to live longer than this
DEFAULT_MAX_CLOCK_SKEW_MS = 30 * 1000


@dataclass(frozen=True)
class GpuInfo:
    """One compute device. A machine without a GPU advertises its CPU honestly."""

    name: Annotated[str, Bound(max_len=128)]  # e.g. "NVIDIA GeForce RTX 4090", "cpu: AMD EPYC 7B13"
    kind: Annotated[str, Bound(max_len=16)]  # "cuda" | "mps" | "cpu"
    vram_total_bytes: int  # 0 for a CPU device
    vram_free_bytes: int  # at advert time; 0 for a CPU device

    def __post_init__(self) -> None:
        if self.vram_total_bytes < 0 or self.vram_free_bytes < 0:
            raise ValueError("VRAM figures cannot be negative")
        if self.vram_free_bytes > self.vram_total_bytes:
            raise ValueError("free VRAM exceeds total VRAM")


@dataclass(frozen=True)
class ModelLimits:
    """The largest job one model takes, so a requester can refuse what no offer fits before asking.

    Mirrors the worker's preset limits; a worker still checks every job itself.
    """

    max_pixels: int  # width × height of one output image or frame
    max_side: int  # pixels, either side of the output
    max_steps: int  # num_inference_steps
    max_frames: int  # output frames (1 for image pipelines)
    max_batch: int  # requests the model runs together in one batch
    # Output pixels of one job over all its frames (a video's frames × each frame's pixels). Added after
    # version 1 shipped: 0 (or absent, from an older node) = not advertised, max_pixels × max_frames.
    max_total_pixels: int = 0

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_side", "max_steps", "max_frames", "max_batch"):
            if not 1 <= getattr(self, name) <= 1 << 40:
                raise ValueError(f"ModelLimits.{name} must be within 1..2**40")
        if not 0 <= self.max_total_pixels <= 1 << 50:
            raise ValueError("ModelLimits.max_total_pixels must be within 0..2**50")

    @property
    def total_pixels(self) -> int:
        """Output pixels one job may make over all its frames."""
        return self.max_total_pixels or self.max_pixels * self.max_frames


@dataclass(frozen=True)
class ModelOffer:
    """One model a node serves, for one pipeline."""

    pipeline: Annotated[str, Bound(max_len=32)]  # "text-to-image", "image-to-video", ...
    model_id: Annotated[str, Bound(max_len=128)]  # e.g. "sdxl-turbo", "tiny-sdxl"
    weights_sha256: Annotated[str, Bound(max_len=64)]  # hex sha256 of the weight files ("" if unknown yet)
    warm: bool  # loaded on the device now
    speed_mpx_steps_per_s: float  # measured megapixel-steps per second; 0.0 = not measured yet
    price_per_mpx_step: int  # price in micro-credits per megapixel-step
    # Added after protocol 1 shipped: None (or absent on the wire, from an older node) = not
    # advertised, and such a worker is asked as before.
    limits: ModelLimits | None = None

    def __post_init__(self) -> None:
        if self.speed_mpx_steps_per_s < 0 or self.price_per_mpx_step < 0:
            raise ValueError("speed and price cannot be negative")


@message("advert", max_bytes=ADVERT_MAX_BYTES)
@dataclass(frozen=True)
class CapabilityAdvert:
    peer_id: Annotated[str, Bound(max_len=64)]  # libp2p peer id of the advertiser (must equal the signer)
    seq: int  # strictly increasing per peer; a higher seq replaces a lower one
    issued_at_ms: int  # unix time in milliseconds, advertiser's clock
    expires_at_ms: int  # unix time in milliseconds after which the advert is void
    listen_addrs: Annotated[tuple[str, ...], Bound(max_items=16)]  # multiaddrs ending in /p2p/<peer_id>
    software_version: Annotated[str, Bound(max_len=32)]  # lpnode version, e.g. "0.1.0"
    protocol_version: int  # wire protocol version spoken
    gpus: Annotated[tuple[GpuInfo, ...], Bound(max_items=16)]
    models: Annotated[tuple[ModelOffer, ...], Bound(max_items=64)]
    queue_depth: int  # jobs waiting or running now
    queue_capacity: int  # jobs the node will hold at once
    # Job-stream extensions this node's worker speaks beyond the base flow (protocol.jobs.JOB_FEATURES);
    # a requester uses one only with a peer that lists it. Absent in older adverts: none.
    job_features: Annotated[tuple[Annotated[str, Bound(max_len=32)], ...], Bound(max_items=16)] = ()

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError("seq cannot be negative")
        if self.expires_at_ms <= self.issued_at_ms:
            raise ValueError("advert expires before it is issued")
        if self.expires_at_ms - self.issued_at_ms > MAX_ADVERT_LIFETIME_MS:
            raise ValueError(f"advert lifetime exceeds {MAX_ADVERT_LIFETIME_MS} ms")
        if not 0 <= self.queue_depth <= 1_000_000 or not 0 <= self.queue_capacity <= 1_000_000:
            raise ValueError("queue figures out of range")
        for addr in self.listen_addrs:
            if len(addr) > 256:
                raise ValueError("listen address longer than 256 characters")


def sign_advert(key: NodeKey, advert: CapabilityAdvert) -> bytes:
    """The gossip payload for ``advert``: a signed envelope frame."""
    if advert.peer_id != key.peer_id:
        raise ValueError("an advert can only be signed by the peer it describes")
    return seal(key, advert)


def verify_advert(
    data: bytes,
    *,
    origin: str,
    now_ms: int,
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
) -> CapabilityAdvert:
    """Admit a gossiped advert or raise :class:`AdvertRejected` with a counter-friendly reason.

    ``origin`` is the authenticated gossip origin (the transport's signed ``from``).
    """
    if len(data) > ADVERT_MAX_BYTES + 512:
        raise AdvertRejected("oversized", f"{len(data)} bytes")
    try:
        signer, advert = open_envelope(data, CapabilityAdvert)
    except InvalidSignature as exc:
        raise AdvertRejected("bad_signature", str(exc)) from None
    except ProtocolError as exc:
        raise AdvertRejected("malformed", str(exc)) from None
    if signer != advert.peer_id:
        raise AdvertRejected("forged_origin", "advert names a peer other than its signer")
    if signer != origin:
        raise AdvertRejected("forged_origin", f"signed by {signer} but published by {origin}")
    if advert.issued_at_ms > now_ms + max_clock_skew_ms:
        raise AdvertRejected("clock_skew", f"issued {advert.issued_at_ms - now_ms} ms in the future")
    if advert.expires_at_ms <= now_ms:
        raise AdvertRejected("expired", f"expired {now_ms - advert.expires_at_ms} ms ago")
    return advert
