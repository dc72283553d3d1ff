"""The RPC client against the real app (httpx ASGITransport under trio), and the CLI's tables."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from lpnode.node.cli_format import node_table, peers_table, short_peer_id
from lpnode.node.client import LpnodeClient, RpcError
from lpnode.node.rpc import create_app

from .test_rpc import GPU, MODEL, TOKEN, two_nodes


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
