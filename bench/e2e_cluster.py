"""The driver's side of the two-process cluster: launch ``lpnode run`` processes, wait until they see each other.

A worker serves the setup's model and tiny-sdxl; a requester-only process (no models) is bootstrapped
to it. Each runs ``bench/e2e.py node`` (``e2e_node.node_main``) with its own data dir and probe file
under one temporary folder; every process is killed when the cluster's exit stack closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from e2e_setup import TINY, Setup

if TYPE_CHECKING:
    import httpx

ENTRY = Path(__file__).resolve().parent / "e2e.py"  # its ``node`` command wraps ``lpnode run``
STARTUP_S = 300  # a worker process building a 2.6B-parameter UNet; the bound is for a wedged process
NODE_TOML = """
advert_interval_s = 5.0
advert_ttl_s = 60.0
advert_min_gap_s = 0.5
compile = "off"
batch_window_ms = 0
queue_capacity = 64
log_level = "warning"
"""


@dataclasses.dataclass
class NodeProc:
    process: trio.Process
    data_dir: Path
    probe: Path
    url: str
    token: str


async def launch(
    tmp: Path,
    name: str,
    setup: Setup,
    serve: str,
    bootstrap: str | None,
    stack: contextlib.AsyncExitStack,
    env: dict[str, str] | None = None,
) -> NodeProc:
    data_dir = tmp / name
    data_dir.mkdir()
    (tmp / "node.toml").write_text(NODE_TOML)
    probe = data_dir / "probe.jsonl"
    worker = serve != "none"
    preset = setup.bench_preset if worker else "none"
    args = [sys.executable, str(ENTRY), "node", f"--bench-preset={preset}"]
    args += [
        f"--probe={probe}",
        *(["--worker"] if worker else []),
        "--",
        f"--data-dir={data_dir}",
        f"--config={tmp / 'node.toml'}",
    ]
    args += ["--listen=/ip4/127.0.0.1/tcp/0", "--rpc=127.0.0.1:0", "--no-mdns", f"--serve={serve}"]
    args += [f"--device={setup.device}"] if worker else []
    args += [f"--bootstrap={bootstrap}"] if bootstrap else []
    log = (data_dir / "node.log").open("wb")
    process = await trio.lowlevel.open_process(args, stdout=-1, stderr=log, env={**os.environ, **(env or {})})

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            if process.returncode is None and os.environ.get("LPNODE_BENCH_PROFILE"):
                process.terminate()  # a node stopped in order writes its profile (e2e_node)
                with trio.move_on_after(STARTUP_S):
                    await process.wait()
            if process.returncode is None:
                process.kill()
            await process.wait()
            log.close()

    stack.push_async_callback(stop)
    assert process.stdout is not None
    text = b""
    with trio.fail_after(STARTUP_S):
        while b"data dir" not in text:  # the banner's last line
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"{name} exited: {(data_dir / 'node.log').read_text()[-3000:]}")
            text += chunk
    info = json.loads((data_dir / "rpc.json").read_text())
    token = (data_dir / "rpc.token").read_text().strip()
    return NodeProc(process, data_dir, probe, info["url"], token)


async def launch_worker(tmp: Path, setup: Setup, stack: contextlib.AsyncExitStack) -> tuple[NodeProc, str, str]:
    """The worker, serving the setup's model and tiny-sdxl; with its peer id and loopback address to bootstrap to."""
    serve = ",".join(dict.fromkeys([setup.model, TINY]))
    worker = await launch(tmp, "worker", setup, serve, None, stack)
    import httpx

    async with httpx.AsyncClient(base_url=worker.url, headers=auth(worker), trust_env=False) as client:
        node = (await client.get("/v1/node")).raise_for_status().json()
    addr = next(a for a in node["listen_addrs"] if a.startswith("/ip4/127.0.0.1/"))
    return worker, node["peer_id"], addr


@contextlib.asynccontextmanager
async def open_cluster(setup: Setup) -> AsyncIterator[tuple[NodeProc, NodeProc]]:
    with tempfile.TemporaryDirectory(prefix="lpnode-e2e-") as tmp_name:
        async with contextlib.AsyncExitStack() as stack:
            tmp = Path(tmp_name)
            worker, worker_peer_id, addr = await launch_worker(tmp, setup, stack)
            requester = await launch(tmp, "requester", setup, "none", addr, stack)
            await wait_for_models(requester, worker_peer_id)
            yield worker, requester


def auth(node: NodeProc) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token}"}


async def wait_for_models(requester: NodeProc, worker_peer_id: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=requester.url, headers=auth(requester), trust_env=False) as client:
        with trio.fail_after(60):
            answer = (await client.get("/v1/peers")).json()
            while not any(p["peer_id"] == worker_peer_id and p["models"] for p in answer["peers"]):
                params = {"changed_since": answer["version"], "wait_s": 5}
                answer = (await client.get("/v1/peers", params=params, timeout=15)).json()


def job_client(node: NodeProc) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for jobs on ``node``'s RPC: long timeout, keep-alive under the server's."""
    import httpx

    return httpx.AsyncClient(
        base_url=node.url,
        headers=auth(node),
        trust_env=False,
        timeout=180,
        # under the server's 5 s keep-alive: a POST on a connection it is just closing fails (23:55 run)
        limits=httpx.Limits(keepalive_expiry=2.0),
    )
