"""``GET /v1/reputation`` on a real SQLite file: one query per page, the per-peer answer, pages, the CLI's paging.

The summary used to ask SQLite once per peer and sort every peer's state once per peer (O(P² log P)); now a page
costs one grouped query and each peer's families come from an index kept with the states. Its answer must stay
what the per-peer calls (``describe`` + ``evidence_count``) give, also on a store read back from the file.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from lpnode.node.cli_reputation import SUMMARY_PAGE, _summary
from lpnode.node.rpc_reputation import DEFAULT_PEER_PAGE, reputation_router
from lpnode.node.store import Store
from lpnode.protocol import NodeKey
from lpnode.protocol.receipts import verify_receipt
from lpnode.reputation.compare import Verdict
from lpnode.reputation.store import MAX_PEER_PAGE, CheckEvidence, ReputationStore, model_family

from ..reputation.receipt_factory import KEYS, signed
from ..reputation.stores import Clock, opened

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
FAMILIES = ("lpnode/tiny-sdxl", "lpnode/tiny-svd")


def peer_id(rng: random.Random) -> str:
    return "12D3KooW" + "".join(rng.choice(BASE58) for _ in range(44))


def check(n: int, keys: Sequence[NodeKey], blamed: NodeKey | None) -> CheckEvidence:
    receipts = [signed(k, b"odd%d" % n if k is blamed else b"same%d" % n) for k in keys]
    spec = verify_receipt(receipts[0]).spec
    return CheckEvidence(
        spec=spec,
        model_family=model_family(spec.model_id),
        verdict=Verdict.AGREE if blamed is None else Verdict.DISAGREE,
        receipts=receipts,
        blamed=() if blamed is None else (blamed.peer_id,),
        credited=tuple(k.peer_id for k in keys if k is not blamed),
        detail=[{"peers": [keys[0].peer_id, keys[1].peer_id], "verdict": "agree", "reason": "ssim"}],
    )


async def populate(rep: ReputationStore, clock: Clock, peers: int) -> None:
    """``peers`` peers with jobs in one or two families, and the receipt keys' checks: agreements, blames, a ban
    (two blames), a colluder's ban that voids an honest peer's blames and lifts its ban, an equivocation ban."""
    rng = random.Random(7)
    ids = [peer_id(rng) for _ in range(peers)]
    jobs = [(peer, family, 1.0) for peer in ids for family in FAMILIES[: rng.randint(1, 2)]]
    await rep.note_jobs(jobs)
    honest, x1, x2, a, b, other = KEYS
    for n in range(2):  # two colluders outvote an honest peer twice: it is banned
        await rep.record_check(check(n, [honest, x1, x2], blamed=honest))
        clock.now += 60
    for n in range(2, 4):  # honest a and b catch x1 twice: x1 banned, the blames it decided voided
        await rep.record_check(check(n, [x1, a, b], blamed=x1))
        clock.now += 60
    await rep.record_check(check(4, [a, b, other], blamed=None))
    nonce = b"\x05" * 16
    await rep.record_equivocation(signed(x2, b"one", nonce=nonce), signed(x2, b"two", nonce=nonce))
    clock.now += 60


async def per_peer(rep: ReputationStore) -> list[dict[str, Any]]:
    """The summary's peers as the endpoint computed them before: one describe and one count query per peer."""
    return [rep.describe(peer) | {"evidence_count": await rep.evidence_count(peer)} for peer in rep.peers()]


