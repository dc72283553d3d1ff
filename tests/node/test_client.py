"""The RPC client against the real app (httpx ASGITransport under trio): node and peers, jobs on the in-memory network."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from lpnode.models.pool import ModelPool
from lpnode.node.cli_format import node_table, peers_table, short_peer_id
from lpnode.node.client import LpnodeClient, RpcError
from lpnode.node.job_manager import MemoryRecordBook, open_job_manager, requester_runner
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, status_for
from lpnode.node.rpc_jobs import OutputStore
from lpnode.protocol.errors import LpnodeError
from lpnode.protocol.receipts import verify_receipt

from .job_fixtures import BOUND_S, Peer, peers, sees_models
from .test_rpc import GPU, MODEL, TOKEN, two_nodes

OPTIONS = {"max_price": 1_000_000, "deadline": BOUND_S}
TINY_T2I = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 0.0, **OPTIONS}


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def client(app: object, token: str = TOKEN) -> LpnodeClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return LpnodeClient("http://node", token, data_dir=Path("/data/a"), transport=transport)


async def test_client_reads_node_and_peers_and_long_polls(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, b), client(create_app(a, TOKEN)) as rpc:
        assert (await rpc.node())["peer_id"] == a.peer_id
        first = await rpc.peers()
        assert [p["peer_id"] for p in first["peers"]] == [b.peer_id]
        assert (await rpc.peer(b.peer_id))["models"][0]["model_id"] == MODEL.model_id
        started = trio.current_time()
        changed = await rpc.peers(changed_since=first["version"], wait_s=30)
        assert changed["version"] != first["version"]
        assert trio.current_time() - started < 30


async def test_client_errors_are_lpnode_errors_with_the_api_message(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _):
        app = create_app(a, TOKEN)
        async with client(app) as rpc:
            with pytest.raises(
                RpcError, match=r"12D3KooWUnknown is not in this node's directory .*\(HTTP 404 not_found\)"
            ):
                await rpc.peer("12D3KooWUnknown")
        async with client(app, token="stale") as rpc:
            with pytest.raises(RpcError, match=r"refused the token in /data/a/rpc.token") as caught:
                await rpc.node()
            assert caught.value.status_code == 401


async def test_tables_show_what_the_api_says(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, b), client(create_app(a, TOKEN)) as rpc:
        peers = (await rpc.peers())["peers"]
        node = await rpc.node()
    lines = peers_table(peers).splitlines()
    assert lines[0].split() == ["PEER", "ADDRESSES", "GPUS", "MODELS", "PRICE", "QUEUE", "AGE"]
    row = lines[1]
    assert row.startswith(short_peer_id(b.peer_id))
    for text in ("NVIDIA GeForce RTX 4090 (24.0 GiB)", "tiny-sdxl text-to-image (warm)", "120", "1/3"):
        assert text in row
    assert lines[-1] == "1 peer(s); price in micro-credits per megapixel-step"
    # columns line up: each header starts where its values start
    assert row.index("tiny-sdxl") == lines[0].index("MODELS")
    assert peers_table([]) == "no peers known yet"
    text = node_table(node, "http://127.0.0.1:9470")
    assert f"peer id    {a.peer_id}" in text
    assert "1 known, 1 connected" in text
    assert GPU.name not in text  # node a offers no GPU; its row says so rather than borrowing b's


async def test_client_runs_jobs_sync_and_async_and_follows_their_events(pool: ModelPool) -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with open_job_manager(
            MemoryRecordBook(), OutputStore(), requester_runner(requester.node), status_for=status_for
        ) as jobs:
            app = create_app(requester.node, TOKEN, jobs=jobs, max_input_bytes=64 * 1024)
            with trio.fail_after(BOUND_S):
                async with client(app) as rpc:
                    done = await rpc.text_to_image("a lighthouse", seed=3, **TINY_T2I)
                    image = await rpc.output(done["images"][0]["url"])
                    by_hash = await rpc.output(hashlib.sha256(image).hexdigest())

                    record = await rpc.image_to_image(
                        image, "at night", strength=0.5, num_inference_steps=2, guidance_scale=0.0,
                        prefer=[worker.peer_id], allow_local=False, wait=False, **OPTIONS,
                    )  # fmt: skip
                    assert record["state"] in ("queued", "running") and record["kind"] == "image-to-image"
                    events = [event async for event in rpc.job_events(record["id"])]
                    receipt = await rpc.receipt(record["id"], 0)
                    listed = await rpc.jobs(limit=5)
                    final = await rpc.job(record["id"])
                    with pytest.raises(RpcError) as finished:
                        await rpc.cancel_job(record["id"])
                    with pytest.raises(RpcError) as too_big:
                        await rpc.upscale(b"\x89PNG" + bytes(64 * 1024), **OPTIONS)
                    with pytest.raises(RpcError) as invalid:
                        await rpc.text_to_image("x", **(TINY_T2I | {"width": 4}))
    assert image.startswith(b"\x89PNG") and by_hash == image
    assert verify_receipt(base64.b64decode(done["jobs"][0]["receipt"])).outputs[0].sha256 == sha(image)
    names = [event.name for event in events]
    assert names[-1] == "done" and set(names) <= {"progress", "state", "attempt", "done"}
    assert events[-1].data == final and final["state"] == "succeeded"
    assert final["request"]["prefer"] == [worker.peer_id] and final["request"]["strength"] == 0.5
    assert verify_receipt(receipt).worker_peer_id == worker.peer_id
    assert base64.b64decode(final["result"]["jobs"][0]["receipt"]) == receipt
    assert listed[0]["id"] == record["id"]
    assert (finished.value.status_code, too_big.value.status_code, invalid.value.status_code) == (409, 413, 422)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_event_stream_of_an_unknown_job_is_a_404() -> None:
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        async with (
            open_job_manager(
                MemoryRecordBook(), OutputStore(), requester_runner(requester.node), status_for=status_for
            ) as jobs,
            client(create_app(requester.node, TOKEN, jobs=jobs)) as rpc,
        ):
            with pytest.raises(RpcError) as unknown:
                async for _ in rpc.job_events("job_0000"):
                    pass
            with pytest.raises(LpnodeError, match="not a job id"):
                await rpc.job("../node")
    assert unknown.value.status_code == 404
