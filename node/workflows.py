"""Workflows: a chain of pipeline steps, each step's output the next step's input.

:func:`plan_workflow` is pure: it checks the whole chain before anything runs
(every step's parameters, as its endpoint would; the media kinds fitting from
step to step, as the job spec's input choices say: text → image, image → image,
image → video, video → video, and upscaling both image → image and video →
video; the input file of the first step) and raises the API's 422 for the first problem.
Messages count steps from 1, as the CLI does (the field paths, ``steps.0``, are pydantic's).
:func:`run_workflow` runs a plan step by step through the job manager, each
step a child record of the workflow's, each free to go to another peer.

The workflow's job options are every step's options, with two of them shared
out over the chain: ``max_price`` is the budget of the whole workflow (a step
may spend at most what the earlier steps left of it) and ``deadline`` the time
for the whole workflow (a step gets what is left of it). A step's record shows
the options it ran with.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from fastapi.exceptions import RequestValidationError
from lpnode.node.job_requester import JobFailed, ParametersRefused, PriceBelowOffers
from lpnode.node.rpc_job_bodies import (
    BODIES,
    IMAGE,
    INPUT_FILE,
    VIDEO,
    JobOptions,
    PreparedJob,
    input_kind,
    input_summary,
    invalid,
    prepare,
    probe_file,
    validate,
)
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.jobspec import PIPELINE_IO, VIDEO_MP4, Pipeline
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from lpnode.node.job_manager import JobManager, _Live

MAX_STEPS = 8
# What each pipeline makes of each kind of input it takes (None: no input), from the job
# spec's input choices so the chain check cannot disagree with what a spec accepts.
MAKES: dict[Pipeline, dict[str | None, str]] = {
    pipeline: {next(iter(names), None): VIDEO if media == VIDEO_MP4 else IMAGE for names, media in choices}
    for pipeline, choices in PIPELINE_IO.items()
}
# Stand-ins for an input only the run will make, so planning can run each step's spec checks.
_STAND_IN = {IMAGE: b"\x89PNG\r\n\x1a\n", VIDEO: b"\x00\x00\x00\x18ftypisom"}
_OPTION_FIELDS = frozenset(JobOptions.model_fields)


class WorkflowBudgetSpent(PriceBelowOffers):
    """What the earlier steps left of the workflow's ``max_price`` does not cover the next step (HTTP 422)."""


class WorkflowDeadlinePassed(JobFailed):
    """The workflow's ``deadline`` passed before its next step could start (HTTP 503, as a job's deadline)."""