class CountingStore:
    """The store, counting the statements the reputation store sends it (the summary only reads)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queries = 0

    async def fetch_all(self, sql: str, params: Iterable[Any] = (), **kwargs: Any) -> list[sqlite3.Row]:
        self.queries += 1
        return await self.store.fetch_all(sql, tuple(params), **kwargs)

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        self.queries += 1
        return await self.store.fetch_one(sql, tuple(params))


@asynccontextmanager
async def client_for(rep: ReputationStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(reputation_router(rep, lambda: None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        yield client


async def summary(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    answer = await client.get("/v1/reputation", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_the_summary_is_the_per_peer_answer_from_one_query(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "lpnode.db"
    async with opened(path, clock) as rep:
        await populate(rep, clock, peers=60)
        expected = await per_peer(rep)
        assert len(expected) == 66 and sum(p["evidence_count"] > 0 for p in expected) == 6
        assert sum(p["banned"] for p in expected) == 2 and any(p["ban"] and p["ban"]["lifted"] for p in expected)
        counting = CountingStore(rep.db)
        rep.db = counting  # type: ignore[assignment]
        async with client_for(rep) as client:
            answer = await summary(client, limit=MAX_PEER_PAGE)
        assert counting.queries == 1  # was one per peer: 66
        assert answer["peers"] == expected and answer["next_after"] is None
        assert answer["counters"] == rep.counters() and answer["check_overhead"] == rep.overhead()
    # read back from the file: the index by peer built by loading gives the same answer as the one kept by writes
    async with opened(path, clock) as reloaded, client_for(reloaded) as client:
        assert await per_peer(reloaded) == expected
        assert (await summary(client, limit=MAX_PEER_PAGE))["peers"] == expected


async def test_pages_in_peer_id_order_add_up_to_the_whole(tmp_path: Path) -> None:
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        await populate(rep, clock, peers=DEFAULT_PEER_PAGE + 20)
        expected = await per_peer(rep)
        async with client_for(rep) as client:
            first = await summary(client)  # the default page is bounded
            assert first["peers"] == expected[:DEFAULT_PEER_PAGE]
            assert first["next_after"] == expected[DEFAULT_PEER_PAGE - 1]["peer_id"]
            pages, after = [], None
            while True:
                page = await summary(client, limit=7, **({} if after is None else {"after": after}))
                pages.append(page["peers"])
                after = page["next_after"]
                if after is None:
                    break
            assert [p for page in pages for p in page] == expected
            assert all(len(page) == 7 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 7  # no empty last page
            # a page of exactly the rest is the last: no empty page after it
            rest = await summary(client, after=expected[-8]["peer_id"], limit=7)
            assert rest["peers"] == expected[-7:] and rest["next_after"] is None
            # ``after`` need not be a peer the store holds: the page starts after where it would sort
            between = expected[3]["peer_id"] + "1"
            assert (await summary(client, after=between, limit=2))["peers"] == expected[4:6]
            for bad in ({"limit": MAX_PEER_PAGE + 1}, {"limit": 0}, {"after": "0OIl"}):
                assert (await client.get("/v1/reputation", params=bad)).status_code == 422


class RpcClient:
    """The part of :class:`~lpnode.node.client.LpnodeClient` the CLI uses, over the ASGI app; counts its calls."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.calls: list[dict[str, str | float]] = []

    async def _get(self, path: str, *, params: dict[str, str | float] | None = None) -> dict[str, Any]:
        self.calls.append(dict(params or {}))
        answer = await self.http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


async def test_the_cli_table_pages_through_every_peer(tmp_path: Path) -> None:
    assert SUMMARY_PAGE == MAX_PEER_PAGE
    clock = Clock()
    async with opened(tmp_path / "lpnode.db", clock) as rep:
        await populate(rep, clock, peers=2 * MAX_PEER_PAGE + 1)
        expected = await per_peer(rep)
        async with client_for(rep) as http:
            client = RpcClient(http)
            answer = await _summary(client)
    assert answer["peers"] == expected and answer["counters"] == rep.counters()
    assert len(client.calls) == 3 and all(call["limit"] == MAX_PEER_PAGE for call in client.calls)


async def test_the_cli_takes_one_unpaged_answer_from_an_older_node() -> None:
    class OldNode:
        def __init__(self) -> None:
            self.calls = 0

        async def _get(self, path: str, *, params: dict[str, str | float] | None = None) -> dict[str, Any]:
            self.calls += 1
            return {"peers": [{"peer_id": "A"}], "counters": {"checks": 1.0}, "check_overhead": 0.5}

    old = OldNode()
    answer = await _summary(old)
    assert old.calls == 1 and answer["peers"] == [{"peer_id": "A"}] and answer["counters"] == {"checks": 1.0}
