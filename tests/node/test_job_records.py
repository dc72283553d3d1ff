"""Job records on a real SQLite file: lifecycle, listing, workflows, receipts, restarts, bounds."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from lpnode.node.job_book import MemoryRecordBook
from lpnode.node.job_records import (
    INTERRUPTED_ERROR,
    JOB_MIGRATIONS,
    MAX_JSON_BYTES,
    MAX_LIST,
    InvalidRecord,
    JobFinished,
    JobRecord,
    JobRecords,
    JobState,
    RecordTooLarge,
    UnknownJob,
)
from lpnode.node.output_files import OutputFiles
from lpnode.node.store import open_store

from tests.node.store_kill_writer import PAIRS_MIGRATION

KILL_AFTER_PAIRS = 150  # commits the child reports before it is killed
REQUEST = {"prompt": "a red fox", "model_id": "tiny-sd", "seed": 7, "num_inference_steps": 2}


class FakeClock:
    """Wall-clock seconds the test controls."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@asynccontextmanager
async def open_records(path: Path, **kwargs: float) -> AsyncIterator[JobRecords]:
    async with open_store(path, JOB_MIGRATIONS) as store:
        yield JobRecords(store, **kwargs)


async def test_create_update_get_and_the_api_shape(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        created = await records.create("text-to-image", REQUEST, now=now())
        assert created.id.startswith("job_") and len(created.id) == 4 + 24
        assert created.state is JobState.QUEUED and created.created_at == created.updated_at
        running = await records.update(created.id, state=JobState.RUNNING, now=now())
        assert running.state is JobState.RUNNING and running.updated_at > created.updated_at
        result = {"images": [{"url": "/v1/outputs/" + "a" * 64, "seed": 7, "nsfw": False}], "jobs": []}
        attempts = [{"peer_id": "12D3KooWpeer", "outcome": "ok", "detail": "", "price": 10}]
        done = await records.update(created.id, state=JobState.SUCCEEDED, result=result, attempts=attempts, now=now())
        assert await records.get(created.id) == done
        assert done.to_json() == {
            "id": created.id,
            "kind": "text-to-image",
            "state": "succeeded",
            "created_at": created.created_at,
            "updated_at": done.updated_at,
            "request": REQUEST,
            "progress": {"fraction": 0.0, "step": 0, "total": 0, "peer_id": None},
            "result": result,
            "error": None,
            "attempts": attempts,
            "parent_id": None,
        }
        assert await records.get("job_" + "0" * 24) is None


async def test_terminal_records_cannot_be_reopened_or_rewritten(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        job = await records.create("upscale", {"scale": 4}, now=now())
        error = {"status": 503, "error": "job_failed", "message": "all peers failed"}
        failed = await records.update(job.id, state=JobState.FAILED, error=error, now=now())
        for change in (
            {"state": JobState.RUNNING},
            {"state": JobState.SUCCEEDED},
            {"result": {"images": []}},
            {"progress": {"fraction": 1.0, "step": 2, "total": 2, "peer_id": None}},
        ):
            with pytest.raises(JobFinished, match=f"job {job.id} already failed"):
                await records.update(job.id, **change, now=now())  # type: ignore[arg-type]
        assert await records.get(job.id) == failed
        with pytest.raises(UnknownJob):
            await records.update("job_nope", state=JobState.RUNNING, now=now())


async def test_list_newest_first_filtered_and_bounded(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        ids = [(await records.create("text-to-image", {"i": i}, now=now())).id for i in range(6)]
        await records.update(ids[1], state=JobState.CANCELLED, now=now())
        await records.update(ids[4], state=JobState.CANCELLED, now=now())
        assert [r.id for r in await records.list()] == ids[::-1]
        assert [r.id for r in await records.list(limit=2)] == [ids[5], ids[4]]
        assert [r.id for r in await records.list(state=JobState.CANCELLED)] == [ids[4], ids[1]]
        for bad in (0, MAX_LIST + 1):
            with pytest.raises(InvalidRecord, match="limit"):
                await records.list(limit=bad)


async def test_pages_go_back_from_the_last_id_of_the_one_before(tmp_path: Path) -> None:
    # QA: past the newest 500 records there was no way to list a node's jobs
    now = FakeClock()
    memory = MemoryRecordBook()
    async with open_records(tmp_path / "node.db") as records:
        ids = [(await records.create("text-to-image", {"i": i}, now=now())).id for i in range(5)]
        for job_id in ids:
            memory._records[job_id] = (await records.get(job_id)).to_json()  # type: ignore[union-attr]
        await records.update(ids[2], state=JobState.CANCELLED, now=now())
        memory._records[ids[2]]["state"] = "cancelled"
        pages: list[list[str]] = []
        before = None
        while page := [r.id for r in await records.list(limit=2, before=before)]:
            pages.append(page)
            before = page[-1]
        assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
        assert [r.id for r in await records.list(before=ids[4], state=JobState.CANCELLED)] == [ids[2]]
        assert await records.list(before="job_unknown") == []
        # the book kept in memory (tests, a node without a database) pages the same way
        assert [r["id"] for r in await memory.list(2, None, None, ids[3])] == [ids[2], ids[1]]
        assert [r["id"] for r in await memory.list(50, "cancelled", None, ids[4])] == [ids[2]]
        assert await memory.list(50, None, None, "job_unknown") == []


async def test_workflow_children_in_step_order(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        workflow = await records.create("workflow", {"steps": 2}, now=now())
        first = await records.create("text-to-image", {"step": 0}, parent_id=workflow.id, now=now())
        second = await records.create("image-to-video", {"step": 1}, parent_id=workflow.id, now=now())
        await records.create("upscale", {}, now=now())  # not a step
        assert [r.id for r in await records.children(workflow.id)] == [first.id, second.id]
        assert [r.id for r in await records.list(parent_id=workflow.id)] == [second.id, first.id]
        assert all(r.parent_id == workflow.id for r in await records.children(workflow.id))
        with pytest.raises(UnknownJob):
            await records.create("upscale", {}, parent_id="job_missing", now=now())


async def test_receipts_by_index(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        job = await records.create("text-to-image", REQUEST, now=now())
        await records.add_receipt(job.id, 0, b"\x00signed receipt 0")
        await records.add_receipt(job.id, 1, b"signed receipt 1")
        await records.update(job.id, state=JobState.SUCCEEDED, now=now())
        assert await records.receipt(job.id, 0) == b"\x00signed receipt 0"
        assert await records.receipt(job.id, 1) == b"signed receipt 1"
        assert await records.receipt(job.id, 2) is None
        with pytest.raises(InvalidRecord, match="already has a receipt 0"):
            await records.add_receipt(job.id, 0, b"other")
        with pytest.raises(UnknownJob):
            await records.add_receipt("job_missing", 0, b"x")
        with pytest.raises(InvalidRecord, match="index"):
            await records.add_receipt(job.id, -1, b"x")
        with pytest.raises(RecordTooLarge):
            await records.add_receipt(job.id, 3, bytes(256 * 1024 + 1))


async def test_records_survive_a_restart_and_unfinished_ones_become_interrupted(tmp_path: Path) -> None:
    now = FakeClock()
    path = tmp_path / "node.db"
    async with open_records(path) as records:
        queued = await records.create("upscale", {}, now=now())
        running = await records.create("text-to-image", REQUEST, now=now())
        tries = [
            {"peer_id": "12D3KooWa", "outcome": "refused:busy", "detail": "busy", "price": None},
            {"peer_id": "12D3KooWb", "outcome": "running", "detail": "running lpnode/tiny-sdxl", "price": None},
        ]
        await records.update(running.id, state=JobState.RUNNING, attempts=tries, now=now())
        done = await records.create("upscale", {}, now=now())
        done = await records.update(done.id, state=JobState.SUCCEEDED, result={"images": []}, now=now())
        await records.add_receipt(done.id, 0, b"receipt")
    async with open_records(path) as records:
        restart = now()
        assert await records.mark_interrupted(restart) == 2
        assert await records.mark_interrupted(now()) == 0
        for job_id in (queued.id, running.id):
            record = await records.get(job_id)
            assert record is not None and record.state is JobState.INTERRUPTED
            assert record.updated_at == restart and record.error == INTERRUPTED_ERROR
        # the try that was running when the node stopped no longer reads as running
        interrupted = await records.get(running.id)
        assert interrupted is not None and [a["outcome"] for a in interrupted.attempts] == [
            "refused:busy",
            "interrupted",
        ]
        assert interrupted.attempts[1]["peer_id"] == "12D3KooWb" and "node stopped" in interrupted.attempts[1]["detail"]
        assert await records.get(done.id) == done
        assert await records.receipt(done.id, 0) == b"receipt"
        with pytest.raises(JobFinished):
            await records.update(running.id, state=JobState.RUNNING, now=now())


async def test_progress_is_answered_at_once_and_persisted_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with open_records(path, progress_interval_s=1.0) as records:
        job = await records.create("text-to-image", REQUEST, now=100.0)
        await records.update(job.id, state=JobState.RUNNING, now=100.0)
        for step, t in ((1, 100.2), (2, 100.4), (3, 101.5), (4, 101.6)):
            progress = {"fraction": step / 10, "step": step, "total": 10, "peer_id": "12D3KooWpeer"}
            answered = await records.update(job.id, progress=progress, now=t)
            assert answered.progress == progress and answered.updated_at == t
            got = await records.get(job.id)
            assert got is not None and got.progress["step"] == step
            listed = await records.list()
            assert listed[0].progress["step"] == step
        # Only step 3 reached the file (first one past the interval); step 4 waits in memory.
        row = await records._store.fetch_one("SELECT progress FROM jobs WHERE id = ?", (job.id,))
        assert row is not None and '"step":3' in row["progress"]
        # A real change carries the held-back progress with it.
        await records.update(job.id, state=JobState.SUCCEEDED, now=102.0)
    async with open_records(path) as records:
        final = await records.get(job.id)
        assert final is not None and final.progress["step"] == 4 and final.state is JobState.SUCCEEDED


async def test_flush_progress_writes_what_memory_holds(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with open_records(path, progress_interval_s=60.0) as records:
        job = await records.create("upscale", {}, now=1.0)
        await records.update(job.id, progress={"fraction": 0.5, "step": 1, "total": 2, "peer_id": None}, now=2.0)
        await records.flush_progress()
    async with open_records(path) as records:
        found = await records.get(job.id)
        assert found is not None and found.progress["fraction"] == 0.5 and found.updated_at == 2.0


async def test_bounds_and_unstorable_values_are_typed_errors(tmp_path: Path) -> None:
    async with open_records(tmp_path / "node.db") as records:
        with pytest.raises(RecordTooLarge, match="request is") as caught:
            await records.create("text-to-image", {"prompt": "x" * MAX_JSON_BYTES}, now=1.0)
        assert caught.value.limit == MAX_JSON_BYTES
        with pytest.raises(InvalidRecord, match="not storable as JSON"):
            await records.create("text-to-image", {"guidance_scale": float("nan")}, now=1.0)
        with pytest.raises(InvalidRecord, match="kind"):
            await records.create("../etc", {}, now=1.0)
        job = await records.create("upscale", {}, now=1.0)
        with pytest.raises(RecordTooLarge, match="result is"):
            await records.update(job.id, result={"blob": "y" * MAX_JSON_BYTES}, now=2.0)
        assert (await records.get(job.id)) == job  # the refused update changed nothing
        assert await records.list() == [job]


async def test_the_request_is_copied_not_aliased(tmp_path: Path) -> None:
    async with open_records(tmp_path / "node.db") as records:
        request = {"prompt": "before"}
        job = await records.create("text-to-image", request, now=1.0)
        request["prompt"] = "after"
        assert job.request == {"prompt": "before"}


async def test_prune_keeps_the_newest_finished_and_every_live_record(tmp_path: Path) -> None:
    now = FakeClock()
    async with open_records(tmp_path / "node.db") as records:
        live = await records.create("upscale", {}, now=now())
        finished = []
        for _ in range(4):
            workflow = await records.create("workflow", {}, now=now())
            step = await records.create("upscale", {}, parent_id=workflow.id, now=now())
            await records.add_receipt(step.id, 0, b"r")
            await records.update(step.id, state=JobState.SUCCEEDED, now=now())
            await records.update(workflow.id, state=JobState.SUCCEEDED, now=now())
            finished.append((workflow.id, step.id))
        assert await records.prune(keep=1) == 3
        remaining = {r.id for r in await records.list(limit=MAX_LIST)}
        assert remaining == {live.id, *finished[-1]}
        assert await records.receipt(finished[0][1], 0) is None


@pytest.mark.slow
async def test_committed_records_survive_kill_9_mid_write(tmp_path: Path) -> None:
    """A real child process writes in a loop; SIGKILL lands while it writes; nothing it reported is lost:
    no committed row, and no output file stored without fsync (``synchronous="NORMAL"``)."""
    path = tmp_path / "node.db"
    outputs = tmp_path / "outputs"
    writer = Path(__file__).with_name("store_kill_writer.py")
    reported_jobs: list[str] = []
    reported_pairs: list[int] = []
    reported_outputs: list[str] = []
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(writer), str(path), str(outputs)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        buffered = b""
        try:
            while len(reported_pairs) < KILL_AFTER_PAIRS:
                chunk = await process.stdout.receive_some()
                assert chunk, f"writer exited early with {await process.wait()}"
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    what, value = line.decode().split()
                    if what == "job":
                        reported_jobs.append(value)
                    elif what == "output":
                        reported_outputs.append(value)
                    else:
                        reported_pairs.append(int(value))
        finally:
            process.kill()  # SIGKILL: no cleanup, no final COMMIT, no WAL checkpoint
            assert await process.wait() == -signal.SIGKILL
            await process.stdout.aclose()

    async with open_store(path, [*JOB_MIGRATIONS, PAIRS_MIGRATION]) as store:
        assert await store.integrity_check() == "ok"
        records = JobRecords(store)
        for job_id in reported_jobs:
            record = await records.get(job_id)
            assert record is not None and record.state is JobState.RUNNING
            assert await records.receipt(job_id, 0) is not None
        rows = await store.fetch_all("SELECT n, count(*) AS halves FROM pairs GROUP BY n", max_rows=100_000)
        halves = {row["n"]: row["halves"] for row in rows}
        assert all(count == 2 for count in halves.values())  # every transaction whole or absent
        assert set(reported_pairs) <= set(halves)
    files = OutputFiles(outputs, max_bytes=1024**3)  # a restart: scans the directory, drops a cut-short temp file
    assert reported_outputs and all(files.get(digest) is not None for digest in reported_outputs)  # get re-hashes
    assert not [p for p in outputs.iterdir() if p.name.startswith(".tmp-")]


async def test_save_inserts_or_replaces_a_record_built_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with open_records(path) as records:
        built = JobRecord.from_json(
            {
                "id": "job_" + "ab" * 12,
                "kind": "workflow",
                "state": "running",
                "created_at": 10.0,
                "updated_at": 11.0,
                "request": {"steps": []},
                "progress": {"fraction": 0.5, "step": 1, "total": 2, "peer_id": None},
                "result": None,
                "error": None,
                "attempts": [],
                "parent_id": None,
            }
        )
        await records.save(built)
        assert await records.get(built.id) == built
        finished = replace(built, state=JobState.SUCCEEDED, updated_at=12.0, result={"steps": [], "outputs": []})
        await records.save(finished)
        await records.save(finished)  # saving the same final record again is harmless
        with pytest.raises(JobFinished):
            await records.save(replace(finished, state=JobState.RUNNING))
        with pytest.raises(InvalidRecord, match="job id"):
            await records.save(replace(built, id="../x"))
        with pytest.raises(InvalidRecord, match="not a job record"):
            JobRecord.from_json({"id": built.id})
    async with open_records(path) as records:
        assert await records.get(built.id) == finished
        assert JobRecord.from_json(finished.to_json()) == finished
