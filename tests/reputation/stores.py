"""A settable clock and a reputation store on a real SQLite file, shared by the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.store import open_store
from lpnode.reputation.scoring import ScoringConfig
from lpnode.reputation.store import REPUTATION_MIGRATIONS, ReputationStore, open_reputation


class Clock:
    """Unix seconds that a test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def opened(
    path: Path, clock: Callable[[], float], config: ScoringConfig | None = None
) -> AsyncIterator[ReputationStore]:
    async with open_store(path, [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as store:
        yield await open_reputation(store, config=config, clock=clock)
