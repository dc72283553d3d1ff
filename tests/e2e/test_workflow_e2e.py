"""A four-step workflow across three real ``lpnode run`` processes, one receipt per step that verifies.

The requester serves nothing; one worker serves tiny-sdxl and tiny-realesrgan,
the other tiny-svd and tiny-rife, so the product brief's chain text-to-image →
image-to-video → upscale → frame-interpolation goes back and forth between
peers: the upscale step takes the video and upscales it frame by frame.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
import trio
from lpnode.protocol.receipts import verify_receipt

from .cluster import open_cluster, wait_for_peers

pytestmark = pytest.mark.slow

STEPS = [
    {
        "pipeline": "text-to-image",
        "params": {"prompt": "a lighthouse", "width": 32, "height": 32, "num_inference_steps": 2},
    },
    {
        "pipeline": "image-to-video",
        "params": {"width": 64, "height": 64, "num_frames": 4, "fps": 4, "num_inference_steps": 2},
    },
    {"pipeline": "upscale", "params": {"scale": 2}},
    {"pipeline": "frame-interpolation", "params": {"multiplier": 2}},
]


async def test_four_step_workflow_across_three_nodes(tmp_path: Path) -> None:
    with trio.fail_after(240):
        async with open_cluster(tmp_path) as nodes:
            images = await nodes.launch("images", serve="tiny-sdxl,tiny-realesrgan")
            videos = await nodes.launch("videos", serve="tiny-svd,tiny-rife", bootstrap=[images.addr])
            requester = await nodes.launch("requester", bootstrap=[images.addr, videos.addr])
            workers = {images.peer_id, videos.peer_id}
            await wait_for_peers(
                requester,
                lambda ps: {p["peer_id"] for p in ps if p["models"]} >= workers,
                timeout_s=30,
                what="both workers",
            )
            async with requester.http() as client:
                answer = await client.post("/v1/workflows", json={"steps": STEPS, "deadline": 100})
                assert answer.status_code == 200, answer.text
                result = answer.json()
                record = (await client.get(f"/v1/jobs/{result['request_id']}")).json()
                receipts = [(await client.get(f"/v1/jobs/{c}/receipt")).content for c in result["steps"]]
                final = await client.get(result["outputs"][0])
    assert record["kind"] == "workflow" and record["state"] == "succeeded"
    signed = [verify_receipt(r) for r in receipts]
    assert [r.worker_peer_id for r in signed] == [images.peer_id, videos.peer_id, images.peer_id, videos.peer_id]
    assert [r.model_id for r in signed] == [
        "lpnode/tiny-sdxl",
        "lpnode/tiny-svd",
        "lpnode/tiny-realesrgan",
        "lpnode/tiny-rife",
    ]
    # the upscale step took the video and made a video: 4 frames of 128x128, one fingerprint each
    assert [(b.name, b.media_type) for b in signed[2].spec.inputs] == [("video", "video/mp4")]
    assert signed[2].outputs[0].media_type == "video/mp4" and len(signed[2].outputs[0].phash) == 4
    for before, after in itertools.pairwise(signed):
        assert [blob.sha256 for blob in after.spec.inputs] == [before.outputs[0].sha256]
    assert all(r.requester_peer_id == requester.peer_id for r in signed)
    assert signed[-1].outputs[0].sha256 == hashlib.sha256(final.content).hexdigest()
