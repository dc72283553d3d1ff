"""The pipeline endpoints on a requester's RPC app, on the in-memory network with real tiny presets.

Livepeer's request and response shapes, multipart inputs, verified outputs
served by hash, records and receipts under ``/v1/jobs``, async submission with
server-sent events, and the faults answered before any peer is asked (413,
422) or by the network (404 listing the offers).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.daemon import Node
from lpnode.node.job_manager import JobManager, MemoryRecordBook, open_job_manager, requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_jobs import OutputStore
from lpnode.protocol.receipts import verify_receipt
from PIL import Image

from .job_fixtures import BOUND_S, MODEL, Peer, peers, png, sees_models

AUTH = {"Authorization": "Bearer t"}
BODY = {
    "prompt": "a lighthouse at dusk",
    "model_id": MODEL,
    "width": 64,
    "height": 64,
    "guidance_scale": 0.0,
    "num_inference_steps": 2,
    "seed": 5,
    "num_images_per_prompt": 2,
    "max_price": 100,
    "deadline": BOUND_S,
}
ALL_TINY = ("tiny-sdxl", "tiny-svd", "tiny-realesrgan", "tiny-rife")
OPTIONS = {"max_price": "1000000", "deadline": str(BOUND_S)}


@pytest.fixture
async def pool4() -> AsyncIterator[ModelPool]:
    """One worker's pool with a tiny preset for every pipeline."""
    async with open_model_pool(PoolConfig(serve=ALL_TINY, pinned=ALL_TINY, device="cpu")) as pool:
        yield pool


@asynccontextmanager
async def rpc(node: Node, max_input_bytes: int = 1 << 20) -> AsyncIterator[tuple[httpx.AsyncClient, JobManager]]:
    """An HTTP client for ``node``'s RPC app with a job manager (in-memory records and outputs)."""
    runner = requester_runner(node)
    async with open_job_manager(MemoryRecordBook(), OutputStore(), runner, status_for=status_for) as jobs:
        app = create_app(node, "t", jobs=jobs, max_input_bytes=max_input_bytes)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=BOUND_S) as client:
            yield client, jobs


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_text_to_image_through_the_rpc_api(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            with trio.fail_after(BOUND_S):
                answer = await client.post("/text-to-image", json=BODY, headers=AUTH)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                images = [(await client.get(image["url"], headers=AUTH)) for image in body["images"]]
                shouted = await client.get(
                    body["images"][0]["url"].upper().replace("/V1/OUTPUTS/", "/v1/outputs/"), headers=AUTH
                )
                record = (await client.get(f"/v1/jobs/{body['request_id']}", headers=AUTH)).json()
                receipt_1 = await client.get(f"/v1/jobs/{body['request_id']}/receipts/1", headers=AUTH)
                unknown = await client.post("/text-to-image", json=BODY | {"model_id": "nobody/has-this"}, headers=AUTH)
                invalid = await client.post("/text-to-image", json=BODY | {"width": 4}, headers=AUTH)
                missing = await client.get("/v1/outputs/" + "0" * 64, headers=AUTH)
                unauthorized = await client.post("/text-to-image", json=BODY)
                listed = (await client.get("/v1/jobs?state=succeeded", headers=AUTH)).json()
    assert [image["seed"] for image in body["images"]] == [5, 6]
    assert all(image["nsfw"] is False for image in body["images"])
    for response, job in zip(images, body["jobs"], strict=True):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        receipt = verify_receipt(base64.b64decode(job["receipt"]))
        assert receipt.outputs[0].sha256 == hashlib.sha256(response.content).hexdigest()
        assert job["worker_peer_id"] == worker.peer_id and job["attempts"][-1]["outcome"] == "done"
    assert record["kind"] == "text-to-image" and record["state"] == "succeeded" and record["result"] == body
    assert record["request"]["prompt"] == BODY["prompt"] and record["progress"]["fraction"] == 1.0
    assert (
        shouted.status_code == 200 and shouted.content == images[0].content
    )  # a hash in capitals names the same bytes
    assert receipt_1.content == base64.b64decode(body["jobs"][1]["receipt"])
    assert receipt_1.headers["content-type"] == "application/octet-stream"
    assert unknown.status_code == 404 and "text-to-image lpnode/tiny-sdxl" in unknown.json()["message"]
    assert invalid.status_code == 422
    assert missing.status_code == 404
    assert unauthorized.status_code == 401
    assert [job["id"] for job in listed["jobs"]] == [body["request_id"]]


async def test_every_file_pipeline_through_multipart(pool4: ModelPool) -> None:
    """Image-to-image, upscale, image-to-video and frame interpolation, each on the output of the one before."""
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool4)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):

            async def post(path: str, name: str, data: bytes, fields: dict[str, str]) -> tuple[dict[str, Any], bytes]:
                files = {name: (name, data, "application/octet-stream")}
                answer = await client.post(path, files=files, data=OPTIONS | fields, headers=AUTH)
                assert answer.status_code == 200, answer.text
                result = answer.json()
                media = await client.get(result["images"][0]["url"], headers=AUTH)
                receipt = verify_receipt(base64.b64decode(result["jobs"][0]["receipt"]))
                assert receipt.outputs[0].sha256 == hashlib.sha256(media.content).hexdigest()
                return result, media.content

            with trio.fail_after(BOUND_S):
                i2i, image = await post(
                    "/image-to-image",
                    "image",
                    png(32, 32),
                    {"prompt": "sunset", "strength": "0.5", "num_inference_steps": "2", "guidance_scale": "0"},
                )
                upscaled, big = await post("/upscale", "image", image, {"scale": "2", "prompt": "ignored"})
                i2v, video = await post(
                    "/image-to-video",
                    "image",
                    big,
                    {"width": "64", "height": "64", "num_frames": "4", "num_inference_steps": "2", "fps": "4"},
                )
                interpolated, smooth = await post("/frame-interpolation", "video", video, {"multiplier": "2"})
    # the router picked each pipeline's model (no request named one) and said which
    assert [r["jobs"][0]["model_id"] for r in (i2i, upscaled, i2v, interpolated)] == [
        "lpnode/tiny-sdxl",
        "lpnode/tiny-realesrgan",
        "lpnode/tiny-svd",
        "lpnode/tiny-rife",
    ]
    assert Image.open(io.BytesIO(image)).size == (32, 32) and Image.open(io.BytesIO(big)).size == (64, 64)
    assert video[4:8] == b"ftyp" and smooth[4:8] == b"ftyp"


