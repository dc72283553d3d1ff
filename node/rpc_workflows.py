"""``POST /v1/workflows``: a chain of pipeline steps as one request (see ``workflows``).

The body is JSON (the first step's file, if any, as base64 in ``input``),
read bounded like an upload. The chain is checked whole before anything runs
(422). The answer is sync by default, or 202 with ``Prefer: respond-async``;
the workflow is a record of kind ``workflow`` in ``/v1/jobs`` and each step a
child record of it, whose ``request`` shows the options the step ran with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from lpnode.node.job_manager import JobManager, _Live
from lpnode.node.rpc_job_bodies import read_json
from lpnode.node.rpc_jobs import respond
from lpnode.node.transfer import DEFAULT_MAX_TOTAL_BYTES
from lpnode.node.workflows import WorkflowBody, plan_workflow, run_workflow

_JSON_OVERHEAD_BYTES = 1024 * 1024  # steps and options beside the base64 input


def workflows_router(
    manager: JobManager,
    require_token: Callable[..., Awaitable[None]],
    *,
    max_input_bytes: int,
    max_output_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)], tags=["workflows"])
    max_body = max_input_bytes * 4 // 3 + 4 + _JSON_OVERHEAD_BYTES  # base64 is 4 bytes per 3

    @router.post(
        "/v1/workflows",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _schema()}}},
        },
    )
    async def workflow(request: Request) -> Any:
        """Run steps in a chain, each step's output the next one's input; one receipt per step.

        The job options apply to every step; `max_price` is the budget of the whole chain (a step may
        spend what the steps before it left) and `deadline` its time (a step gets what is left).
        """
        plan = plan_workflow(await read_json(request, max_body), max_output_bytes)

        async def work(live: _Live) -> dict[str, Any]:
            return await run_workflow(manager, live, plan)

        job_id = await manager.submit_work("workflow", plan.request, work)
        return await respond(manager, job_id, request)

    return router


def _schema() -> dict[str, Any]:
    schema = WorkflowBody.model_json_schema()
    schema.pop("$defs", None)
    return schema


__all__ = ["workflows_router"]
