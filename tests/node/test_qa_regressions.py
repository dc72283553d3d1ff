"""Regressions of the outside QA pass (/tmp/qa/report.md, items N1, N3, N4, N6) on the RPC API.

Real tiny presets on the in-memory network; "no peer contacted" is the hub's stream counter unchanged
and no worker having quoted or run anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.cli_format import job_text, jobs_table
from lpnode.node.job_manager import JobManager
from lpnode.node.network.memory import MemoryHub, open_memory_hub

from .job_fixtures import BOUND_S, Peer, completed, peers, png, sees_models
from .test_rpc_jobs import AUTH, BODY, rpc

UPSCALER = "lpnode/tiny-realesrgan"  # advertises a 512-pixel side


@pytest.fixture
async def pool2() -> AsyncIterator[ModelPool]:
    presets = ("tiny-sdxl", "tiny-realesrgan")
    async with open_model_pool(PoolConfig(serve=presets, pinned=presets, device="cpu")) as pool:
        yield pool


@asynccontextmanager
async def requester_and_worker(pool: ModelPool) -> AsyncIterator[tuple[MemoryHub, Peer, httpx.AsyncClient, JobManager]]:
    """A requester with its RPC API and one worker it has seen, on the in-memory network."""
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, jobs):
            yield hub, worker, client, jobs


async def test_sizes_no_model_takes_are_refused_before_any_peer_is_asked(pool2: ModelPool) -> None:
    """N3: a width off the 8-pixel grid, and an upscale whose output is over every model's side: 422, no stream."""
    async with requester_and_worker(pool2) as (hub, worker, client, _):
        streams = hub.stats.streams_opened
        with trio.fail_after(BOUND_S):
            off_grid = await client.post("/text-to-image", json=BODY | {"width": 65}, headers=AUTH)
            video = await client.post(
                "/image-to-video", files={"image": ("image", png(8, 8))}, data={"height": "100"}, headers=AUTH
            )
            files = {"image": ("image", png(256, 144))}
            too_big = await client.post("/upscale", files=files, data={"scale": "4"}, headers=AUTH)
        assert hub.stats.streams_opened == streams and completed(worker) == [0]
    assert off_grid.status_code == 422 and video.status_code == 422
    assert off_grid.json()["message"] == (
        "body field width: 65 is not a multiple of 8 (diffusion models work in 8-pixel blocks): try 64 or 72"
    )
    assert "body field height: 100 is not a multiple of 8" in video.json()["message"]
    assert too_big.status_code == 422, too_big.text
    # in what the user sent (the input's size and the scale), not a derived width nobody typed
    message = too_big.json()["message"]
    assert "output 1024×576 (input 256×144 × scale 4) exceeds its 512-pixel side" in message
    assert "attempts" not in message and "width=" not in message


async def test_a_non_finite_number_is_refused_as_such() -> None:
    """N6: NaN is not 'more than 50'; infinity neither."""
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[assignment]
        async with rpc(lone.node) as (client, _):
            with trio.fail_after(BOUND_S):
                nan = await client.post(
                    "/text-to-image",
                    content=b'{"prompt": "x", "guidance_scale": NaN}',
                    headers=AUTH | {"content-type": "application/json"},
                )
                inf = await client.post(
                    "/image-to-image", files={"image": ("image", png(8, 8))}, data={"strength": "inf"}, headers=AUTH
                )
    assert (
        nan.status_code == 422 and nan.json()["message"] == "body field guidance_scale: Input should be a finite number"
    )
    assert inf.status_code == 422 and "body field strength: Input should be a finite number" in inf.json()["message"]


