"""``attempt`` events: a job's tries on its workers, as the job manager, its SSE stream and the CLI show them.

The first worker runs a pool that never finishes (``StuckPool``, so the failover cannot race the
run) and is taken off the network once it runs the job; the second runs the real tiny-sdxl
preset. Every wait is an event, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.cli_follow import follow
from lpnode.node.cli_progress import DETAIL_CHARS, ProgressDisplay, WorkflowProgress
from lpnode.node.client import LpnodeClient
from lpnode.node.job_events import ATTEMPT_BUFFER, JobEvent, Listener
from lpnode.node.job_manager import JobManager, MemoryRecordBook, open_job_manager, requester_runner
from lpnode.node.job_requester import JobRequest, run_job
from lpnode.node.job_try import Attempt, TryWatcher
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc_job_bodies import TextToImageBody, prepare, validate
from lpnode.node.rpc_jobs import OutputStore
from lpnode.node.workflows import plan_workflow, run_workflow
from lpnode.protocol.jobs import Progress
from lpnode.protocol.jobspec import Pipeline, TextToImageParams

from .job_fixtures import BOUND_S, MODEL, Peer, StuckPool, peers, sees_models
from .test_rpc_jobs import AUTH, rpc, sse_events

T2I_BODY = {
    "prompt": "a lighthouse at dusk",
    "model_id": MODEL,
    "width": 64,
    "height": 64,
    "guidance_scale": 0.0,
    "num_inference_steps": 2,
    "seed": 5,
    "max_price": 100,
    "deadline": BOUND_S,
}
FAST = {"num_inference_steps": 2, "guidance_scale": 0.0}
START_KEYS = {"stage", "image", "attempt", "peer_id", "model_id"}
END_KEYS = START_KEYS | {"ok", "outcome", "detail", "price"}
OLD = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
NEW = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


@asynccontextmanager
async def failover(pool: ModelPool) -> AsyncIterator[tuple[Peer, Peer, Peer, StuckPool]]:
    """A requester, a worker that will be lost mid-job (``doomed``) and one that finishes it (``survivor``)."""
    stuck = StuckPool()
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        doomed: Peer = await start(1, pool=stuck)  # type: ignore[assignment]
        survivor: Peer = await start(2, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [doomed, survivor])
        yield requester, doomed, survivor, stuck


async def lose_when_running(doomed: Peer, stuck: StuckPool, *also: trio.Event) -> None:
    """Take ``doomed`` off the network once it runs the job and its Quote is out (and ``also`` are set)."""
    await stuck.running.wait()
    # a job taken in advance is quoted once its run is under way (JobWorker._quote): let that go out first
    await trio.testing.wait_all_tasks_blocked()
    for event in also:
        await event.wait()
    doomed.scope.cancel()


async def until_done(listener: Listener) -> list[JobEvent]:
    events = [await listener.next()]
    while events[-1].kind != "done":
        events.append(await listener.next())
    return events


def tries(events: list[JobEvent] | list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """The attempt events, shortly: (stage, attempt, peer, ok, outcome)."""
    pairs = [(e.kind, e.data) if isinstance(e, JobEvent) else e for e in events]
    return [(d["stage"], d["attempt"], d["peer_id"], d.get("ok"), d.get("outcome")) for k, d in pairs if k == "attempt"]


async def test_a_failover_is_a_try_ending_failed_then_one_ending_ok_before_the_new_workers_progress(
    pool: ModelPool,
) -> None:
    async with failover(pool) as (requester, doomed, survivor, stuck):
        runner = requester_runner(requester.node)
        async with open_job_manager(MemoryRecordBook(), OutputStore(), runner) as jobs:
            body = validate(TextToImageBody, T2I_BODY | {"prefer": [doomed.peer_id]})
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lose_when_running, doomed, stuck)
                    job_id = await jobs.submit(prepare(body, {}, 1 << 20))
                    async with jobs.listen(job_id) as listener:  # attached before the job's task first runs
                        events = await until_done(listener)
    record = events[-1].data
    assert record["state"] == "succeeded"
    assert tries(events) == [
        ("start", 1, doomed.peer_id, None, None),
        ("end", 1, doomed.peer_id, False, "disconnected"),
        ("start", 2, survivor.peer_id, None, None),
        ("end", 2, survivor.peer_id, True, "done"),
    ]
    attempts = [e.data for e in events if e.kind == "attempt"]
    assert all(set(a) == (END_KEYS if a["stage"] == "end" else START_KEYS) for a in attempts)
    assert all(a["image"] == 0 and a["model_id"] == MODEL for a in attempts)
    # an end event says what the record's attempt entry says
    ends = [{k: a[k] for k in ("peer_id", "outcome", "detail", "price")} for a in attempts if a["stage"] == "end"]
    assert ends == record["attempts"]
    # how far it had got when it was lost (running: the word of it may not have arrived yet)
    assert record["attempts"][0]["detail"].startswith(("while running: ", "after its quote was accepted: "))
    # the move is told before any progress from the new worker, which is all the progress there is
    kinds = [e.kind for e in events]
    second_start = next(i for i, e in enumerate(events) if e.kind == "attempt" and e.data["attempt"] == 2)
    assert "progress" in kinds and kinds.index("progress") > second_start
    assert {e.data["peer_id"] for e in events if e.kind == "progress"} == {survivor.peer_id}
    assert kinds[0] == "state" and kinds[-2:] == ["state", "done"]


async def test_a_listener_that_connects_mid_try_hears_of_the_try_under_way(pool: ModelPool) -> None:
    async with failover(pool) as (requester, doomed, _survivor, stuck):
        body = validate(TextToImageBody, T2I_BODY | {"prefer": [doomed.peer_id]})
        runner = requester_runner(requester.node)
        with trio.fail_after(BOUND_S):
            async with open_job_manager(MemoryRecordBook(), OutputStore(), runner) as jobs:
                job_id = await jobs.submit(prepare(body, {}, 1 << 20))
                await stuck.running.wait()  # the first try is under way on the doomed worker
                async with jobs.listen(job_id) as listener:
                    first = [await listener.next(), await listener.next()]
                await jobs.cancel(job_id)
    assert (first[0].kind, first[0].data) == ("state", {"state": "running"})
    assert tries(first) == [("start", 1, doomed.peer_id, None, None)]


async def test_the_events_stream_carries_attempts_over_http_and_the_cli_says_the_job_moved(pool: ModelPool) -> None:
    async with failover(pool) as (requester, doomed, survivor, stuck), rpc(requester.node) as (client, jobs):
        attached = trio.Event()
        _observe_listeners(jobs, attached)
        body = T2I_BODY | {"prefer": [doomed.peer_id]}
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lose_when_running, doomed, stuck, attached)
                accepted = await client.post("/text-to-image", json=body, headers=AUTH | {"Prefer": "respond-async"})
                stream = await client.get(accepted.headers["location"] + "/events", headers=AUTH)
    events = sse_events(stream.text)
    assert "event: attempt\ndata: {" in stream.text
    # The stream was opened after the job started, maybe after its first try started: a listener
    # hears of the tries under way as it connects (QA: the first start was missing). The worker was
    # lost only once the stream was listening, so everything from the failure on is there too.
    assert tries(events) == [
        ("start", 1, doomed.peer_id, None, None),
        ("end", 1, doomed.peer_id, False, "disconnected"),
        ("start", 2, survivor.peer_id, None, None),
        ("end", 2, survivor.peer_id, True, "done"),
    ]
    assert events[-1][0] == "done" and events[-1][1]["state"] == "succeeded"

    # the CLI following that very stream (as the node sent it) says who failed, why, and where the job went
    out = io.StringIO()
    record = {"id": accepted.json()["id"], "state": "running"}
    async with LpnodeClient("http://node", "t", data_dir=Path("/d"), transport=_replay(stream.content)) as replay:
        final = await follow(replay, record, ProgressDisplay(out, "txt2img", tty=False))
    assert final["state"] == "succeeded"
    moved = [line for line in out.getvalue().splitlines() if "failed" in line]
    # txt2img: 12D3KooW…45u7V1 failed: disconnected (while running: stream /lpnode/job/1 from ... ended); trying ...
    assert len(moved) == 1
    assert moved[0].startswith(f"txt2img: {_short(doomed.peer_id)} failed: disconnected (")
    assert moved[0].endswith(f"); trying {_short(survivor.peer_id)}")
    assert "stopped at" not in out.getvalue()  # no inferred move beside the told one


async def test_a_workflow_forwards_its_steps_attempts_labelled_with_the_step(pool: ModelPool) -> None:
    steps = [
        {"pipeline": "text-to-image", "params": {"prompt": "a lighthouse", "width": 64, "height": 64, **FAST}},
        {"pipeline": "image-to-image", "params": {"prompt": "at night", "strength": 0.5, **FAST}},
    ]
    async with failover(pool) as (requester, doomed, survivor, stuck):
        runner = requester_runner(requester.node)
        async with open_job_manager(MemoryRecordBook(), OutputStore(), runner) as jobs:
            plan = plan_workflow({"steps": steps, "prefer": [doomed.peer_id], "deadline": BOUND_S}, 1 << 20)
            with trio.fail_after(BOUND_S):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lose_when_running, doomed, stuck)
                    job_id = await jobs.submit_work("workflow", plan.request, functools.partial(_run, jobs, plan))
                    async with jobs.listen(job_id) as listener:
                        events = await until_done(listener)
    record = events[-1].data
    assert record["state"] == "succeeded", (record["error"], record["attempts"])
    attempts = [e.data for e in events if e.kind == "attempt"]
    assert [(a["workflow_step"], a["stage"], a["attempt"], a["peer_id"], a.get("ok")) for a in attempts] == [
        (1, "start", 1, doomed.peer_id, None),
        (1, "end", 1, doomed.peer_id, False),
        (1, "start", 2, survivor.peer_id, None),
        (1, "end", 2, survivor.peer_id, True),
        (2, "start", 1, survivor.peer_id, None),
        (2, "end", 1, survivor.peer_id, True),
    ]
    assert [a["step_id"] for a in attempts] == [record["result"]["steps"][0]] * 4 + [record["result"]["steps"][1]] * 2

    out = io.StringIO()
    display = WorkflowProgress(out, ["text-to-image", "image-to-image"], tty=False)
    for event in events:
        if event.kind == "attempt":
            display.attempt(event.data)
        elif event.kind == "progress":
            display.progress(event.data)
    detail = attempts[1]["detail"].replace(doomed.peer_id, _short(doomed.peer_id))  # "... from 12D3KooW…45u7V1 ended"
    assert [line for line in out.getvalue().splitlines() if "failed" in line] == [
        f"step 1/2 text-to-image: {_short(doomed.peer_id)} failed: disconnected ({detail}); trying {_short(survivor.peer_id)}"
    ]


async def test_a_plain_progress_callback_hears_no_tries_and_a_watcher_hears_each(pool: ModelPool) -> None:
    """run_job itself: a TryWatcher passed as on_progress hears each try start and end; a plain callable, progress."""

    class Watcher(TryWatcher):
        def __init__(self) -> None:
            self.heard: list[tuple[str, int, str]] = []

        def __call__(self, peer_id: str, message: Progress) -> None:
            self.heard.append(("progress", message.step, peer_id))

        def try_started(self, number: int, peer_id: str, model_id: str) -> None:
            self.heard.append(("start", number, peer_id))

        def try_ended(self, number: int, attempt: Attempt) -> None:
            self.heard.append(("end", number, attempt.outcome))

    job = JobRequest(Pipeline.TEXT_TO_IMAGE, TextToImageParams("a lighthouse", 64, 64, 2, 0.0, ""), MODEL, seed=7)
    plain: list[int] = []
    async with failover(pool) as (requester, doomed, survivor, stuck):
        watcher = Watcher()
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lose_when_running, doomed, stuck)
                outcome = await run_job(
                    requester.node, job, max_price=100, deadline_s=BOUND_S, prefer=[doomed.peer_id], on_progress=watcher
                )
            again = await run_job(
                requester.node, job, max_price=100, deadline_s=BOUND_S, on_progress=lambda p, m: plain.append(m.step)
            )
    tried = [h for h in watcher.heard if h[0] != "progress"]
    assert tried == [
        ("start", 1, doomed.peer_id),
        ("end", 1, "disconnected"),
        ("start", 2, survivor.peer_id),
        ("end", 2, "done"),
    ]
    progress = [h for h in watcher.heard if h[0] == "progress"]
    assert progress and watcher.heard.index(progress[0]) > watcher.heard.index(tried[2])
    assert [a.outcome for a in outcome.attempts] == ["disconnected", "done"]
    assert plain and again.worker_peer_id == survivor.peer_id


# ---------------------------------------------------------------- the listener's bound


def test_attempt_events_are_bounded_per_listener_and_never_crowd_out_state_or_done() -> None:
    listener = Listener(max_progress=4)
    for n in range(ATTEMPT_BUFFER + 10):
        listener.push(JobEvent("attempt", {"stage": "start", "attempt": n + 1}))
    for _ in range(10):
        listener.push(JobEvent("progress", {}))
    listener.push(JobEvent("state", {"state": "succeeded"}))
    listener.push(JobEvent("done", {}))
    kinds = [e.kind for e in trio.run(until_done, listener)]
    assert kinds == ["attempt"] * ATTEMPT_BUFFER + ["progress"] * 4 + ["state", "done"]
    assert listener.dropped == 10 + 6


# ---------------------------------------------------------------- the CLI's lines


def start(attempt: int, peer: str, image: int = 0, **more: Any) -> dict[str, Any]:
    return {"stage": "start", "image": image, "attempt": attempt, "peer_id": peer, "model_id": MODEL} | more


def end(attempt: int, peer: str, outcome: str, detail: str = "", image: int = 0, **more: Any) -> dict[str, Any]:
    ok = outcome == "done"
    return start(attempt, peer, image, **more) | {
        "stage": "end",
        "ok": ok,
        "outcome": outcome,
        "detail": detail,
        "price": 1,
    }


def test_a_failed_try_is_one_line_naming_the_next_peer_when_the_job_moves() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "img2vid", tty=False)
    display.state("running")
    display.attempt(start(1, OLD))
    for step in (1, 5, 10):
        display.progress({"fraction": step / 20, "step": step, "total": 20, "peer_id": OLD})
    display.attempt(end(1, OLD, "disconnected", "while running: stream reset"))
    assert "failed" not in out.getvalue()  # said once the job moves: the next try names its peer
    display.attempt(start(2, NEW))
    display.progress({"fraction": 1 / 20, "step": 1, "total": 20, "peer_id": NEW})
    lines = out.getvalue().splitlines()
    assert (
        lines[-2] == f"img2vid: {_short(OLD)} failed: disconnected (while running: stream reset); trying {_short(NEW)}"
    )
    # the new try's quarters from its start; nothing inferred from the peer changing ("stopped at")
    assert lines[-1].startswith("img2vid [#") and f"step 1/20  running on {_short(NEW)}" in lines[-1]
    assert "stopped at" not in out.getvalue()
    display.attempt(end(2, NEW, "done"))
    assert out.getvalue().splitlines()[-1] == lines[-1]  # a try that made the result says nothing


def test_a_failure_before_any_progress_is_said_too_and_a_busy_peer_asked_again_so() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "txt2img", tty=False)
    display.attempt(start(1, OLD))
    display.attempt(end(1, OLD, "refused:busy", "queue full\n(4 of 4)"))
    display.attempt(start(2, OLD))
    display.attempt(end(2, OLD, "timeout", "x" * 300))
    display.attempt(start(3, NEW))
    lines = out.getvalue().splitlines()
    assert lines[0] == f"txt2img: {_short(OLD)} failed: refused:busy (queue full (4 of 4)); asking {_short(OLD)} again"
    assert lines[1] == f"txt2img: {_short(OLD)} failed: timeout ({'x' * (DETAIL_CHARS - 1)}…); trying {_short(NEW)}"

    tty = io.StringIO()
    display = ProgressDisplay(tty, "t", tty=True)
    display.progress({"fraction": 0.5, "step": 1, "total": 2, "peer_id": OLD})
    display.attempt(end(1, OLD, "garbage"))
    display.attempt(start(2, NEW))
    assert f"\nt: {_short(OLD)} failed: garbage; trying {_short(NEW)}\n" in tty.getvalue()


def test_images_side_by_side_are_told_apart_by_their_image_number() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "txt2img", tty=False, images=2)
    display.attempt(start(1, OLD, image=0))
    display.attempt(start(1, NEW, image=1))
    display.attempt(end(1, NEW, "disconnected", image=1))
    display.attempt(end(1, OLD, "done", image=0))
    display.attempt(start(2, OLD, image=1))
    assert out.getvalue().splitlines() == [
        f"txt2img image 2/2: {_short(NEW)} failed: disconnected; trying {_short(OLD)}"
    ]


def test_an_older_node_without_attempt_events_still_has_its_moves_inferred() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, "img2vid", tty=False)
    display.progress({"fraction": 0.5, "step": 10, "total": 20, "peer_id": OLD})
    display.progress({"fraction": 0.05, "step": 1, "total": 20, "peer_id": NEW})
    assert f"img2vid: {_short(OLD)} stopped at step 10/20; the job moved to {_short(NEW)}" in out.getvalue()


# ---------------------------------------------------------------- helpers


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-6:]}"


async def _run(jobs: JobManager, plan: Any, live: Any) -> dict[str, Any]:
    return await run_workflow(jobs, live, plan)


def _observe_listeners(jobs: JobManager, attached: trio.Event) -> None:
    """Set ``attached`` once a watcher listens to a job (the HTTP stream does so as it starts)."""
    listen = jobs.listen

    @asynccontextmanager
    async def observed(job_id: str, *args: Any) -> AsyncIterator[Listener]:
        async with listen(job_id, *args) as listener:
            attached.set()
            yield listener

    jobs.listen = observed  # type: ignore[method-assign]


def _replay(sse: bytes) -> httpx.MockTransport:
    """A node that answers the events stream with ``sse`` (bytes a real node sent)."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/events")
        return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(answer)
