"""The RPC app against real nodes on the in-memory network, through httpx's ASGITransport under trio.

Time is trio's autojump MockClock and the nodes' wall clock derives from it,
so advert ages and long-polls run in virtual time.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from fastapi import FastAPI
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import Offer
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.rpc import create_app, serve_rpc, status_for
from lpnode.node.rpc_info import read_info
from lpnode.protocol import NodeKey
from lpnode.protocol.advert import GpuInfo, ModelOffer
from lpnode.protocol.errors import ConfigError, LpnodeError, MalformedMessage, NetworkError, PeerUnreachable

TOKEN = "test-token"
EPOCH_S = 1_800_000_000.0
GPU = GpuInfo(name="NVIDIA GeForce RTX 4090", kind="cuda", vram_total_bytes=24 * 2**30, vram_free_bytes=20 * 2**30)
MODEL = ModelOffer(
    pipeline="text-to-image",
    model_id="tiny-sdxl",
    weights_sha256="ab" * 32,
    warm=True,
    speed_mpx_steps_per_s=3.5,
    price_per_mpx_step=120,
)


def wall_clock() -> float:
    return EPOCH_S + trio.current_time()


def node_config() -> NodeConfig:
    return NodeConfig(listen=("/memory/0",), mdns=False, advert_interval_s=5.0, advert_ttl_s=30.0).validate()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[Node, Node]]:
    """Node 0 (no models) and node 1 (one GPU, one model), connected, each seeing the other."""
    offers = [
        Offer(gpus=(), models=(), queue_depth=0, queue_capacity=4),
        Offer(gpus=(GPU,), models=(MODEL,), queue_depth=1, queue_capacity=3),
    ]
    async with open_memory_hub(seed=0) as hub, AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        nodes = []
        for i, offer in enumerate(offers):
            key = NodeKey(bytes([i + 1]) * 32)
            net = await stack.enter_async_context(hub.open_network(key))
            if nodes:
                await net.connect(nodes[0].network.listen_addrs()[0])
            start = functools.partial(serve_node, node_config(), key, net, functools.partial(_same, offer))
            nodes.append(await nursery.start(functools.partial(start, wall_clock=wall_clock)))
        a, b = nodes
        with trio.fail_after(10):
            for node, other in ((a, b), (b, a)):
                while other.peer_id not in node.directory.peer_ids():
                    await node.directory.wait_changed()
        yield a, b
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def lone_node() -> AsyncIterator[Node]:
    """A node with no peers: its directory never changes."""
    key = NodeKey(b"\x09" * 32)
    offer = Offer(gpus=(), models=(), queue_depth=0, queue_capacity=4)
    async with open_memory_hub(seed=0) as hub, hub.open_network(key) as net, trio.open_nursery() as nursery:
        start = functools.partial(serve_node, node_config(), key, net, functools.partial(_same, offer))
        yield await nursery.start(functools.partial(start, wall_clock=wall_clock))
        nursery.cancel_scope.cancel()


def _same(offer: Offer) -> Offer:
    return offer


def client_for(app: FastAPI, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node", headers=headers)


async def test_health_needs_no_token(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _), client_for(create_app(a, TOKEN), token=None) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/node", "/v1/peers", "/v1/peers/12D3KooWabc"])
@pytest.mark.parametrize("token", [None, "wrong-token", "test-token-but-longer"])
async def test_every_v1_endpoint_needs_the_token(
    autojump_clock: trio.testing.MockClock, path: str, token: str | None
) -> None:
    async with two_nodes() as (a, _), client_for(create_app(a, TOKEN), token=token) as client:
        response = await client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="lpnode"')
    assert response.json()["error"] == "unauthorized"
    assert "rpc.token" in response.json()["message"]


async def test_other_auth_schemes_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _), client_for(create_app(a, TOKEN), token=None) as client:
        response = await client.get("/v1/node", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


async def test_peers_lists_the_other_node_with_its_offer(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, b), client_for(create_app(a, TOKEN)) as client:
        response = await client.get("/v1/peers")
    assert response.status_code == 200
    body = response.json()
    assert [p["peer_id"] for p in body["peers"]] == [b.peer_id]
    peer = body["peers"][0]
    assert peer["gpus"] == [
        {"name": GPU.name, "kind": "cuda", "vram_total_bytes": GPU.vram_total_bytes, "vram_free_bytes": 20 * 2**30}
    ]
    assert peer["models"] == [
        {
            "pipeline": "text-to-image",
            "model_id": "tiny-sdxl",
            "weights_sha256": "ab" * 32,
            "warm": True,
            "speed_mpx_steps_per_s": 3.5,
            "price_per_mpx_step": 120,
            "limits": None,  # this offer's advert does not say what the model takes
        }
    ]
    assert (peer["queue_depth"], peer["queue_capacity"]) == (1, 3)
    assert peer["listen_addrs"] == b.network.listen_addrs()
    assert peer["connected"] is True
    assert peer["seq"] > 0
    assert 0 <= peer["advert_age_ms"] <= 5_000
    assert 25_000 <= peer["expires_in_ms"] <= 30_000
    assert isinstance(body["version"], str)


async def test_one_peer_and_unknown_peer(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, b), client_for(create_app(a, TOKEN)) as client:
        found = await client.get(f"/v1/peers/{b.peer_id}")
        missing = await client.get("/v1/peers/12D3KooWNotKnownHere")
        malformed = await client.get("/v1/peers/not-base58-0OIl")
    assert found.status_code == 200
    assert found.json()["peer_id"] == b.peer_id
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert "12D3KooWNotKnownHere is not in this node's directory" in missing.json()["message"]
    assert malformed.status_code == 422
    assert malformed.json()["message"].startswith("path parameter peer_id:")


async def test_node_reports_itself_and_gossip_counters(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (_, b), client_for(create_app(b, TOKEN)) as client:
        b.gossip_stats.dropped["bad_signature"] += 2
        response = await client.get("/v1/node")
    assert response.status_code == 200
    body = response.json()
    assert body["peer_id"] == b.peer_id
    assert body["listen_addrs"] == b.network.listen_addrs()
    assert body["devices"][0]["name"] == GPU.name
    assert body["models"][0]["model_id"] == "tiny-sdxl"
    assert (body["queue_depth"], body["queue_capacity"]) == (1, 3)
    assert body["connected_peers"] == 1
    assert body["known_peers"] == 1
    assert body["uptime_s"] >= 0
    gossip = body["gossip"]
    assert gossip["adverts_published"] >= 1
    assert gossip["adverts_accepted"] >= 1
    assert gossip["adverts_dropped_by_reason"] == {"bad_signature": 2}
    assert gossip["adverts_dropped"] == 2
    assert body["config"]["advert_ttl_s"] == 30.0


async def test_validation_errors_are_422_with_a_clear_message(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _), client_for(create_app(a, TOKEN)) as client:
        response = await client.get("/v1/peers", params={"changed_since": "x", "wait_s": "999"})
    assert response.status_code == 422
    message = "query parameter wait_s: Input should be less than or equal to 60"
    # ours, and the same problem where Livepeer's AI API clients look for it (its HTTPValidationError)
    assert response.json() == {
        "error": "invalid_request",
        "message": message,
        "detail": [
            {"loc": ["query", "wait_s"], "msg": "Input should be less than or equal to 60", "type": "less_than_equal"}
        ],
    }


async def test_long_poll_times_out_with_the_same_version(autojump_clock: trio.testing.MockClock) -> None:
    async with lone_node() as node, client_for(create_app(node, TOKEN)) as client:
        first = (await client.get("/v1/peers")).json()
        started = trio.current_time()
        second = (await client.get("/v1/peers", params={"changed_since": first["version"], "wait_s": 2})).json()
        assert trio.current_time() - started == pytest.approx(2)
        assert second == first == {"version": first["version"], "peers": []}


async def test_long_poll_answers_at_the_next_change(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _), client_for(create_app(a, TOKEN)) as client:
        first = (await client.get("/v1/peers")).json()
        # the peer's next advert (every 5 s) bumps its seq: the poll answers then, well before 60 s
        started = trio.current_time()
        second = (await client.get("/v1/peers", params={"changed_since": first["version"], "wait_s": 60})).json()
        assert trio.current_time() - started <= 5.5
        assert second["version"] != first["version"]
        assert second["peers"][0]["seq"] > first["peers"][0]["seq"]
        # a version that is already stale answers at once
        before = trio.current_time()
        third = (await client.get("/v1/peers", params={"changed_since": first["version"], "wait_s": 60})).json()
        assert trio.current_time() == before
        assert third["version"] != first["version"]


def test_lpnode_errors_map_to_statuses_in_one_place() -> None:
    assert status_for(ConfigError("x")) == 400
    assert status_for(MalformedMessage("x")) == 502
    assert status_for(PeerUnreachable("x")) == 504
    assert status_for(NetworkError("x")) == 503
    assert status_for(LpnodeError("x")) == 500


async def test_lpnode_error_from_a_handler_has_the_common_body(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, _):
        app = create_app(a, TOKEN)

        @app.get("/v1/boom")
        async def boom() -> None:
            raise PeerUnreachable("peer 12D3KooWx did not answer")

        async with client_for(app) as client:
            response = await client.get("/v1/boom")
    assert response.status_code == 504
    message = "peer 12D3KooWx did not answer"
    assert response.json() == {"error": "peer_unreachable", "message": message, "detail": {"msg": message}}


async def test_serve_rpc_binds_port_zero_and_publishes_then_removes_rpc_json(tmp_path: Path) -> None:
    async with two_nodes() as (a, _), trio.open_nursery() as nursery:
        urls = await nursery.start(serve_rpc, create_app(a, TOKEN), "127.0.0.1", 0, tmp_path)
        assert urls[0].startswith("http://127.0.0.1:") and not urls[0].endswith(":0")
        assert read_info(tmp_path).url == urls[0]
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/v1/node")).status_code == 401
            docs = await client.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            # its scripts come from the node, not a CDN: /docs works on a machine without internet
            assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', docs.text)
            assert assets and "cdn." not in docs.text, docs.text
            for asset in assets:
                served = await client.get(asset)
                assert served.status_code == 200 and len(served.content) > 1000, asset
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "rpc.json").exists()


async def test_serve_rpc_answers_a_head_it_refuses_with_the_api_error_body(tmp_path: Path) -> None:
    async with two_nodes() as (a, _), trio.open_nursery() as nursery:
        urls = await nursery.start(serve_rpc, create_app(a, TOKEN), "127.0.0.1", 0, tmp_path)
        port = int(urls[0].rsplit(":", 1)[1])
        for head, status, error in (
            (b"GET /health HTTP/1.1\r\nhost: t\r\nx: " + b"a" * 100_000 + b"\r\n\r\n", 431, "request_head_too_large"),
            (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad_request"),
        ):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(head)
                answer = b""
                while data := await stream.receive_some(65536):
                    answer += data
            status_line, _, body = answer.partition(b"\r\n\r\n")
            assert status_line.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
            parsed = json.loads(body)
            assert parsed["error"] == error and parsed["detail"] == {"msg": parsed["message"]}, parsed
        nursery.cancel_scope.cancel()
