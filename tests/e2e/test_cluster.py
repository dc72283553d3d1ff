"""The launcher of the e2e tests (``cluster.py``): banner parsing, start-up failures, stops, restarts, clean-up.

A real ``lpnode run`` cannot be made to die before its banner or to stay
silent on demand, and each costs seconds to start; these paths run a stand-in
instead: a few lines of Python that behave as told (print a banner like
``lpnode run``'s and wait, exit early, or print nothing). Every other e2e test
runs the real node through the same code.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from .cluster import Banner, NodeNotReady, open_cluster

PEER = "12D3KooWBvstX4sPCkLeDBNtRn9emEEyxBi8kRRakTPvLZEX2zfh"
BANNER = f"""lpnode 0.1.0 running
  peer id    {PEER}
  listening  /ip4/10.0.0.5/tcp/4001/p2p/{PEER}
             /ip4/127.0.0.1/tcp/4001/p2p/{PEER}
  rpc        http://127.0.0.1:8123  (API docs: http://127.0.0.1:8123/docs, token: /data/n1/rpc.token)
  models     none (requester only)
  data dir   /data/n1
"""
# A stand-in for `lpnode run`: takes the same flags, writes a token, prints a banner, waits for a signal.
STAND_IN = f"""
import signal, sys, time
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
mode = args.get("mode", "serve")
if mode == "exit":
    sys.exit(3)
if mode == "silent":
    signal.pause()
data_dir = Path(args["data-dir"])
(data_dir / "rpc.token").write_text("t0ken")
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
banner = {BANNER!r}.replace("/data/n1", str(data_dir))
print(banner, end="", flush=True)
while True:
    signal.pause()
"""
COMMAND = (sys.executable, "-c", STAND_IN)


def test_the_banner_gives_identity_addresses_and_rpc() -> None:
    banner = Banner.parse(BANNER)
    assert banner.peer_id == PEER
    assert banner.listen_addrs == (f"/ip4/10.0.0.5/tcp/4001/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")
    assert (banner.rpc_url, banner.token_path) == ("http://127.0.0.1:8123", Path("/data/n1/rpc.token"))
    with pytest.raises(ValueError, match="not an lpnode banner"):
        Banner.parse("lpnode 0.1.0 running\n  data dir   /x\n")


async def test_every_process_is_killed_when_the_block_fails(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.raises(RuntimeError, match="a test failing"):
        async with open_cluster(tmp_path) as cluster:
            nodes = [await cluster.launch(name, command=COMMAND) for name in ("a", "b")]
            assert nodes[0].addr == f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}" and nodes[0].token == "t0ken"
            assert all(node.running for node in nodes)
            raise RuntimeError("a test failing")
    assert [node.process.returncode for node in nodes] == [-signal.SIGKILL, -signal.SIGKILL]


async def test_stop_restart_and_kill(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path) as cluster:
            node = await cluster.launch("n", command=COMMAND, args=["--mode=serve"])
            with pytest.raises(RuntimeError, match="still runs"):
                await cluster.restart(node)
            assert await node.stop(signal.SIGINT) == 0  # a clean stop
            again = await cluster.restart(node)
            assert (again.data_dir, again.launch, again.log.name) == (node.data_dir, node.launch, "node-2.log")
            again.kill()
            assert await again.process.wait() == -signal.SIGKILL
            third = await cluster.restart(again, bootstrap=["/ip4/127.0.0.1/tcp/1/p2p/x"])
            assert third.launch.bootstrap == ("/ip4/127.0.0.1/tcp/1/p2p/x",) and third.log.name == "node-3.log"
    assert third.process.returncode == -signal.SIGKILL  # the cluster's clean-up


async def test_a_process_that_exits_before_its_banner_is_reported(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.raises(NodeNotReady, match="exited with 3 before it was ready"):
        async with open_cluster(tmp_path) as cluster:
            await cluster.launch("n", command=COMMAND, args=["--mode=exit"])


async def test_a_silent_process_times_out_and_is_killed(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # virtual time: the wait for a banner that never comes jumps straight to the start-up bound
    with pytest.raises(NodeNotReady, match="printed no banner within 45"):
        async with open_cluster(tmp_path) as cluster:
            await cluster.launch("n", command=COMMAND, args=["--mode=silent"])
    assert cluster.logs().startswith("--- n/node.log ---")
