"""``/v1/reputation``: what this node's reputation store says about its peers, and the evidence behind it.

* ``GET /v1/reputation?after=&limit=``: the peers with evidence or a ban
  (score per model family, checks, blames, ban state and expiry), in peer id
  order a page at a time (``next_after``: the ``after`` of the next page, null
  on the last), and the check counters (compute given to users' jobs and to
  checks: the overhead); a long-poll with ``checks_above=K&wait_s=N`` (checks
  settle in the background); ``lpnode reputation`` pages through it;
* ``GET /v1/reputation/evidence?after=&limit=&peer_id=``: evidence rows in id
  order with their signed receipts (base64), a page at a time (``next_after``);
  ``lpnode reputation export`` pages through it;
* ``GET /v1/reputation/failures?after=&limit=&peer_id=``: tries of this node's
  that failed by the worker's doing (``fault``: ``cheat``, ``violation`` or
  ``unproven``), in id order, a cheat's signed receipt (base64) with it;
* ``GET /v1/reputation/{peer_id}``: one peer, with its evidence count and most
  recent verdicts, its failed tries' count and the most recent of them; 404
  ``peer_not_found`` for a peer the store holds nothing about (no score, ban
  or evidence), as ``/v1/peers/{peer_id}`` answers a peer not in the directory.
"""

from __future__ import annotations

import base64
import bisect
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from lpnode.node.rpc_models import MAX_WAIT_S, ErrorBody
from lpnode.reputation.export import wire_row
from lpnode.reputation.store import MAX_EVIDENCE_PAGE, MAX_PEER_PAGE, ReputationStore

__all__ = ["DEFAULT_PEER_PAGE", "RECENT_VERDICTS", "reputation_router"]

RECENT_VERDICTS = 20  # verdicts shown per peer
DEFAULT_PEER_PAGE = 100  # peers per summary page without ?limit= (at most MAX_PEER_PAGE), as /evidence's rows
_PEER_ID_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{1,64}$"  # base58, as in rpc.py


def _recent(row: dict[str, Any], peer_id: str) -> dict[str, Any]:
    role = "blamed" if peer_id in row["blamed"] else "credited" if peer_id in row["credited"] else "undecided"
    recent = {"id": row["id"], "at": row["at"], "kind": row["kind"], "verdict": row["verdict"], "role": role}
    return {**recent, "voided": row["voided"] is not None}  # withdrawn: a peer that decided it was banned since


def _failure_row(row: dict[str, Any]) -> dict[str, Any]:
    receipt = row["receipt"]
    return {**row, "receipt": None if receipt is None else base64.b64encode(receipt).decode()}


def reputation_router(reputation: ReputationStore, require_token: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/reputation", dependencies=[Depends(require_token)], tags=["reputation"])

    @router.get("")
    async def summary(
        checks_above: Annotated[
            int | None, Query(ge=0, description="wait until more than this many checks are settled")
        ] = None,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="how long to wait (with checks_above)")] = 0.0,
        after: Annotated[
            str | None, Query(pattern=_PEER_ID_PATTERN, description="the page after this peer id (`next_after`)")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PEER_PAGE, description="peers per page")] = DEFAULT_PEER_PAGE,
    ) -> dict[str, Any]:
        """The peers this node has evidence about or has banned, in peer id order a page at a time, and the
        check counters.

        Paging: `next_after` is the `after` of the next page; null on the last page.
        Long-poll: with `checks_above=K&wait_s=N` the answer comes once more than K checks
        are settled (`counters.checks`), or after N seconds.
        """
        if checks_above is not None:
            with trio.move_on_after(wait_s):
                while reputation.counters()["checks"] <= checks_above:
                    await reputation.changed.wait()
        peer_ids = reputation.peers()
        start = 0 if after is None else bisect.bisect_right(peer_ids, after)
        page = peer_ids[start : start + limit]
        counts = await reputation.evidence_counts(page)  # one query for the page, not one per peer
        peers = [reputation.describe(peer_id) | {"evidence_count": counts.get(peer_id, 0)} for peer_id in page]
        return {
            "peers": peers,
            "counters": reputation.counters(),
            "check_overhead": reputation.overhead(),
            "next_after": page[-1] if start + limit < len(peer_ids) else None,
        }

    # before /{peer_id}: "evidence" is a valid base58 string too
    @router.get("/evidence")
    async def evidence(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_EVIDENCE_PAGE)] = 100,
        peer_id: Annotated[str | None, Query(pattern=_PEER_ID_PATTERN)] = None,
    ) -> dict[str, Any]:
        """Evidence rows after id ``after``, oldest first, each with its signed receipts (base64)."""
        rows = await reputation.evidence(peer_id=peer_id, after_id=after, limit=limit)
        return {"evidence": [wire_row(r) for r in rows], "next_after": rows[-1]["id"] if rows else None}

    @router.get("/failures")
    async def failures(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_EVIDENCE_PAGE)] = 100,
        peer_id: Annotated[str | None, Query(pattern=_PEER_ID_PATTERN)] = None,
    ) -> dict[str, Any]:
        """Tries that failed by the worker's doing, after id ``after``, oldest first (a cheat's receipt base64)."""
        rows = await reputation.failures(peer_id=peer_id, after_id=after, limit=limit)
        return {"failures": [_failure_row(r) for r in rows], "next_after": rows[-1]["id"] if rows else None}

    @router.get("/{peer_id}", responses={404: {"model": ErrorBody, "description": "nothing known about the peer"}})
    async def peer(peer_id: Annotated[str, PathParam(pattern=_PEER_ID_PATTERN)]) -> Any:
        """One peer: scores per model family, ban state and expiry, evidence count, recent verdicts."""
        evidence_count = await reputation.evidence_count(peer_id)
        if not evidence_count and peer_id not in reputation.peers():
            # not a neutral score: an unknown id is as likely a typo, and /v1/peers/{id} says 404 too
            message = (
                f"no reputation for peer {peer_id}: this node holds no score, ban or evidence about it; "
                "GET /v1/reputation lists the peers it has"
            )
            return JSONResponse(ErrorBody(error="peer_not_found", message=message).model_dump(), status_code=404)
        described = reputation.describe(peer_id)
        described["evidence_count"] = evidence_count
        rows = await reputation.evidence(peer_id=peer_id, newest_first=True, limit=RECENT_VERDICTS)
        described["recent"] = [_recent(row, peer_id) for row in rows]
        described["failure_count"] = await reputation.failure_count(peer_id)
        failed = await reputation.failures(peer_id=peer_id, newest_first=True, limit=RECENT_VERDICTS)
        described["recent_failures"] = [
            {key: row[key] for key in ("id", "at", "model_family", "job_id", "outcome", "fault", "detail")}
            | {"receipt": row["receipt"] is not None}
            for row in failed
        ]
        return described

    return router
