"""Memory accounting for the warm pool: how much it may hold, what a model costs, whom to evict.

Pure logic plus one device query, so the eviction order is tested without an event loop.

A model's *cost* is what the pool charges against its budget while the model is
warm: before the first load, ``spec.vram_bytes`` (an fp16 peak estimate, scaled
by the element size of the pool's dtype: fp32 on the CPU doubles it); after a
load, the measured bytes the load added on the device (weights, plus CUDA graph
pools of a compiled model) and the activation peak seen in real runs, or the
estimate's non-weight share until a run has been seen. Costs are charged in
full for every warm model: with one run at a time per device that overstates
activations (they never overlap), which is the safe side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import ModelSpec

log = logging.getLogger(__name__)

FP16_BYTES = 2  # spec.vram_bytes is estimated at fp16


def estimate_cost(spec: ModelSpec, dtype: torch.dtype) -> int:
    """Bytes to reserve for ``spec`` before it has ever been loaded."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return spec.vram_bytes * itemsize // FP16_BYTES


def measured_cost(estimate: int, loaded_bytes: int, activation_bytes: int | None) -> int:
    """Cost once loaded: measured resident bytes plus activations (measured, else the estimate's share)."""
    if activation_bytes is None:
        activation_bytes = max(0, estimate - loaded_bytes)
    return loaded_bytes + activation_bytes


def detect_budget(device: torch.device, fraction: float) -> int:
    """Bytes the pool may use on ``device``: ``fraction`` of what is free now.

    Read once, when the pool opens: later readings would count the pool's own models.
    On the CPU the budget is RAM (MemAvailable), since the tiny presets live there.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return int(_available_ram() * fraction)


def _available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        log.warning("cannot read available RAM; assuming 4 GiB for the model pool")
        return 4 * 2**30


def usable_cpus() -> int:
    """CPUs this process may run on: how many output stages the pool encodes at once by default."""
    # The affinity mask, not os.cpu_count(): containers often see the host's CPUs but may use fewer.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Resident:
    """A model that holds (or is about to hold) memory, as eviction sees it."""

    name: str
    cost: int  # bytes charged against the budget
    last_used: int  # pool-wide use counter at its last job; lower = longer idle
    evictable: bool  # unpinned, no queued or running job, not loading


def choose_evictions(need: int, budget: int, residents: Sequence[Resident]) -> list[str] | None:
    """Names to unload, least recently used first, so that ``need`` more bytes fit.

    ``[]`` when it fits already; ``None`` when even evicting every evictable model
    would not make room (the caller answers PoolBusy).
    """
    free = budget - sum(r.cost for r in residents)
    if need <= free:
        return []
    victims: list[str] = []
    for resident in sorted((r for r in residents if r.evictable), key=lambda r: r.last_used):
        victims.append(resident.name)
        free += resident.cost
        if need <= free:
            return victims
    return None
