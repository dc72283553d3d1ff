#!/usr/bin/env python3
"""The requester's bookkeeping per job: SQLite statements, job records and output files, timed one by one.

What a job's answer path pays besides the network, measured in this process on a real file:

* **Store.execute**: one UPDATE of one row, committed on its own.
* **Store.transaction, 2 statements**: BEGIN IMMEDIATE, UPDATE..RETURNING + fetch, UPDATE, COMMIT
  through the async transaction handle.
* **Store.atomic, 2 statements**: the same two statements as one sync function (skipped on a
  tree that has no ``Store.atomic``).
* **JobRecords.create**: a new record, as the job manager admits a job.
* **JobRecords.update, succeeded + receipt**: a running record's final save with its result,
  attempts, progress and one signed receipt (3 KiB), as ``StoredRecords.update`` does it.
* **OutputFiles.put_verified**: one output of ``--output-kb`` kB (a 512² PNG is 653 kB), new bytes
  each time, hash given; under each durability the tree knows (``synchronous="NORMAL"``: temp file
  and rename; ``"FULL"``: fsync of the file and the directory too; a tree without the setting
  always does the latter and shows as ``FULL``).

Each figure is the median (and 90th percentile) of ``--runs`` calls after a few warm-up calls,
timed with ``time.perf_counter`` around the awaited call. The store rows run on each
``--backend``: ``aiosqlite`` (the node's: SQLite on aiosqlite's thread behind trio-asyncio) and
``inline`` (sqlite3 in the trio thread, the simulator's). Files go to a fresh directory under
``--dir`` (the filesystem decides what an fsync costs), removed afterwards.

    python bench/store.py                          # 300 runs, both backends, files under the temp dir
    python bench/store.py --runs 100 --backend aiosqlite --dir /var/lib/lpnode
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from lpnode.node.job_records import JOB_MIGRATIONS, JobRecords, JobState
from lpnode.node.output_files import OutputFiles
from lpnode.node.store import Migration, Store, open_store

WARMUP = 10
ROWS = Migration("bench", 1, ("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, a TEXT NOT NULL)",))
REQUEST = {"prompt": "a red fox in the snow, photograph", "model_id": "sdxl-turbo", "seed": 7, "width": 512}
RESULT = {"images": [{"url": "/v1/outputs/" + "ab" * 32, "seed": 7, "nsfw": False}], "jobs": [], "request_id": "x"}
ATTEMPTS = [{"peer_id": "12D3KooW" + "x" * 44, "outcome": "ok", "started_at": 1.0, "ended_at": 1.2}]
RECEIPT = bytes(range(256)) * 12  # a signed receipt is a few KiB


def _row(name: str, backend: str, samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"| {name} | {backend} | {statistics.median(ordered):.3f} | {p90:.3f} |"


async def _timed(
    runs: int, call: Callable[[int], Awaitable[Any]], prepare: Callable[[int], Awaitable[Any]]
) -> list[float]:
    """Milliseconds of ``call(i)`` for each run; ``prepare(i)`` (untimed) first."""
    samples: list[float] = []
    for i in range(-WARMUP, runs):
        await prepare(i)
        start = time.perf_counter()
        await call(i)
        elapsed = (time.perf_counter() - start) * 1000
        if i >= 0:
            samples.append(elapsed)
    return samples


async def _nothing(_: int) -> None:
    return None


async def _store_rows(store: Store, runs: int, backend: str) -> list[str]:
    rows: list[str] = []
    await store.execute("INSERT INTO bench_rows (id, a) VALUES (1, 'x')")

    async def execute(i: int) -> None:
        await store.execute("UPDATE bench_rows SET a = ? WHERE id = 1", (str(i),))

    async def transaction(i: int) -> None:
        async with store.transaction() as tx:
            await tx.fetch_one("UPDATE bench_rows SET a = ? WHERE id = 1 RETURNING a", (str(i),))
            await tx.execute("UPDATE bench_rows SET a = ? WHERE id = 1", (str(i),))

    rows.append(_row("Store.execute (UPDATE)", backend, await _timed(runs, execute, _nothing)))
    rows.append(_row("Store.transaction, 2 statements", backend, await _timed(runs, transaction, _nothing)))
    atomic = getattr(store, "atomic", None)
    if atomic is not None:

        def two(tx: Any, i: int) -> None:
            tx.fetch_one("UPDATE bench_rows SET a = ? WHERE id = 1 RETURNING a", (str(i),))
            tx.execute("UPDATE bench_rows SET a = ? WHERE id = 1", (str(i),))

        async def one_hop(i: int) -> None:
            await atomic(lambda tx: two(tx, i))

        rows.append(_row("Store.atomic, 2 statements", backend, await _timed(runs, one_hop, _nothing)))

    records = JobRecords(store)
    running: list[str] = []

    async def create(i: int) -> None:
        record = await records.create("text-to-image", REQUEST, now=1000.0 + i, state=JobState.RUNNING)
        running.append(record.id)

    rows.append(_row("JobRecords.create", backend, await _timed(runs, create, _nothing)))

    async def update(i: int) -> None:
        await records.update(
            running[i + WARMUP],
            state=JobState.SUCCEEDED,
            result=RESULT,
            error=None,
            attempts=ATTEMPTS,
            progress={"fraction": 1.0, "step": 1, "total": 1, "peer_id": None},
            receipts=[(0, RECEIPT)],
            now=2000.0 + i,
        )

    rows.append(_row("JobRecords.update (succeeded + receipt)", backend, await _timed(runs, update, _nothing)))
    return rows


async def _file_rows(directory: Path, runs: int, output_bytes: int) -> list[str]:
    rows: list[str] = []
    blob = bytearray(hashlib.sha256(b"bench").digest() * (output_bytes // 32 + 1))[:output_bytes]
    knows_durability = "synchronous" in inspect.signature(OutputFiles).parameters
    for synchronous in ("NORMAL", "FULL") if knows_durability else ("FULL",):
        kwargs: dict[str, Any] = {"synchronous": synchronous} if knows_durability else {}
        files = OutputFiles(directory / synchronous.lower(), 4 * 1024**3, **kwargs)
        name = f"OutputFiles.put_verified ({output_bytes // 1000} kB, {synchronous})"
        rows.append(_row(name, "files", await _time_puts(files, blob, runs)))
    return rows


async def _time_puts(files: OutputFiles, blob: bytearray, runs: int) -> list[float]:
    batch: list[tuple[str, str, bytes]] = []

    async def prepare(i: int) -> None:
        blob[:8] = (i + WARMUP).to_bytes(8, "big")  # new bytes each time: never "already stored"
        data = bytes(blob)
        batch[:] = [(hashlib.sha256(data).hexdigest(), "image/png", data)]

    async def put(_: int) -> None:
        files.put_verified(batch)

    return await _timed(runs, put, prepare)


async def _main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="lpnode-bench-store-", dir=args.dir))
    try:
        print(f"python {platform.python_version()}, {platform.platform()}, files in {base}", file=sys.stderr)
        print("| what | backend | median ms | p90 ms |")
        print("|---|---|---:|---:|")
        backends = ["aiosqlite", "inline"] if args.backend == "both" else [args.backend]
        for backend in backends:
            async with open_store(base / f"{backend}.db", [*JOB_MIGRATIONS, ROWS], backend=backend) as store:
                for line in await _store_rows(store, args.runs, backend):
                    print(line, flush=True)
        for line in await _file_rows(base / "outputs", args.runs, args.output_kb * 1000):
            print(line, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="timed calls per row, after 10 warm-up calls")
    parser.add_argument("--backend", choices=["aiosqlite", "inline", "both"], default="both")
    parser.add_argument("--dir", type=Path, default=None, help="where the database and files go (default: temp dir)")
    parser.add_argument("--output-kb", type=int, default=653, help="size of one output file, kB (default 653)")
    args = parser.parse_args()
    if args.runs < 1 or args.output_kb < 1:
        parser.error("--runs and --output-kb must be positive")
    trio.run(_main, args)


if __name__ == "__main__":
    main()
