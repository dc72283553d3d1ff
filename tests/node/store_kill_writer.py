"""Child process of the kill -9 test: writes job records, outputs and paired rows forever, reporting each.

    python store_kill_writer.py DB_PATH OUTPUTS_DIR

After every committed write it prints ``output <sha256>``, ``job <id>`` or ``pair <n>`` on stdout
(flushed), so the parent knows what the database and the outputs directory must hold when it
SIGKILLs this process mid-write. Outputs are stored as the node stores them by default
(``synchronous="NORMAL"``: no fsync), pairs alternately through ``Store.transaction`` and
``Store.atomic``.
"""

from __future__ import annotations

import hashlib
import sys
from functools import partial
from pathlib import Path

import trio
from lpnode.node.job_records import JOB_MIGRATIONS, JobRecords, JobState
from lpnode.node.output_files import OutputFiles
from lpnode.node.store import Migration, SyncTransaction, open_store

# Rows written two at a time in one transaction: after the kill their count must be even.
PAIRS_MIGRATION = Migration("killtest", 1, ("CREATE TABLE pairs (n INTEGER NOT NULL, half INTEGER NOT NULL)",))


def output_bytes(n: int) -> bytes:
    """The ``n``-th output: a few KiB, different for every n."""
    return n.to_bytes(8, "big") * 512


def add_pair(tx: SyncTransaction, *, n: int) -> None:
    tx.execute("INSERT INTO pairs (n, half) VALUES (?, 0)", (n,))
    tx.execute("INSERT INTO pairs (n, half) VALUES (?, 1)", (n,))


async def write_forever(path: Path, outputs_dir: Path) -> None:
    files = OutputFiles(outputs_dir, max_bytes=1024**3)
    async with open_store(path, [*JOB_MIGRATIONS, PAIRS_MIGRATION]) as store:
        records = JobRecords(store)
        n = 0
        while True:
            n += 1
            data = output_bytes(n)
            digest = hashlib.sha256(data).hexdigest()
            await trio.to_thread.run_sync(files.put_verified, [(digest, "image/png", data)])
            print(f"output {digest}", flush=True)
            job = await records.create("text-to-image", {"n": n, "prompt": "p" * 200}, now=float(n))
            await records.update(job.id, state=JobState.RUNNING, now=float(n))
            await records.add_receipt(job.id, 0, n.to_bytes(8, "big") * 64)
            print(f"job {job.id}", flush=True)
            if n % 2:
                async with store.transaction() as tx:
                    await tx.execute("INSERT INTO pairs (n, half) VALUES (?, 0)", (n,))
                    await tx.execute("INSERT INTO pairs (n, half) VALUES (?, 1)", (n,))
            else:
                await store.atomic(partial(add_pair, n=n))
            print(f"pair {n}", flush=True)


if __name__ == "__main__":
    trio.run(write_forever, Path(sys.argv[1]), Path(sys.argv[2]))