async def test_a_running_job_lists_as_it_shows_and_a_cancelled_one_keeps_its_attempt(pool2: ModelPool) -> None:
    """N1: GET /v1/jobs shows a live job's progress and worker; N4: cancelled mid-run, its record names the try."""
    async with requester_and_worker(pool2) as (_, worker, client, jobs):
        with trio.fail_after(BOUND_S):
            # 20 steps: the cancel lands long before the worker could finish
            body = BODY | {"num_images_per_prompt": 1, "num_inference_steps": 20}
            headers = AUTH | {"Prefer": "respond-async"}
            job_id = (await client.post("/text-to-image", json=body, headers=headers)).json()["id"]
            async with jobs.listen(job_id) as listener:
                while (event := await listener.next()).kind != "progress":
                    pass
            listed = (await client.get("/v1/jobs", headers=AUTH)).json()["jobs"]
            running = (await client.get("/v1/jobs?state=running", headers=AUTH)).json()["jobs"]
            cancelled = await client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert event.data["total"] == 20 and event.data["peer_id"] == worker.peer_id
    for records in (listed, running):
        (record,) = records
        assert record["id"] == job_id and record["state"] == "running"
        assert record["progress"]["total"] == 20 and record["progress"]["peer_id"] == worker.peer_id
    final = cancelled.json()
    assert final["state"] == "cancelled"
    assert [(a["peer_id"], a["outcome"]) for a in final["attempts"]] == [(worker.peer_id, "cancelled")]
    assert final["attempts"][0]["detail"].startswith("cancelled while running at step ")


def test_a_job_without_step_counts_shows_no_made_up_steps() -> None:
    """N4: an interrupted job that never reported a step reads 'none reported', not '0% (step 0/0)'."""
    interrupted = {"id": "job_1", "kind": "image-to-video", "state": "interrupted"}
    interrupted["progress"] = {"fraction": 0.0, "step": 0, "total": 0, "peer_id": None}
    assert "progress  none reported" in job_text(interrupted) and "0/0" not in job_text(interrupted)
    assert jobs_table([interrupted]).splitlines()[1].split()[3] == "-"
    running = interrupted | {"progress": {"fraction": 0.15, "step": 3, "total": 20, "peer_id": None}}
    assert "progress  15% (step 3/20)" in job_text(running)


async def test_max_price_below_every_offer_is_a_price_error_not_a_missing_model(pool2: ModelPool) -> None:
    """N6: max_price 0 with the model on offer: 422 saying the cheapest price, no peer asked (was 404 no_candidates)."""
    async with requester_and_worker(pool2) as (hub, worker, client, _):
        streams = hub.stats.streams_opened
        with trio.fail_after(BOUND_S):
            free = await client.post("/text-to-image", json=BODY | {"max_price": 0}, headers=AUTH)
            unknown = await client.post("/text-to-image", json=BODY | {"model_id": "nobody/has-it"}, headers=AUTH)
        assert hub.stats.streams_opened == streams
    assert free.status_code == 422 and free.json()["error"] == "price_below_offers"
    # 64×64 × 2 steps at 100 per megapixel-step: 1 micro-credit
    assert free.json()["message"] == (
        f"no offer fits max_price 0: the cheapest text-to-image offer (lpnode/tiny-sdxl on {worker.peer_id[-12:]}) "
        "prices this job at 1 micro-credits"
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "no_candidates"  # a missing model stays 404


async def test_an_unknown_endpoint_names_the_endpoints() -> None:
    """N6: POST /text-to-video answers JSON naming the pipelines and pointing at /docs, not a bare 'Not Found'."""
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[assignment]
        async with rpc(lone.node) as (client, _):
            with trio.fail_after(BOUND_S):
                missing = await client.post("/text-to-video", json={"prompt": "x"}, headers=AUTH)
                unknown_peer = await client.get("/v1/peers/12D3KooWnobody", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    message = missing.json()["message"]
    assert message.startswith("no endpoint POST /text-to-video on this node; pipelines: /frame-interpolation, ")
    assert "/text-to-image" in message and "/v1/jobs" in message and message.endswith("GET /docs")
    assert "is not in this node's directory" in unknown_peer.json()["message"]  # a route's own 404 keeps its words
