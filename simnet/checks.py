"""Requesters' verification in a simulation: the production spot checker over a real reputation store.

Each requester gets what ``node/run.py`` gives a real node: a reputation store
(its own SQLite file, :data:`~lpnode.reputation.store.REPUTATION_MIGRATIONS`),
``requester_runner`` steered by it (banned peers are never chosen, scores rank
the rest), and :func:`~lpnode.reputation.spot_check.open_spot_checker` around
that runner. Three choices keep a run deterministic under the autojump
MockClock, where virtual time jumps whenever every task waits, a worker
thread's included:

* the store opens with ``backend="inline"`` (plain sqlite3 in the trio thread,
  same schema and API) instead of aiosqlite's threads;
* the checker compares outputs on the event loop (``compare_in_thread=False``;
  simnet's outputs are 64×64 stand-ins, a few ms to compare), and the requester checks
  a video output there too (``offload_checks=False``: a run of the cheaters scenario
  repeated only when no video job's check went to a thread);
* its sampling rng and the ranking's rng are derived from the seed.

:class:`BanWatch` follows a store's ``changed`` event and notes every new ban
with the virtual time and how many jobs this requester had given the peer.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from lpnode.node.daemon import Node
from lpnode.node.job_runner import requester_runner
from lpnode.node.store import open_store
from lpnode.reputation.scoring import score
from lpnode.reputation.spot_check import SpotChecker, open_spot_checker
from lpnode.reputation.store import REPUTATION_MIGRATIONS, ReputationStore, open_reputation

from .metrics import BanRecord


@dataclass
class RequesterChecks:
    """One requester's verification: the runner its jobs go through, and the store behind it."""

    requester: int  # workload requester number
    reputation: ReputationStore
    checker: SpotChecker


@asynccontextmanager
async def open_requester_checks(
    node: Node, db_dir: Path, *, seed: int, requester: int, wall_clock: Callable[[], float]
) -> AsyncIterator[RequesterChecks]:
    """The requester's store (``db_dir/requester-N.db``) and spot checker; leaving cancels checks still running."""
    async with open_store(db_dir / f"requester-{requester}.db", REPUTATION_MIGRATIONS, backend="inline") as db:
        reputation = await open_reputation(db, clock=wall_clock)
        # the stand-ins draw 64×64 pictures whatever size a job asks for (sim_pool): structure checked, not size
        runner = requester_runner(
            node,
            reputation=reputation,
            rng=random.Random(f"{seed}/choice/r{requester}"),
            check_output_size=False,
            offload_checks=False,  # no thread under the virtual clock: a seeded run repeats
        )
        async with open_spot_checker(
            node,
            runner,
            reputation,
            rng=random.Random(f"{seed}/spot/{requester}"),
            compare_in_thread=False,
        ) as checker:
            yield RequesterChecks(requester, reputation, checker)


def peer_score(reputation: ReputationStore, peer_id: str) -> float:
    """The peer's score as this requester ranks it: its worst model family (the prior when it has none)."""
    families = reputation.families(peer_id)
    if not families:
        return reputation.score(peer_id, "")
    now = reputation.clock()
    return min(score(state.evidence, now, reputation.config) for state in families.values())


class BanWatch:
    """Notes each ban a requester's store makes, as it commits (driven by the store's ``changed`` event)."""

    def __init__(
        self,
        checks: RequesterChecks,
        peer_index: dict[str, int],
        now_s: Callable[[], float],
        sink: Callable[[BanRecord], None],
    ) -> None:
        self.checks = checks
        self.peer_index = peer_index
        self.now_s = now_s
        self.sink = sink
        self._seen: dict[str, int] = {}  # peer -> bans already noted

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reputation = self.checks.reputation
        task_status.started()
        while True:
            changed = reputation.changed  # replaced after every commit: take it before looking
            self._scan()
            await changed.wait()

    def _scan(self) -> None:
        reputation = self.checks.reputation
        for peer in reputation.peers():
            ban = reputation.ban(peer)
            if ban is None or ban.bans <= self._seen.get(peer, 0):
                continue
            self._seen[peer] = ban.bans
            state = reputation.families(peer)
            self.sink(
                BanRecord(
                    worker=self.peer_index.get(peer, -1),
                    requester=self.checks.requester,
                    at_s=round(self.now_s(), 6),
                    requester_jobs=sum(s.history.jobs for s in state.values()),
                    checks=sum(s.checks for s in state.values()),
                    blames=sum(s.blames for s in state.values()),
                    reason=ban.reason,
                )
            )


__all__ = ["BanWatch", "RequesterChecks", "open_requester_checks", "peer_score"]
