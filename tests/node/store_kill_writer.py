"""Child process of the kill -9 test: writes job records and paired rows forever, reporting each commit.

    python store_kill_writer.py DB_PATH

After every committed write it prints ``job <id>`` or ``pair <n>`` on stdout (flushed), so the
parent knows what the database must hold when it SIGKILLs this process mid-write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from lpnode.node.job_records import JOB_MIGRATIONS, JobRecords, JobState
from lpnode.node.store import Migration, open_store

# Rows written two at a time in one transaction: after the kill their count must be even.
PAIRS_MIGRATION = Migration("killtest", 1, ("CREATE TABLE pairs (n INTEGER NOT NULL, half INTEGER NOT NULL)",))


async def write_forever(path: Path) -> None:
    async with open_store(path, [*JOB_MIGRATIONS, PAIRS_MIGRATION]) as store:
        records = JobRecords(store)
        n = 0
        while True:
            n += 1
            job = await records.create("text-to-image", {"n": n, "prompt": "p" * 200}, now=float(n))
            await records.update(job.id, state=JobState.RUNNING, now=float(n))
            await records.add_receipt(job.id, 0, n.to_bytes(8, "big") * 64)
            print(f"job {job.id}", flush=True)
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO pairs (n, half) VALUES (?, 0)", (n,))
                await tx.execute("INSERT INTO pairs (n, half) VALUES (?, 1)", (n,))
            print(f"pair {n}", flush=True)


if __name__ == "__main__":
    trio.run(write_forever, Path(sys.argv[1]))
