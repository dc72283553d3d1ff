"""What this node offers right now: devices, models, queue. Read by every advert.

The advert publisher reads :class:`OfferSource` synchronously, so nothing slow
may happen there: device detection (which imports torch and asks the driver,
seconds on a cold start) runs in a worker thread in :func:`serve_device_monitor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio
from lpnode.node.gossip import Offer
from lpnode.node.gpu import detect_devices
from lpnode.protocol.advert import GpuInfo, ModelOffer

DEVICE_REFRESH_S = 10.0  # free VRAM changes slowly; don't query the driver on every advert


@dataclass
class OfferSource:
    """Callable that snapshots the node's current offer for the advert publisher.

    ``models`` is replaced by the model pool as models load and unload,
    ``queue_depth`` by the job queue, ``devices`` by the device monitor.
    """

    queue_capacity: int
    models: tuple[ModelOffer, ...] = ()
    queue_depth: int = 0
    devices: tuple[GpuInfo, ...] = ()
    # Brings ``models`` and ``queue_depth`` up to date; run when a snapshot is taken, not at every change
    # of the pool (three per job, each on that job's path, and only an advert reads them).
    refresh: Callable[[], None] | None = None

    def __call__(self) -> Offer:
        if self.refresh is not None:
            self.refresh()
        return Offer(
            gpus=self.devices,
            models=self.models,
            queue_depth=self.queue_depth,
            queue_capacity=self.queue_capacity,
        )


async def serve_device_monitor(
    offer: OfferSource,
    *,
    detect: Callable[[], tuple[GpuInfo, ...]] = detect_devices,
    on_change: Callable[[], None] = lambda: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``offer.devices`` current; ready once the first detection is done.

    ``on_change`` is called when the device list changes (e.g. to re-advertise).
    """
    offer.devices = await trio.to_thread.run_sync(detect)
    task_status.started()
    while True:
        await trio.sleep(DEVICE_REFRESH_S)
        devices = await trio.to_thread.run_sync(detect)
        if devices != offer.devices:
            offer.devices = devices
            on_change()
