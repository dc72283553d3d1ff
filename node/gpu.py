"""Detect the compute devices this node can offer.

CUDA devices through torch (name, VRAM total and free per device). A machine
without a GPU advertises one CPU device with zero VRAM: honest, and the tiny
presets still run there.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from lpnode.protocol.advert import GpuInfo

log = logging.getLogger(__name__)


def detect_devices() -> tuple[GpuInfo, ...]:
    """All CUDA devices with their current free VRAM, or the CPU if there are none."""
    cuda = _cuda_devices()
    return cuda if cuda else (GpuInfo(name=_cpu_name(), kind="cpu", vram_total_bytes=0, vram_free_bytes=0),)


def _cuda_devices() -> tuple[GpuInfo, ...]:
    try:
        import torch
    except ImportError:  # torch is a dependency, but a broken install should not stop a requester node
        log.warning("torch is not importable; advertising the CPU only")
        return ()
    if not torch.cuda.is_available():
        return ()
    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(
            GpuInfo(
                name=torch.cuda.get_device_name(index)[:128],
                kind="cuda",
                vram_total_bytes=int(total),
                vram_free_bytes=int(free),
            )
        )
    return tuple(devices)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"[:128]
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine() or 'unknown'}"[:128]
