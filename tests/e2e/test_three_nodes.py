"""Three real ``lpnode run`` processes on 127.0.0.1, driven only through the RPC API and the CLI.

Waiting is event-driven where the node allows it: readiness is the banner on
the process's stdout, and peer-list changes come from the long-poll
(``GET /v1/peers?changed_since=...&wait_s=...``). Every wait is bounded by
``trio.fail_after``, and every process is killed in teardown whatever happens.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from lpnode.node.client import LpnodeClient

pytestmark = pytest.mark.slow

LPNODE = [sys.executable, "-m", "lpnode.node"]
# adverts every 0.5 s, expiring after 3 s: a killed node is gone in seconds, not minutes
FAST_GOSSIP = """
advert_interval_s = 0.5
advert_ttl_s = 3.0
advert_min_gap_s = 0.1
peer_disconnect_grace_s = 0.5
"""
# A cold start imports libp2p, FastAPI and torch: ~8 s alone on a loaded 2-core machine, more
# when three start at once. The bound is for a wedged process, not the expected time.
STARTUP_S = 45


@dataclass
class NodeProcess:
    name: str
    process: trio.Process
    data_dir: Path
    banner: str
    client: LpnodeClient
    peer_id: str
    addr: str  # its loopback libp2p address, with /p2p/<peer id>


@dataclass
class Cluster:
    """Launches ``lpnode run`` processes; :meth:`aclose` kills whatever still runs."""

    tmp_path: Path
    config_file: Path
    processes: list[tuple[str, trio.Process, Path]] = field(default_factory=list)
    clients: list[LpnodeClient] = field(default_factory=list)

    async def launch(self, name: str, bootstrap: Sequence[str] = (), serve: str = "none") -> NodeProcess:
        data_dir = self.tmp_path / name
        data_dir.mkdir()
        log = data_dir / "node.log"
        args = [
            *LPNODE,
            "run",
            f"--data-dir={data_dir}",
            f"--config={self.config_file}",
            "--listen=/ip4/127.0.0.1/tcp/0",
            "--rpc=127.0.0.1:0",
            "--no-mdns",
            f"--serve={serve}",
            *(f"--bootstrap={addr}" for addr in bootstrap),
        ]
        with log.open("wb") as log_file:
            process = await trio.lowlevel.open_process(args, stdout=-1, stderr=log_file)
        self.processes.append((name, process, log))
        with trio.fail_after(STARTUP_S):
            banner = await _read_banner(process)
        client = LpnodeClient.from_data_dir(data_dir)
        self.clients.append(client)
        info = await client.node()
        addr = next(a for a in info["listen_addrs"] if a.startswith("/ip4/127.0.0.1/"))
        return NodeProcess(name, process, data_dir, banner, client, info["peer_id"], addr)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for _, process, _ in self.processes:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            for client in self.clients:
                await client.aclose()

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{log.read_text()}" for name, _, log in self.processes)


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    config_file = tmp_path / "fast-gossip.toml"
    config_file.write_text(FAST_GOSSIP)
    nodes = Cluster(tmp_path, config_file)
    try:
        yield nodes
    except BaseException:
        print(nodes.logs(), file=sys.stderr)  # pytest shows it with the failure
        raise
    finally:
        await nodes.aclose()


async def _read_banner(process: trio.Process) -> str:
    assert process.stdout is not None
    text = b""
    while b"data dir" not in text:  # the banner's last line; stdout carries nothing else
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise AssertionError(f"lpnode run exited with {await process.wait()} before it was ready")
        text += chunk
    return text.decode()


async def wait_for_peers(node: NodeProcess, done: Callable[[list[dict[str, Any]]], bool]) -> None:
    answer = await node.client.peers()
    while not done(answer["peers"]):
        answer = await node.client.peers(changed_since=answer["version"], wait_s=5)


def exactly(peer_ids: set[str], *, connected: bool = False) -> Callable[[list[dict[str, Any]]], bool]:
    def check(peers: list[dict[str, Any]]) -> bool:
        return {p["peer_id"] for p in peers} == peer_ids and (not connected or all(p["connected"] for p in peers))

    return check


async def cli(*args: str) -> str:
    result = await trio.run_process([*LPNODE, *args], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_three_nodes_find_each_other_and_forget_a_killed_one(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with cluster(tmp_path) as nodes:
            n1 = await nodes.launch("n1")
            assert n1.peer_id in n1.banner and "http://127.0.0.1:" in n1.banner
            launched: dict[str, NodeProcess] = {}

            async def launch(name: str, serve: str) -> None:
                launched[name] = await nodes.launch(name, bootstrap=[n1.addr], serve=serve)

            async with trio.open_nursery() as starters:  # nodes 2 and 3 start together
                starters.start_soon(launch, "n2", "tiny-sdxl")  # a worker: real tiny model, warm
                starters.start_soon(launch, "n3", "none")
            n2, n3 = launched["n2"], launched["n3"]
            everyone = [n1, n2, n3]
            ids = {n.peer_id for n in everyone}

            # each lists the other two, directly connected (so 2 and 3 no longer need 1)
            with trio.fail_after(10):
                async with trio.open_nursery() as waits:
                    for node in everyone:
                        waits.start_soon(wait_for_peers, node, exactly(ids - {node.peer_id}, connected=True))

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
            n1.process.send_signal(signal.SIGKILL)
            with trio.fail_after(8):
                async with trio.open_nursery() as waits:
                    waits.start_soon(wait_for_peers, n2, exactly({n3.peer_id}))
                    waits.start_soon(wait_for_peers, n3, exactly({n2.peer_id}))
            assert (await n2.client.node())["gossip"]["peers_expired"] >= 1

            # SIGTERM: a clean exit, which removes rpc.json
            for node in (n2, n3):
                node.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                for node in (n2, n3):
                    assert await node.process.wait() == 0
                    assert not (node.data_dir / "rpc.json").exists()
