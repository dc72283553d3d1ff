"""A job between two real ``lpnode run`` processes on 127.0.0.1: ``POST /text-to-image`` on the requester.

The worker serves the tiny-sdxl preset; the requester serves nothing. The image
comes back through the requester's RPC API with its worker's signed receipt,
and the bytes served by hash match the receipt. Waits are long-polls bounded
by ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import trio
from lpnode.protocol.receipts import verify_receipt

from .cluster import launch_pair, open_cluster

pytestmark = pytest.mark.slow


async def test_text_to_image_between_two_processes(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with open_cluster(tmp_path) as nodes:
            pair = await launch_pair(nodes, serve="tiny-sdxl", timeout_s=20)
            requester, worker = pair.requester, pair.worker
            body = {
                "prompt": "a lighthouse at dusk",
                "width": 64,
                "height": 64,
                "guidance_scale": 0.0,
                "num_inference_steps": 2,
                "seed": 11,
                "max_price": 100,
                "deadline": 60,
            }
            async with requester.http(timeout_s=90) as client:
                answer = await client.post("/text-to-image", json=body)
                assert answer.status_code == 200, answer.text
                result = answer.json()
                image = await client.get(result["images"][0]["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    receipt = verify_receipt(base64.b64decode(result["jobs"][0]["receipt"]))
    assert receipt.worker_peer_id == worker.peer_id and receipt.requester_peer_id == requester.peer_id
    assert receipt.model_id == "lpnode/tiny-sdxl"  # routed: the request named no model
    assert receipt.outputs[0].sha256 == hashlib.sha256(image.content).hexdigest()
    # numbers go on file a block at a time, the block's end before its first number is used (job_proof)
    assert int((worker.data_dir / "receipt-seq").read_text()) >= receipt.seq