class WorkflowStepRefused(ParametersRefused):
    """A step refuses the input the step before it made (HTTP 422); the chain was checked with stand-ins."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ())


class StepBody(BaseModel):
    # A workflow is lpnode's own format (no Livepeer client sends one): an unknown key is a typo, and a
    # typo in, say, max_price would otherwise run the chain with no budget at all (QA).
    model_config = ConfigDict(extra="forbid")

    pipeline: Pipeline
    model_id: str = Field("", max_length=128)
    params: dict[str, Any] = Field(default_factory=dict, description="the pipeline endpoint's fields, no file")


class WorkflowBody(JobOptions):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # see StepBody; the endpoints ignore extras

    steps: list[StepBody] = Field(min_length=1, max_length=MAX_STEPS)
    input: str | None = Field(None, description="base64 of the first step's file, when it takes one")


@dataclass(frozen=True)
class WorkflowPlan:
    bodies: tuple[Any, ...]  # each step's checked endpoint body (rpc_job_bodies._PipelineBody)
    first_input: bytes | None = field(repr=False)
    options: JobOptions
    request: dict[str, Any]  # the workflow record's `request`
    max_output_bytes: int

    def step(
        self, index: int, data: bytes | None, *, budget: int | None = None, time_left_s: float | None = None
    ) -> PreparedJob:
        """Step ``index`` with its input (the workflow's file, or the previous step's output).

        It runs with the workflow's options; ``budget`` (micro-credits) and ``time_left_s``
        replace its ``max_price`` and ``deadline`` (default: the workflow's whole ones).
        Its ``request`` shows the options it runs with.
        """
        options = self.options.model_dump()
        if budget is not None:
            options["max_price"] = budget
        if time_left_s is not None:
            options["deadline"] = max(0.001, round(time_left_s, 3))  # the record's deadline stays > 0, as checked
        body = self.bodies[index].model_copy(update=options)  # checked values: no validation to repeat
        name = INPUT_FILE[body.pipeline]
        inputs = {name: data} if name is not None and data is not None else {}
        return prepare(body, inputs, self.max_output_bytes)

    def step_name(self, index: int) -> str:
        """``step 2 (upscale)``: counted from 1, as the CLI and the receipts' file names count."""
        return f"step {index + 1} ({self.bodies[index].pipeline})"


def plan_workflow(values: Mapping[str, Any], max_output_bytes: int) -> WorkflowPlan:
    """Check a ``POST /v1/workflows`` body; RequestValidationError (422) for the first problem."""
    workflow: WorkflowBody = validate(WorkflowBody, values)
    options = workflow.options()
    first_input = _decode_input(workflow.input)
    bodies = []
    have: str | None = _kind_of(first_input)
    for index, step in enumerate(workflow.steps):
        where = f"steps.{index}"
        makes = MAKES[step.pipeline]
        if have not in makes:
            raise invalid(_mismatch(index, step.pipeline, list(makes), have), "body", where)
        step_name = f"step {index + 1} ({step.pipeline})"
        if options_given := sorted(_OPTION_FIELDS & step.params.keys()):
            raise invalid(
                f"{step_name}: job options {options_given} belong to the workflow, not to one step", "body", where
            )
        body = _step_body(step, step_name)
        if body.image_count() != 1:
            raise invalid(f"{step_name}: a workflow step makes one image (num_images_per_prompt = 1)", "body", where)
        # the spec's own checks, with a stand-in for an input that only the run will make
        name = INPUT_FILE[step.pipeline]
        prepare(body, {name: _STAND_IN[have]} if name and have else {}, max_output_bytes, declare=False)
        bodies.append(body)
        have = makes[have]
    if first_input is not None:
        # Read as far as its size now, as a pipeline request's file is: an unreadable one was only found
        # when its step ran, inside the job, where it ended as an internal error (QA s11).
        probe_file("input", _kind_of(first_input) or IMAGE, first_input, workflow.steps[0].pipeline)
    request = workflow.model_dump(mode="json", exclude={"input"})
    request["inputs"] = input_summary({"input": first_input}) if first_input is not None else {}
    return WorkflowPlan(tuple(bodies), first_input, options, request, max_output_bytes)


async def run_workflow(manager: JobManager, live: _Live, plan: WorkflowPlan) -> dict[str, Any]:
    """Every step in order, as children of ``live``, within the workflow's budget and deadline; its result.

    A step that fails fails the workflow, its error's message naming the step.
    """
    data = plan.first_input
    step_ids: list[str] = []
    jobs: list[Any] = []
    images: list[Any] = []
    max_price, deadline_s = plan.options.max_price, plan.options.deadline
    give_up_at = trio.current_time() + deadline_s
    spent = 0  # micro-credits, as the steps' workers quoted and signed
    for index in range(len(plan.bodies)):
        name = plan.step_name(index)
        time_left_s = give_up_at - trio.current_time()
        if time_left_s <= 0:
            raise WorkflowDeadlinePassed(
                f"{name} not started: the workflow's deadline of {deadline_s} s passed during the {index} step(s) "
                "before it"
            )
        budget = max_price - spent
        try:
            prepared = plan.step(index, data, budget=budget, time_left_s=time_left_s)
        except RequestValidationError as exc:  # what the step before made does not fit this step
            raise WorkflowStepRefused(f"{name}: {'; '.join(_msg(e) for e in exc.errors())}") from None
        try:
            child, data = await manager.run_child(live, prepared, (index, len(plan.bodies)))
        except PriceBelowOffers as exc:
            if not spent:
                raise _named(exc, name) from None
            raise WorkflowBudgetSpent(
                f"{name}: the earlier steps spent {spent} of the workflow's max_price {max_price}, "
                f"and the {budget} micro-credits left do not cover it ({exc})"
            ) from None
        except LpnodeError as exc:
            raise _named(exc, name) from None
        step_ids.append(child["id"])
        jobs.extend(child["result"]["jobs"])
        images = child["result"]["images"]
        spent += sum(int(job["price"]) for job in child["result"]["jobs"])
    return {
        "steps": step_ids,
        "outputs": [image["url"] for image in images],
        "images": images,
        "jobs": jobs,
        "request_id": live.record["id"],
    }


def _named(exc: LpnodeError, name: str) -> LpnodeError:
    """``exc`` with its message naming the step; its type (and so its HTTP status and kind) kept.

    The message is rewritten in place: the error types take different constructor arguments,
    so a copy could not be built generically. The step's own record keeps the plain message.
    """
    message = f"{name}: {exc}"
    exc.args = (message, *exc.args[1:])
    return exc


def _step_body(step: StepBody, name: str) -> Any:
    body_type = BODIES[step.pipeline]
    # the endpoint's fields include model_id, so params may name it: it was overwritten by the step's own (review)
    model_id = step.params.get("model_id", step.model_id)
    if step.model_id and model_id != step.model_id:
        raise invalid(f"{name}: two model_ids, {step.model_id!r} (the step's) and {model_id!r} (its params')")
    if unknown := sorted(step.params.keys() - body_type.model_fields.keys()):
        known = sorted(body_type.model_fields.keys() - _OPTION_FIELDS)
        raise invalid(f"{name}: unknown parameter(s) {unknown}; {step.pipeline} takes {known}")
    values = {**step.params, "model_id": model_id}
    try:
        return validate(body_type, values)
    except RequestValidationError as exc:  # say which step
        raise invalid(f"{name}: {'; '.join(_msg(e) for e in exc.errors())}") from None


def _msg(error: Any) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ())[1:])
    return f"{loc}: {error.get('msg', 'invalid')}"


def _decode_input(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("input is not base64", "body", "input") from None
    if not data:
        raise invalid("input is empty", "body", "input")
    return data


def _kind_of(data: bytes | None) -> str | None:
    if data is None:
        return None
    return input_kind(data) or IMAGE  # an unknown format goes on as an image: its step's worker decides


def _mismatch(index: int, pipeline: Pipeline, takes: list[str | None], have: str | None) -> str:
    wants = " or ".join(_a(kind) for kind in takes if kind is not None)
    name, before = f"step {index + 1} ({pipeline})", f"step {index}"  # counted from 1
    if index == 0:
        if None in takes:
            return f"{name} takes no input file, but the workflow has one"
        if have is None:
            return f"{name} needs {wants}: give it as base64 in `input`"
        return f"{name} needs {wants}, but `input` is {_a(have)}"
    if None in takes:
        return f"{name} takes no input, so it cannot follow {before}"
    return f"{name} needs {wants} but {before} makes {_a(have)}"


def _a(kind: str | None) -> str:
    return f"an {kind}" if kind == IMAGE else f"a {kind}"


__all__ = [
    "MAKES",
    "MAX_STEPS",
    "StepBody",
    "WorkflowBody",
    "WorkflowBudgetSpent",
    "WorkflowDeadlinePassed",
    "WorkflowPlan",
    "WorkflowStepRefused",
    "plan_workflow",
    "run_workflow",
]
