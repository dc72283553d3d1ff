"""A worker stopped cleanly (Ctrl-C) mid-job, between real ``lpnode run`` processes.

Two workers (tiny-sdxl) and a requester. A long job is sent to the first worker (``prefer``);
once it runs there, that worker gets SIGINT. It tells the requester it is shutting down (a typed
``cancelled`` error, not a dropped stream that reads as a crash, QA), and the job completes on the
other worker, once, its record holding both attempts.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from .cluster import exactly, open_cluster, wait_for_peers

pytestmark = pytest.mark.slow

LONG = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 50, "seed": 5, "deadline": 600}


async def test_a_worker_stopped_mid_job_says_so_and_the_job_completes_on_the_other(tmp_path: Path) -> None:
    with trio.fail_after(240):
        async with open_cluster(tmp_path) as nodes:
            requester = await nodes.launch("requester")
            first = await nodes.launch("w1", serve="tiny-sdxl", bootstrap=[requester.addr])
            other = await nodes.launch("w2", serve="tiny-sdxl", bootstrap=[requester.addr])
            await wait_for_peers(requester, exactly({first.peer_id, other.peer_id}), timeout_s=20)
            body = LONG | {"prefer": [first.peer_id], "verification": "none"}
            async with requester.http() as client:
                accepted = await client.post("/text-to-image", json=body, headers={"Prefer": "respond-async"})
                assert accepted.status_code == 202, accepted.text
                location = accepted.headers["location"]
                final: dict[str, Any] = {}
                async with client.stream("GET", location + "/events") as stream:
                    kind, stopped = "", False
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: "):
                            data = json.loads(line[6:])
                            if kind == "progress" and data.get("peer_id") == first.peer_id and not stopped:
                                assert await first.stop(signal.SIGINT) == 0  # Ctrl-C on the worker
                                stopped = True
                            if kind == "done":
                                final = data
            assert stopped and final["state"] == "succeeded", final
            gone, done = final["attempts"]
            assert gone["peer_id"] == first.peer_id and gone["outcome"] == "error:cancelled", gone
            assert "the worker is shutting down" in gone["detail"]
            assert done["peer_id"] == other.peer_id and done["outcome"] == "done"
            # the stopped worker wrote down what it did before its database closed
            with contextlib.closing(sqlite3.connect(first.data_dir / "lpnode.db")) as db:
                rows = db.execute("SELECT outcome, detail, requester_peer_id FROM served").fetchall()
            assert rows == [("abandoned", "the worker is shutting down", requester.peer_id)]
