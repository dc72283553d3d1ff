"""QA pass 2 (O7, O10): RPC answers as HTTP means them, and a worker's log line per job it serves.

* 202 answers to ``Prefer: respond-async`` say ``Preference-Applied: respond-async`` (RFC 7240 §3);
* outputs (named by their sha256) are cacheable for good: ``private, max-age=31536000, immutable``;
* a receipt index a known job lacks is ``receipt_not_found``, not ``job_not_found``;
* ``/v1/reputation/<peer>`` for a peer the store knows nothing of is 404 ``peer_not_found``;
* a worker logs one line per job it served (INFO), or failed (WARNING), without the prompt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from lpnode.models.errors import OutOfMemory
from lpnode.models.pool import ModelPool
from lpnode.node.job_book import MemoryRecordBook
from lpnode.node.job_manager import open_job_manager
from lpnode.node.job_requester import JobFailed, run_job
from lpnode.node.job_runner import requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_jobs import OutputStore

from ..reputation.stores import Clock, opened
from .job_fixtures import BOUND_S, MODEL, T2I, Peer, StuckPool, peers, sees_models
from .test_gossip import virtual_wall_clock
from .test_rpc_jobs import AUTH, BODY

WORKER_LOG = "lpnode.node.job_worker"
PROMPT = "a secret lighthouse nobody may read about"


async def test_async_answers_outputs_receipts_and_reputation_say_what_http_means(
    pool: ModelPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    clock = Clock()
    async with (
        open_memory_hub() as hub,
        peers(hub) as start,
        opened(tmp_path / "rep.db", clock) as reputation,
    ):
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        await reputation.note_job(worker.peer_id, "sdxl", 1.0)  # a row for the worker, none for anyone else
        runner = requester_runner(requester.node)
        async with open_job_manager(MemoryRecordBook(), OutputStore(), runner, status_for=status_for) as jobs:
            app = create_app(requester.node, "t", jobs=jobs, reputation=reputation)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=BOUND_S) as client:
                with trio.fail_after(BOUND_S):
                    prefer = AUTH | {"Prefer": "respond-async"}
                    body = BODY | {"num_images_per_prompt": 1, "prompt": PROMPT}
                    accepted = await client.post("/text-to-image", json=body, headers=prefer)
                    job_id = accepted.json()["id"]
                    record = await jobs.wait(job_id)
                    output = await client.get(record["result"]["images"][0]["url"], headers=AUTH)
                    receipt_0 = await client.get(f"/v1/jobs/{job_id}/receipts/0", headers=AUTH)
                    receipt_999 = await client.get(f"/v1/jobs/{job_id}/receipts/999", headers=AUTH)
                    no_job = await client.get("/v1/jobs/job_nobody/receipts/0", headers=AUTH)
                    workflow = {"steps": [{"pipeline": "text-to-image", "params": BODY | {"prompt": PROMPT}}]}
                    workflow["steps"][0]["params"].pop("num_images_per_prompt")
                    for option in ("max_price", "deadline"):
                        workflow["steps"][0]["params"].pop(option)
                    accepted_workflow = await client.post("/v1/workflows", json=workflow, headers=prefer)
                    await jobs.wait(accepted_workflow.json()["id"])
                    known = await client.get(f"/v1/reputation/{worker.peer_id}", headers=AUTH)
                    unknown = await client.get(f"/v1/reputation/{requester.peer_id}", headers=AUTH)
                    served = await client.post("/text-to-image", json=body, headers=AUTH)  # sync: no such header

    for answer in (accepted, accepted_workflow):
        assert answer.status_code == 202, answer.text
        assert answer.headers["preference-applied"] == "respond-async"
    assert served.status_code == 200 and "preference-applied" not in served.headers
    assert record["state"] == "succeeded"
    assert output.status_code == 200
    assert output.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert receipt_0.status_code == 200
    assert receipt_999.status_code == 404 and receipt_999.json()["error"] == "receipt_not_found"
    assert f"job {job_id} has no receipt 999" in receipt_999.json()["message"]
    assert no_job.status_code == 404 and no_job.json()["error"] == "job_not_found"
    assert known.status_code == 200 and known.json()["peer_id"] == worker.peer_id
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"] == "peer_not_found" and requester.peer_id in unknown.json()["message"]

    # one line per job served (three text-to-image jobs: async, workflow step, sync), never the prompt
    lines = [r for r in caplog.records if r.name == WORKER_LOG]
    assert [r.levelno for r in lines] == [logging.INFO] * 3, [r.getMessage() for r in lines]
    first = lines[0].getMessage()
    job = record["result"]["jobs"][0]
    price = job["price"]
    assert first.startswith(f"job {job['job_id'][:12]} for {requester.peer_id[-12:]}: text-to-image {MODEL} done, ")
    assert first.endswith(f" ms, price {price}") and ", run " in first
    assert all(PROMPT not in r.getMessage() and "lighthouse" not in r.getMessage() for r in lines)


class OutOfMemoryPool(StuckPool):
    """Serves tiny-sdxl; every run fails as a GPU out of memory would."""

    async def run(self, model: str, request: object, *, progress: object = None) -> None:
        self.running.set()
        raise OutOfMemory("CUDA out of memory (tried to allocate 1 GiB)")


async def test_a_job_that_fails_on_the_worker_is_one_warning_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    async with open_memory_hub() as hub, peers(hub, virtual_wall_clock) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=OutOfMemoryPool())  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        with pytest.raises(JobFailed, match="out_of_memory"):
            await run_job(requester.node, T2I, max_price=10_000, deadline_s=20)
        # the worker logs when its handler ends, which may come after the requester read the error
        for _ in range(100):  # bounded: without the line this must fail, not spin (the clock stands still here)
            if [r for r in caplog.records if r.name == WORKER_LOG]:
                break
            await trio.testing.wait_all_tasks_blocked()
    lines = [r for r in caplog.records if r.name == WORKER_LOG]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert (
        f"for {requester.peer_id[-12:]}: text-to-image {MODEL} failed (error:out_of_memory), run 0 ms, quoted "
        in message
    )
    assert message.endswith(": CUDA out of memory (tried to allocate 1 GiB)")
    assert "lighthouse" not in message
