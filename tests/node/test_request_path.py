"""The requester's thin request path: outputs stored once-hashed in one batch, few record writes.

Real SQLite files and output directories, the in-memory network with a real tiny preset.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from lpnode.models.pool import ModelPool
from lpnode.node.job_manager import Record, open_job_manager, requester_runner
from lpnode.node.job_records import JOB_MIGRATIONS, InvalidRecord, JobRecords, JobState
from lpnode.node.job_storage import FileOutputs, StoredRecords, open_job_storage
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.output_files import OutputFiles
from lpnode.node.rpc import status_for
from lpnode.node.rpc_job_bodies import TextToImageBody, prepare
from lpnode.node.store import StoreError, open_store
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, MODEL, Peer, peers, sees_models

PNG = b"\x89PNG\r\n\x1a\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CountingFiles(OutputFiles):
    """Real output files that count their directory fsyncs."""

    directory_syncs = 0

    def _fsync_directory(self) -> None:
        self.directory_syncs += 1
        super()._fsync_directory()


def test_a_verified_batch_is_stored_with_one_directory_sync(tmp_path: Path) -> None:
    files = CountingFiles(tmp_path, max_bytes=10_000, synchronous="FULL")  # NORMAL syncs nothing
    blobs = [PNG + bytes([n]) * 100 for n in range(3)]
    entries = files.put_verified([(sha(b), "image/png", b) for b in blobs])
    assert [e.sha256 for e in entries] == [sha(b) for b in blobs] and files.directory_syncs == 1
    assert [files.get(sha(b)) for b in blobs] == [("image/png", b) for b in blobs]
    files.put_verified([(sha(blobs[0]), "image/png", blobs[0])])  # already there: no write, no sync
    assert files.directory_syncs == 1 and len(files) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # after a restart the batch is there, as written
    assert OutputFiles(tmp_path, max_bytes=10_000).get(sha(blobs[2])) == ("image/png", blobs[2])


def test_a_wrong_vouched_hash_is_never_served(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, max_bytes=10_000)
    files.put_verified([(sha(b"other bytes"), "image/png", PNG)])  # the caller's promise was false
    assert files.get(sha(b"other bytes")) is None and len(files) == 0
    assert not list(tmp_path.iterdir())


async def test_final_record_and_receipts_commit_together(tmp_path: Path) -> None:
    async with open_store(tmp_path / "node.db", JOB_MIGRATIONS) as store:
        records = JobRecords(store)
        job = await records.create("text-to-image", {}, now=1.0, state=JobState.RUNNING)
        assert job.state is JobState.RUNNING and (await records.get(job.id)) == job
        with pytest.raises(InvalidRecord):
            await records.create("text-to-image", {}, now=1.0, state=JobState.SUCCEEDED)
        with pytest.raises(InvalidRecord, match="already has one of receipts"):  # index 0 twice
            await records.update(job.id, state=JobState.SUCCEEDED, receipts=[(0, b"r0"), (0, b"again")], now=2.0)
        # rolled back as a whole: still running, no receipt
        assert (await records.get(job.id)).state is JobState.RUNNING  # type: ignore[union-attr]
        assert await records.receipt(job.id, 0) is None
        done = await records.update(job.id, state=JobState.SUCCEEDED, receipts=[(0, b"r0"), (1, b"r1")], now=3.0)
        assert done.state is JobState.SUCCEEDED
        assert [await records.receipt(job.id, n) for n in (0, 1)] == [b"r0", b"r1"]


class CountingRecords(StoredRecords):
    """Real SQLite records that log each write the manager makes."""

    writes: list[str]

    async def create(
        self,
        kind: str,
        request: Record,
        parent_id: str | None,
        now: float,
        state: str = "queued",
        *,
        job_id: str | None = None,
    ) -> Record:
        self.writes.append(f"create {state}")
        return await super().create(kind, request, parent_id, now, state, job_id=job_id)

    async def update(self, record: Record, now: float, receipts: Any = ()) -> None:
        self.writes.append(f"update {record['state']} +{len(receipts)} receipts")
        await super().update(record, now, receipts)

    async def add_receipt(self, job_id: str, n: int, receipt: bytes) -> None:
        self.writes.append("receipt")
        await super().add_receipt(job_id, n, receipt)


@asynccontextmanager
async def requester_with_a_worker(
    pool: ModelPool, tmp_path: Path
) -> AsyncIterator[tuple[Peer, StoredRecords, FileOutputs]]:
    """A requester that sees one worker (the in-memory network), and the requester's real job storage."""
    async with (
        open_memory_hub() as hub,
        peers(hub) as start,
        open_job_storage(tmp_path, 1 << 24, now=0.0) as (stored, outputs),
    ):
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        yield requester, stored, outputs


