"""``GET /v1/jobs/{id}/checks``: what became of the spot checks of a job's outputs.

A spot check runs after the answer (``lpnode.reputation.spot_check``), so the answer cannot say
whether its output was checked, or found wrong; this route can, afterwards. One entry per network
job of the record (a workflow's: every step's), in the record's order, with ``state``:

* ``settled``: the check's evidence is in the reputation store; ``worker`` says how the job's
  worker came out of it: ``credited`` (the majority agreed with its output), ``blamed`` (its output
  is judged wrong: do not use it) or ``undecided`` (two runs disagreed and no third peer settled it);
  ``evidence`` lists the rows (``lpnode reputation export`` has their signed receipts);
* ``pending``: copies are running on other peers (``?wait_s=N`` waits up to N s, at most 60, for them to end);
* ``not_checked`` and ``lost``, with a ``reason``: no check was made, or one came to nothing;
* ``unknown``: this node does not remember (it restarted since the job, or the job is older than the
  last 10,000 it sent).

The worker is never told its job was checked, and nothing here reaches it: this is the requester's API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query
from lpnode.node.job_manager import JobManager
from lpnode.node.rpc_jobs import JobId
from lpnode.node.rpc_models import MAX_WAIT_S

__all__ = ["CheckStatusSource", "checks_router", "record_tries"]


class CheckStatusSource(Protocol):
    """Where each try's check stands (``lpnode.reputation.spot_check.SpotChecker.check_status``)."""

    async def check_status(self, tries: Sequence[tuple[str, str]], *, wait_s: float = 0.0) -> list[dict[str, Any]]: ...


def record_tries(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(worker peer id, job id) of each network job that made the record's outputs; none before it succeeds."""
    result = record.get("result")
    jobs = result.get("jobs", []) if isinstance(result, Mapping) else []
    return [(str(job["worker_peer_id"]), str(job["job_id"])) for job in jobs]


def checks_router(
    manager: JobManager, checks: CheckStatusSource, require_token: Callable[..., Awaitable[None]]
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["jobs"])

    @router.get("/v1/jobs/{job_id}/checks")
    async def job_checks(
        job_id: JobId,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="wait this long for pending checks")] = 0,
    ) -> dict[str, Any]:
        """The spot checks of the job's outputs, one entry per network job (see the module docstring):
        `state` settled, pending, not_checked, lost or unknown; once settled, `worker` credited, blamed
        or undecided, and the `evidence` rows. With `wait_s`, a long-poll: answered once no check is
        pending, or when `wait_s` has passed."""
        record = await manager.get(job_id)
        entries = await checks.check_status(record_tries(record), wait_s=wait_s)
        return {"id": job_id, "state": record["state"], "checks": entries}

    return router
