"""A cheating model pool, for tests only: ``lpnode run --cheat MODE[:RATE]`` (hidden from ``--help``).

:class:`CheatingPool` wraps the node's real pool (any
:class:`~lpnode.node.inference.InferencePool`) and cheats on a share ``rate``
of its runs (seeded): ``other_seed`` and ``half_steps`` change the request the
pool runs, ``blank`` and ``copied`` replace the output (black pixels, or the
previous run's output). The worker above it signs whatever comes back, as a
dishonest worker would: receipts stay valid and only output comparison can
tell. ``other_model`` needs a second model loaded and is refused here (the
in-process :class:`~lpnode.reputation.cheats.Cheater` covers it).

Nothing in a normal node builds one; the flag is documented only in the
test that uses it (``tests/e2e/test_reputation_e2e.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import trio
from lpnode.models.base import Output, Request, StepProgress
from lpnode.models.outputs import ImageOutput, RawImage, RawVideo, finish_output
from lpnode.models.pool import ModelStatus
from lpnode.node.inference import InferencePool
from lpnode.protocol.errors import ConfigError

from .cheats import CheatMode, cheat_request

__all__ = ["CheatingPool", "parse_cheat"]


def parse_cheat(text: str) -> tuple[CheatMode, float]:
    """``MODE[:RATE]``: a :class:`CheatMode` and the share of jobs cheated on (default 1.0)."""
    mode_text, _, rate_text = text.partition(":")
    try:
        mode = CheatMode(mode_text.strip().lower())
        rate = float(rate_text) if rate_text else 1.0
    except ValueError:
        raise ConfigError(f"--cheat takes MODE[:RATE], MODE one of {[m.value for m in CheatMode]}") from None
    if mode is CheatMode.OTHER_MODEL:
        raise ConfigError("--cheat other_model is not supported by a running node (it needs a second model)")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"--cheat rate must be in [0, 1], got {rate}")
    return mode, rate


def _blank(output: Output) -> Output:
    if isinstance(output, ImageOutput):
        return finish_output(RawImage(np.zeros((output.height, output.width, 3), dtype=np.uint8)))
    black = np.zeros((output.height, output.width, 3), dtype=np.uint8)
    return finish_output(RawVideo(tuple(black for _ in range(output.num_frames)), output.fps))


class CheatingPool:
    """An :class:`InferencePool` that cheats with ``mode`` on a share ``rate`` of runs; see the module docstring."""

    def __init__(self, pool: InferencePool, mode: CheatMode, rate: float = 1.0, *, rng: random.Random) -> None:
        self.pool = pool
        self.mode = mode
        self.rate = rate
        self.rng = rng
        self.previous: Output | None = None
        self.runs = 0
        self.cheated = 0

    async def run(
        self, model: str, request: Request, *, progress: Callable[[StepProgress], None] | None = None
    ) -> Output:
        cheat = self.rng.random() < self.rate
        self.runs += 1
        self.cheated += cheat
        if cheat and self.mode in (CheatMode.OTHER_SEED, CheatMode.HALF_STEPS):
            request = cheat_request(request, self.mode, self.rng)
        output = await self.pool.run(model, request, progress=progress)
        if cheat and self.mode is CheatMode.COPIED and self.previous is not None:
            output = self.previous
        elif cheat and self.mode in (CheatMode.BLANK, CheatMode.COPIED):
            output = await trio.to_thread.run_sync(_blank, output)
        self.previous = output
        return output

    def status(self) -> tuple[ModelStatus, ...]:
        return self.pool.status()

    @property
    def queue_depth(self) -> int:
        return self.pool.queue_depth

    @property
    def state_version(self) -> int:
        return self.pool.state_version

    async def wait_changed(self, seen: int) -> int:
        return await self.pool.wait_changed(seen)
