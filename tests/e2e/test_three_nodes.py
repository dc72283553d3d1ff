"""Three real ``lpnode run`` processes on 127.0.0.1, driven only through the RPC API and the CLI.

Waiting is event-driven where the node allows it: readiness is the banner on
the process's stdout, and peer-list changes come from the long-poll
(``GET /v1/peers?changed_since=...&wait_s=...``). Every wait is bounded, and
every process is killed in teardown whatever happens (``tests/e2e/cluster.py``).
"""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path

import pytest
import trio

from .cluster import NodeProcess, cli, exactly, open_cluster, wait_for_peers

pytestmark = pytest.mark.slow


async def test_three_nodes_find_each_other_and_forget_a_killed_one(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with open_cluster(tmp_path) as nodes:
            n1 = await nodes.launch("n1")
            assert n1.peer_id in n1.banner.text and n1.banner.rpc_url.startswith("http://127.0.0.1:")
            launched: dict[str, NodeProcess] = {}

            async def launch(name: str, serve: str) -> None:
                launched[name] = await nodes.launch(name, serve=serve, bootstrap=[n1.addr])

            async with trio.open_nursery() as starters:  # nodes 2 and 3 start together
                starters.start_soon(launch, "n2", "tiny-sdxl")  # a worker: real tiny model, warm
                starters.start_soon(launch, "n3", "none")
            n2, n3 = launched["n2"], launched["n3"]
            everyone = [n1, n2, n3]
            ids = {n.peer_id for n in everyone}

            # each lists the other two, directly connected (so 2 and 3 no longer need 1)
            async with trio.open_nursery() as waits:
                for node in everyone:
                    waits.start_soon(
                        partial(wait_for_peers, node, exactly(ids - {node.peer_id}, connected=True), timeout_s=10)
                    )

            # the CLI shows the same, as JSON and as a table
            listed = json.loads(await cli("peers", "--json", f"--data-dir={n2.data_dir}"))
            assert {p["peer_id"] for p in listed["peers"]} == {n1.peer_id, n3.peer_id}
            for peer in listed["peers"]:
                assert peer["gpus"], "every node advertises at least its CPU"
                assert peer["listen_addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
                assert peer["queue_capacity"] >= 1
                assert 0 <= peer["advert_age_ms"] < 3000
            table = await cli("peers", f"--data-dir={n3.data_dir}")
            assert table.startswith("PEER") and n1.peer_id[:8] in table and "2 peer(s)" in table
            # the worker's advert carries its real model, warm, for both pipelines it serves
            worker = (await n3.client.peer(n2.peer_id))["models"]
            assert {(m["model_id"], m["pipeline"], m["warm"]) for m in worker} == {
                ("lpnode/tiny-sdxl", "text-to-image", True),
                ("lpnode/tiny-sdxl", "image-to-image", True),
            }
            assert all(len(m["weights_sha256"]) == 64 for m in worker)
            assert "tiny-sdxl" in await cli("models", f"--data-dir={n2.data_dir}")

            # SIGKILL node 1: the others drop it within seconds, and keep each other
            n1.kill()
            async with trio.open_nursery() as waits:
                waits.start_soon(partial(wait_for_peers, n2, exactly({n3.peer_id}), timeout_s=8))
                waits.start_soon(partial(wait_for_peers, n3, exactly({n2.peer_id}), timeout_s=8))
            assert (await n2.client.node())["gossip"]["peers_expired"] >= 1

            # SIGTERM: a clean exit, which removes rpc.json
            for node in (n2, n3):
                node.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                for node in (n2, n3):
                    assert await node.process.wait() == 0
                    assert not (node.data_dir / "rpc.json").exists()