async def test_bad_requests_are_answered_before_any_peer_is_asked() -> None:
    """413 over the input limit, 422 for values the endpoint or the spec refuses, 404 with the offers."""
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[assignment]
        async with rpc(lone.node, max_input_bytes=4096) as (client, _):

            async def upload(path: str, data: bytes, **fields: str) -> httpx.Response:
                name = "video" if path == "/frame-interpolation" else "image"
                return await client.post(path, files={name: (name, data)}, data=fields, headers=AUTH)

            with trio.fail_after(BOUND_S):
                too_big = await upload("/image-to-image", b"\x89PNG" + bytes(8192), prompt="x")
                just_fits = await upload("/upscale", png(8, 8), scale="2")
                bad_strength = await upload("/image-to-image", png(8, 8), strength="5")
                bad_guidance = await upload(
                    "/image-to-video", png(8, 8), min_guidance_scale="3", max_guidance_scale="1"
                )
                bad_priority = await upload("/upscale", png(8, 8), priority="cheapest")
                no_file = await client.post("/upscale", data={"scale": "2"}, headers=AUTH)
                json_for_form = await client.post("/upscale", json={"scale": 2}, headers=AUTH)
                unknown_job = await client.get("/v1/jobs/abcdef", headers=AUTH)
    assert too_big.status_code == 413 and too_big.json()["error"] == "input_too_large"
    # nothing on offer: 404 saying so; the request itself was fine
    assert just_fits.status_code == 404 and "no peers known" in just_fits.json()["message"]
    for answer in (bad_strength, bad_guidance, bad_priority, no_file, json_for_form):
        assert answer.status_code == 422, answer.text
    assert "strength" in bad_strength.json()["message"]
    assert "max_guidance_scale" in bad_guidance.json()["message"]
    assert unknown_job.status_code == 404


async def test_async_job_answers_202_and_streams_progress_then_done(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            with trio.fail_after(BOUND_S):
                headers = AUTH | {"Prefer": "respond-async"}
                accepted = await client.post(
                    "/text-to-image", json=BODY | {"num_images_per_prompt": 1}, headers=headers
                )
                assert accepted.status_code == 202, accepted.text
                # ASGITransport hands over the body once the stream ends: after `done`
                events = await client.get(accepted.headers["location"] + "/events", headers=AUTH)
                again = await client.get(accepted.headers["location"] + "/events", headers=AUTH)
                record = (await client.get(accepted.headers["location"], headers=AUTH)).json()
                cancel_late = await client.delete(accepted.headers["location"], headers=AUTH)
                receipt = await client.get(accepted.headers["location"] + "/receipt", headers=AUTH)
    queued = accepted.json()
    assert accepted.headers["location"] == f"/v1/jobs/{queued['id']}" and queued["state"] in ("queued", "running")
    assert events.headers["content-type"].startswith("text/event-stream")
    kinds = [kind for kind, _ in sse_events(events.text)]
    assert kinds[-1] == "done" and "progress" in kinds and ("state", {"state": "succeeded"}) in sse_events(events.text)
    progress = [data for kind, data in sse_events(events.text) if kind == "progress"]
    assert all(p["peer_id"] == worker.peer_id and 0 <= p["fraction"] <= 1 for p in progress)
    assert sse_events(events.text)[-1][1] == record and record["state"] == "succeeded"
    assert [kind for kind, _ in sse_events(again.text)] == ["done"]  # a finished job: one `done` at once
    assert cancel_late.status_code == 409
    assert verify_receipt(receipt.content).job_id == record["result"]["jobs"][0]["job_id"]
