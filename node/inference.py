"""What the node needs from a model pool, as a type: the seam between node logic and inference.

The worker, the advert mirror and the receipt's runtime facts use only these
members of :class:`~lpnode.models.pool.ModelPool`. Typing them against this
protocol lets anything with the same interface serve jobs — simnet's simulated
GPUs among them — while the node code stays unaware of which one it got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from lpnode.models.base import Output, Request, StepProgress
from lpnode.models.pool import ModelStatus


class InferencePool(Protocol):
    """Runs requests on served models and reports their state (see ``ModelPool`` for the semantics)."""

    async def run(
        self, model: str, request: Request, *, progress: Callable[[StepProgress], None] | None = None
    ) -> Output:
        """Run ``request`` on preset ``model``; raises the ``ModelError`` tree on failure."""
        ...

    def status(self) -> tuple[ModelStatus, ...]:
        """One row per served model, for quotes and adverts."""
        ...

    @property
    def queue_depth(self) -> int:
        """Jobs waiting or running over every model."""
        ...

    @property
    def state_version(self) -> int:
        """Bumped on every change a re-advert should show."""
        ...

    async def wait_changed(self, seen: int) -> int:
        """Wait until ``state_version`` differs from ``seen``; returns the new one."""
        ...


__all__ = ["InferencePool"]
