"""Async jobs between real ``lpnode run`` processes: SSE progress, cancel mid-run, records across a restart.

One worker (tiny-sdxl) and one requester. A long job (many steps at the
preset's largest size) is submitted with ``Prefer: respond-async``; its event
stream is read over real HTTP until the first progress event, then the job is
cancelled: the record says ``cancelled``, the stream ends with ``done``, and the
worker's advert shows its queue empty again. A finished job's record and output
survive a restart of the requester; a job running when the requester was
killed is ``interrupted`` after it comes back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .cluster import launch_pair, open_cluster, wait_for_peers

pytestmark = pytest.mark.slow

QUICK = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3, "deadline": 60}
# the worker refuses what its measured speed says it cannot finish in time: a long deadline (the job is cancelled)
LONG = QUICK | {"width": 256, "height": 256, "num_inference_steps": 50, "deadline": 3600}


async def test_async_job_streams_progress_cancels_and_records_survive_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(240):
        async with open_cluster(tmp_path) as nodes:
            pair = await launch_pair(nodes, serve="tiny-sdxl", timeout_s=30)
            requester, worker = pair.requester, pair.worker
            async with requester.http() as client:
                done = (await client.post("/text-to-image", json=QUICK)).json()
                accepted = await client.post("/text-to-image", json=LONG, headers={"Prefer": "respond-async"})
                assert accepted.status_code == 202, accepted.text
                location = accepted.headers["location"]
                events: list[tuple[str, dict[str, Any]]] = []
                async with client.stream("GET", location + "/events") as stream:
                    kind = ""
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: "):
                            events.append((kind, json.loads(line[6:])))
                            if kind == "progress" and not any(k == "progress" for k, _ in events[:-1]):
                                cancelled = await client.delete(location)
                # the worker dropped the run: its advert's queue is empty again
                await wait_for_peers(
                    requester,
                    lambda ps: any(p["peer_id"] == worker.peer_id and p["queue_depth"] == 0 for p in ps),
                    timeout_s=20,
                    what="the worker's queue empty",
                )
                # a job running when the requester dies ...
                interrupted = await client.post("/text-to-image", json=LONG, headers={"Prefer": "respond-async"})
                running_record = interrupted.json()["id"]
                async with client.stream("GET", f"/v1/jobs/{running_record}/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("event: progress"):
                            break
            requester.kill()
            await requester.process.wait()
            again = await nodes.restart(requester)
            assert again.peer_id == requester.peer_id  # the same identity, from the same data dir
            async with again.http() as client:
                old = (await client.get(f"/v1/jobs/{done['request_id']}")).json()
                image = await client.get(done["images"][0]["url"])
                receipt = await client.get(f"/v1/jobs/{done['request_id']}/receipt")
                after_kill = (await client.get(f"/v1/jobs/{running_record}")).json()
                was_cancelled = (await client.get(location)).json()
    assert "cancelled" in locals(), f"no progress before the end: {events[-1]}"
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert events[0] in (("state", {"state": "queued"}), ("state", {"state": "running"}))
    assert events[-1][0] == "done" and events[-1][1]["state"] == "cancelled"
    assert ("state", {"state": "cancelled"}) in events
    assert old["state"] == "succeeded" and image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert receipt.status_code == 200 and receipt.content
    assert after_kill["state"] == "interrupted"
    assert was_cancelled["state"] == "cancelled"


async def test_a_sync_request_whose_client_leaves_is_cancelled_with_its_job(tmp_path: Path) -> None:
    # the server does not cancel a handler whose client left: a killed curl's job ran on to the end (QA s11)
    with trio.fail_after(240):
        async with open_cluster(tmp_path) as nodes:
            pair = await launch_pair(nodes, serve="tiny-sdxl", timeout_s=30)
            async with pair.requester.http() as client:
                assert (await client.post("/text-to-image", json=QUICK)).status_code == 200  # the worker is warm
                # the client gives up after 1 s, as a killed curl does, on a job of 50 steps at 256²
                with pytest.raises(httpx.TimeoutException):
                    await client.post("/text-to-image", json=LONG, timeout=1.0)
                [left] = (await client.get("/v1/jobs", params={"limit": 1})).json()["jobs"]
                async with client.stream("GET", f"/v1/jobs/{left['id']}/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("event: done"):
                            break
                record = (await client.get(f"/v1/jobs/{left['id']}")).json()
    assert record["request"]["num_inference_steps"] == 50 and record["state"] == "cancelled", record
