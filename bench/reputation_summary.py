#!/usr/bin/env python3
"""``GET /v1/reputation`` at 500 to 4,000 peers: this tree's paged summary against the old one, in one run.

The old endpoint answered every peer in one page and, per peer, sorted every peer's state (``families``)
and sent one count query to SQLite: O(P² log P) CPU on the event loop plus P queries. This tree answers a
page of at most 500 peers with one grouped count query, each peer's families from an index by peer.

Per size P, on a fresh SQLite file (the node's aiosqlite backend) in the temp dir:

* P peers with a state in one model family, written through ``ReputationStore.note_jobs``;
* 4·P evidence rows with 3 receipts each from peers drawn at random (seeded), inserted by SQL: the
  summary only counts them;
* the store reopened, so the mirror is what a node loads at start.

Timed through FastAPI and ``httpx.ASGITransport`` (no sockets), wall clock, median of ``--runs``:

* **old, one answer**: the old handler and the old ``peers``/``families``, reproduced here;
* **new, every page**: this tree's router, paged through as ``lpnode reputation`` does (pages of 500);
* **new, one page**: the first page of 500 (what a client that wants one page pays).

Both answers are checked to list the same peers with the same fields before anything is printed.

    python bench/reputation_summary.py                  # 500, 2000, 4000 peers, 3 runs each
    python bench/reputation_summary.py --peers 500 --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from fastapi import APIRouter, FastAPI
from lpnode.node.cli_reputation import _summary
from lpnode.node.job_records import JOB_MIGRATIONS
from lpnode.node.rpc_reputation import reputation_router
from lpnode.node.store import SyncTransaction, open_store
from lpnode.reputation.scoring import ScoringConfig
from lpnode.reputation.store import MAX_PEER_PAGE, REPUTATION_MIGRATIONS, PeerState, ReputationStore, open_reputation

NOW = 1_800_000_000.0
FAMILY = "lpnode/tiny-sdxl"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class OldStore(ReputationStore):
    """The store with ``peers`` and ``families`` as they were: a pass over, and a sort of, every peer's state."""

    def peers(self) -> list[str]:
        return sorted({peer for peer, _ in self._peers} | set(self._bans))

    def families(self, peer_id: str) -> dict[str, PeerState]:
        return {family: state for (peer, family), state in sorted(self._peers.items()) if peer == peer_id}


def old_router(reputation: ReputationStore) -> APIRouter:
    """The old summary handler (without its long-poll, which neither side uses here)."""
    router = APIRouter(prefix="/old/v1/reputation")

    @router.get("")
    async def summary() -> dict[str, Any]:
        peers = []
        for peer_id in reputation.peers():
            described = reputation.describe(peer_id)
            described["evidence_count"] = await reputation.evidence_count(peer_id)
            peers.append(described)
        return {"peers": peers, "counters": reputation.counters(), "check_overhead": reputation.overhead()}

    return router


class _Client:
    """What ``lpnode reputation``'s paging asks of :class:`~lpnode.node.client.LpnodeClient`, over ASGI."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def _get(self, path: str, *, params: dict[str, str | float] | None = None) -> dict[str, Any]:
        answer = await self.http.get(path, params=params)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body


def _peer_id(rng: random.Random) -> str:
    return "12D3KooW" + "".join(rng.choice(BASE58) for _ in range(44))


async def _timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    samples, answer = [], None
    for _ in range(runs):
        start = time.perf_counter()
        answer = await call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), answer


async def bench(size: int, runs: int, base: Path) -> dict[str, float]:
    rng = random.Random(size)
    peers = sorted({_peer_id(rng) for _ in range(size)})
    async with open_store(base / f"rep{size}.db", [*JOB_MIGRATIONS, *REPUTATION_MIGRATIONS]) as db:
        first = await open_reputation(db, clock=lambda: NOW)
        await first.note_jobs([(peer, FAMILY, 1.0) for peer in peers])

        def fill(tx: SyncTransaction) -> None:
            for evidence_id in range(1, 4 * size + 1):
                tx.execute(
                    "INSERT INTO rep_evidence (id, at, kind, spec_id, pipeline, model_family, verdict, blamed,"
                    " credited, detail) VALUES (?, 0, 'check', 'x', 'text-to-image', ?, 'agree', '[]', '[]', '[]')",
                    (evidence_id, FAMILY),
                )
                for n, peer in enumerate(rng.sample(peers, 3)):
                    tx.execute(
                        "INSERT INTO rep_receipts (evidence_id, n, worker_peer_id, job_id, receipt)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (evidence_id, n, peer, f"{evidence_id:064x}", b"\0" * 300),
                    )

        await db.atomic(fill)
        new = await open_reputation(db, clock=lambda: NOW)
        old = OldStore(db, ScoringConfig(), lambda: NOW)
        await old._load()
        app = FastAPI()
        app.include_router(reputation_router(new, lambda: None))
        app.include_router(old_router(old))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=600) as http:
            client = _Client(http)
            old_s, old_answer = await _timed(lambda: client._get("/old/v1/reputation"), runs)
            all_s, new_answer = await _timed(lambda: _summary(client), runs)
            page_s, page = await _timed(lambda: client._get("/v1/reputation", params={"limit": MAX_PEER_PAGE}), runs)
    assert len(old_answer["peers"]) == size and new_answer["peers"] == old_answer["peers"], "answers differ"
    assert page["peers"] == old_answer["peers"][:MAX_PEER_PAGE]
    return {"old": old_s, "all": all_s, "page": page_s}


async def _main(args: argparse.Namespace) -> None:
    print(
        f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.2f}; median of {args.runs} runs",
        file=sys.stderr,
    )
    print("| peers | old, one answer (ms) | new, every page (ms) | old / new | new, one page of 500 (ms) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.peers:
            t = await bench(size, args.runs, Path(tmp))
            ratio = t["old"] / t["all"]
            print(
                f"| {size:,} | {t['old'] * 1e3:.1f} | {t['all'] * 1e3:.1f} | {ratio:.1f}× | {t['page'] * 1e3:.1f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[500, 2000, 4000], help="sizes (default 500 2000 4000)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per figure (default 3)")
    args = parser.parse_args()
    if args.runs < 1 or min(args.peers) < 1:
        parser.error("--runs and --peers must be positive")
    trio.run(_main, args)


if __name__ == "__main__":
    main()
