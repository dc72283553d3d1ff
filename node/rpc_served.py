"""``/v1/served``: the jobs this node's worker served for others, and what they earned (``node/served_jobs.py``).

* ``GET /v1/served?limit=&before=&outcome=``: rows newest first, a page at a time (the next page is
  ``before=<the last row's seq>``), and the totals: jobs by outcome and micro-credits earned;
* ``GET /v1/served/{seq}/receipt``: the signed receipt of a job that got one (``lpnode receipt verify``).

Present on nodes that serve models; a requester-only node has no worker and no such routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import trio
from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from lpnode.node.job_manager import JobNotFound
from lpnode.node.rpc_models import MAX_WAIT_S
from lpnode.node.served_jobs import MAX_PAGE, ServedBook

Outcome = Literal["delivered", "cancelled", "failed", "abandoned"]


def served_router(book: ServedBook, require_token: Any) -> APIRouter:
    router = APIRouter(prefix="/v1/served", dependencies=[Depends(require_token)], tags=["worker"])

    @router.get("")
    async def served(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[
            int | None, Query(ge=1, description="the last `seq` of a page: the rows older than it")
        ] = None,
        outcome: Outcome | None = None,
        seq_above: Annotated[int | None, Query(ge=0, description="wait until a row newer than this exists")] = None,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="how long to wait (with seq_above)")] = 0.0,
    ) -> dict[str, Any]:
        """Jobs this node's worker served (a requester accepted its quote), newest first, and the totals.

        A row lands a moment after its job ends (the worker never waits on the database): with
        `seq_above=K&wait_s=N` the answer waits up to N s for a row newer than K.
        """
        if seq_above is not None:
            with trio.move_on_after(wait_s):
                await book.wait_rows_above(seq_above)
        return {"jobs": await book.page(limit, before, outcome), "totals": await book.totals()}

    @router.get("/{seq}/receipt", response_class=Response)
    async def receipt(seq: Annotated[int, PathParam(ge=1)]) -> Response:
        """The signed receipt this node gave for served job `seq`."""
        data = await book.receipt(seq)
        if data is None:
            raise JobNotFound(f"no served job {seq} with a receipt (GET /v1/served lists them)")
        return Response(data, media_type="application/octet-stream")

    return router


__all__ = ["served_router"]
