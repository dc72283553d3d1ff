"""What this node offers right now: devices, models, queue. Read by every advert."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from lpnode.node.gossip import Offer
from lpnode.node.gpu import detect_devices
from lpnode.protocol.advert import GpuInfo, ModelOffer

DEVICE_REFRESH_S = 10.0  # free VRAM changes slowly; don't query the driver on every advert


@dataclass
class OfferSource:
    """Callable that snapshots the node's current offer for the advert publisher.

    ``models`` is replaced by the model pool as models load and unload;
    ``queue_depth`` by the job queue. Devices are re-detected at most every
    ``DEVICE_REFRESH_S`` seconds.
    """

    queue_capacity: int
    models: tuple[ModelOffer, ...] = ()
    queue_depth: int = 0
    detect: Callable[[], tuple[GpuInfo, ...]] = detect_devices
    _devices: tuple[GpuInfo, ...] = field(default=(), init=False)
    _detected_at: float = field(default=-float("inf"), init=False)

    def __call__(self) -> Offer:
        now = trio.current_time()
        if now - self._detected_at >= DEVICE_REFRESH_S:
            self._devices = self.detect()
            self._detected_at = now
        return Offer(
            gpus=self._devices,
            models=self.models,
            queue_depth=self.queue_depth,
            queue_capacity=self.queue_capacity,
        )
