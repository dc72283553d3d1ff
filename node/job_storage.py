"""Where the job manager keeps things on a real node: records in SQLite, outputs as files.

Adapters from the store engineer's :class:`JobRecords` and :class:`OutputFiles`
to the manager's :class:`RecordBook` and :class:`OutputSink`: the manager speaks
the API's record dicts; file I/O runs off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio
from lpnode.node.job_book import Record
from lpnode.node.job_records import JOB_MIGRATIONS, JobRecords, JobState
from lpnode.node.output_files import OutputFiles, Verified
from lpnode.node.store import Migration, Store, Synchronous, open_store

DATABASE_FILE = "lpnode.db"
OUTPUTS_DIR = "outputs"


class StoredRecords:
    """:class:`RecordBook` over :class:`JobRecords`."""

    def __init__(self, records: JobRecords, store: Store | None = None) -> None:
        self._records = records
        self.store = store  # the node's database, shared with other components (the reputation store)

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
        created = await self._records.create(
            kind, request, parent_id=parent_id, now=now, state=JobState(state), job_id=job_id
        )
        return created.to_json()

    async def update(self, record: Record, now: float, receipts: Sequence[tuple[int, bytes]] = ()) -> None:
        await self._records.update(
            record["id"],
            state=JobState(record["state"]),
            result=record["result"],
            error=record["error"],
            attempts=record["attempts"],
            progress=record["progress"],
            receipts=receipts,
            now=now,
        )

    async def get(self, job_id: str) -> Record | None:
        found = await self._records.get(job_id)
        return None if found is None else found.to_json()

    async def list(
        self, limit: int, state: str | None, parent_id: str | None = None, before: str | None = None
    ) -> list[Record]:
        rows = await self._records.list(
            limit=limit, state=None if state is None else JobState(state), parent_id=parent_id, before=before
        )
        return [row.to_json() for row in rows]

    async def add_receipt(self, job_id: str, n: int, receipt: bytes) -> None:
        await self._records.add_receipt(job_id, n, receipt)

    async def receipt(self, job_id: str, n: int) -> bytes | None:
        return await self._records.receipt(job_id, n)

    async def mark_interrupted(self, now: float) -> int:
        return await self._records.mark_interrupted(now)


# Without fsync, writing this much into the page cache costs less than the hop to a thread and back
# (653 kB: 0.26 ms in place, 0.45-0.57 ms through trio.to_thread on the dev box); past it, or with
# fsyncs, the event loop must not wait on the disk.
INLINE_WRITE_MAX_BYTES = 2 * 1024 * 1024


class FileOutputs:
    """:class:`OutputSink` over :class:`OutputFiles`, its disk work in a thread (small writes without
    fsync in place: :data:`INLINE_WRITE_MAX_BYTES`)."""

    def __init__(self, files: OutputFiles) -> None:
        self._files = files

    async def put(self, sha256: str, media_type: str, data: bytes) -> None:
        await trio.to_thread.run_sync(self._files.put, sha256, media_type, data)

    async def put_verified(self, outputs: Sequence[Verified]) -> None:
        if self._files.synchronous == "NORMAL" and sum(len(data) for _, _, data in outputs) <= INLINE_WRITE_MAX_BYTES:
            await trio.lowlevel.checkpoint()
            self._files.put_verified(outputs)
            return
        await trio.to_thread.run_sync(self._files.put_verified, outputs)

    async def get(self, sha256: str) -> tuple[str, bytes] | None:
        found: tuple[str, bytes] | None = await trio.to_thread.run_sync(self._files.get, sha256)
        return found


@asynccontextmanager
async def open_job_storage(
    data_dir: Path,
    outputs_max_bytes: int,
    now: float,
    *,
    extra_migrations: Sequence[Migration] = (),
    synchronous: Synchronous = "NORMAL",
) -> AsyncIterator[tuple[StoredRecords, FileOutputs]]:
    """Records in ``<data_dir>/lpnode.db`` (unfinished ones marked interrupted) and outputs in ``<data_dir>/outputs``.

    ``extra_migrations``: other components' schemas in the same database (``records.store``).
    ``synchronous``: how durable both are, one rule for the two (:func:`open_store`,
    :class:`OutputFiles`): ``"NORMAL"`` survives a killed process, ``"FULL"`` a power cut too.
    """
    async with open_store(
        data_dir / DATABASE_FILE, [*JOB_MIGRATIONS, *extra_migrations], synchronous=synchronous
    ) as store:
        records = StoredRecords(JobRecords(store), store)
        await records.mark_interrupted(now)  # whatever ran when the node last stopped did not finish
        files = await trio.to_thread.run_sync(
            partial(OutputFiles, data_dir / OUTPUTS_DIR, outputs_max_bytes, synchronous=synchronous)
        )
        yield records, FileOutputs(files)


__all__ = ["DATABASE_FILE", "OUTPUTS_DIR", "FileOutputs", "StoredRecords", "open_job_storage"]