def lighthouse(seed: int) -> TextToImageBody:
    return TextToImageBody(
        prompt="a lighthouse", model_id=MODEL, width=64, height=64, num_inference_steps=2, seed=seed, deadline=BOUND_S
    )


@pytest.mark.parametrize("saved_first", [True, False], ids=["saved-first", "saved-beside-the-job"])
async def test_a_network_job_costs_two_record_writes_and_one_output_batch(
    pool: ModelPool, tmp_path: Path, saved_first: bool
) -> None:
    """Whether the record's first write comes before the job (an async request) or beside it (a sync one),
    the record is written twice, in that order, and the answer's receipts can be read at once."""
    body = lighthouse(3)
    async with requester_with_a_worker(pool, tmp_path) as (requester, stored, _outputs):
        records = CountingRecords(stored._records, stored.store)
        records.writes = []
        files = CountingFiles(tmp_path / "outputs", max_bytes=1 << 24, synchronous="FULL")  # syncs count batches
        runner = requester_runner(requester.node)
        async with open_job_manager(records, FileOutputs(files), runner, status_for=status_for) as manager:
            with trio.fail_after(BOUND_S):
                job_id = await manager.submit(
                    prepare(body.model_copy(update={"num_images_per_prompt": 2}), {}, 1 << 20), saved_first=saved_first
                )
                result = (await manager.wait_result(job_id))["result"]
                receipts = [await manager.receipt(job_id, n) for n in (0, 1)]  # saved or not yet
            assert (await manager.get(job_id))["state"] == "succeeded"
        assert (await records.get(job_id) or {})["state"] == "succeeded"  # the manager's exit waited for the save
    assert records.writes == ["create running", "update succeeded +2 receipts"]
    assert files.directory_syncs == 1 and len(files) == 2
    signed = [verify_receipt(r).outputs[0].sha256 for r in receipts]
    assert [image["url"].rsplit("/", 1)[-1] for image in result["images"]] == signed
    assert [files.get(s) is not None for s in signed] == [True, True]


class GatedRecords(StoredRecords):
    """Real SQLite records whose updates wait for ``gate``: the final save is under way for as long as a test likes."""

    gate: trio.Event

    async def update(self, record: Record, now: float, receipts: Any = ()) -> None:
        await self.gate.wait()
        await super().update(record, now, receipts)


async def test_a_sync_answer_does_not_wait_for_the_final_save(pool: ModelPool, tmp_path: Path) -> None:
    """The answer, the live record and the receipts are there while the record's final save is still under way."""
    body = lighthouse(4)
    async with requester_with_a_worker(pool, tmp_path) as (requester, stored, outputs):
        records = GatedRecords(stored._records, stored.store)
        records.gate = trio.Event()
        runner = requester_runner(requester.node)
        async with open_job_manager(records, outputs, runner, status_for=status_for) as manager:
            with trio.fail_after(BOUND_S):
                job_id = await manager.submit(prepare(body, {}, 1 << 20), saved_first=False)
                result = await manager.wait_result(job_id)
            assert (await records.get(job_id) or {})["state"] == "running"  # the save has not landed
            assert (await manager.get(job_id))["state"] == "succeeded"
            receipt = verify_receipt(await manager.receipt(job_id, 0))
            url = result["result"]["images"][0]["url"]
            assert url.endswith(receipt.outputs[0].sha256) and await outputs.get(receipt.outputs[0].sha256)
            records.gate.set()
            await manager.wait(job_id)
        saved = await records.get(job_id) or {}
        assert saved["state"] == "succeeded" and saved["result"] == result["result"]
        assert await records.receipt(job_id, 0) == await manager.receipt(job_id, 0)


class BrokenRecords(StoredRecords):
    """Real SQLite records whose first write fails, as on a full disk."""

    async def create(self, *args: Any, **kwargs: Any) -> Record:
        raise StoreError("database or disk is full")


async def test_a_job_whose_record_cannot_be_written_fails_with_the_stores_error(tmp_path: Path) -> None:
    """Written beside the job, a failed first write still fails the request, as it did when it came first."""

    async def never_ends(*_: object) -> Any:
        await trio.sleep_forever()

    async with open_job_storage(tmp_path, 1 << 24, now=0.0) as (stored, outputs):
        records = BrokenRecords(stored._records, stored.store)
        async with open_job_manager(records, outputs, never_ends, status_for=status_for) as manager:
            with trio.fail_after(BOUND_S):
                job_id = await manager.submit(
                    prepare(TextToImageBody(prompt="x", model_id=MODEL), {}, 1 << 20), saved_first=False
                )
                with pytest.raises(StoreError, match="disk is full") as failure:
                    await manager.wait_result(job_id)
        assert await stored.get(job_id) is None  # nothing half-written
    assert status_for(failure.value) == 500
