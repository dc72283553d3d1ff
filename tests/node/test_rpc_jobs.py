"""``POST /text-to-image`` on the requester's RPC app: Livepeer's shapes, verified images served by hash."""

from __future__ import annotations

import base64
import hashlib

import httpx
import trio
from lpnode.models.pool import ModelPool
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app
from lpnode.protocol.receipts import verify_receipt

from .test_jobs import BOUND_S, MODEL, Peer, peers, pool, sees_models

__all__ = ["pool"]  # the fixture, shared with test_jobs

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


async def test_text_to_image_through_the_rpc_api(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        transport = httpx.ASGITransport(app=create_app(requester.node, "t"))
        async with httpx.AsyncClient(transport=transport, base_url="http://node", timeout=BOUND_S) as client:
            with trio.fail_after(BOUND_S):
                answer = await client.post("/text-to-image", json=BODY, headers=AUTH)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                images = [(await client.get(image["url"], headers=AUTH)) for image in body["images"]]
                unknown = await client.post("/text-to-image", json=BODY | {"model_id": "nobody/has-this"}, headers=AUTH)
                invalid = await client.post("/text-to-image", json=BODY | {"width": 4}, headers=AUTH)
                missing = await client.get("/v1/outputs/" + "0" * 64, headers=AUTH)
                unauthorized = await client.post("/text-to-image", json=BODY)
    assert [image["seed"] for image in body["images"]] == [5, 6]
    assert all(image["nsfw"] is False for image in body["images"])
    for response, job in zip(images, body["jobs"], strict=True):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        receipt = verify_receipt(base64.b64decode(job["receipt"]))
        assert receipt.outputs[0].sha256 == hashlib.sha256(response.content).hexdigest()
        assert job["worker_peer_id"] == worker.peer_id and job["attempts"][-1]["outcome"] == "done"
    assert unknown.status_code == 404 and "text-to-image lpnode/tiny-sdxl" in unknown.json()["message"]
    assert invalid.status_code == 422
    assert missing.status_code == 404
    assert unauthorized.status_code == 401
