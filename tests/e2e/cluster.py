"""Real ``lpnode run`` processes on 127.0.0.1 for end-to-end tests: launch, wait, kill, restart, clean up.

    async with open_cluster(tmp_path) as cluster:          # trio tests
        worker = await cluster.launch("worker", serve="tiny-sdxl")
        requester = await cluster.launch("requester", bootstrap=[worker.addr])
        await wait_for_peers(requester, offers(worker.peer_id), timeout_s=30)

    with cluster_in_thread(tmp_path) as portal:             # sync tests, module-scoped fixtures
        worker = portal.call(lambda c: c.launch("worker", serve="tiny-sdxl"))

A node is ready when it has printed its banner (``lpnode run`` prints it last,
once the RPC API answers): the banner gives its peer id, addresses and RPC URL.
Waiting for other processes' state goes through the RPC long-poll
(``GET /v1/peers?changed_since=...``), which answers at the next change, so no
wait sleeps; each is bounded and says what it waited for when it times out.
Every process a cluster started is killed when the cluster closes, whatever
happened, and each one's stderr is kept in its data dir (``node.log``) and
printed if the block fails.

Nothing here imports pytest: a benchmark driver can launch its nodes the same
way (``command`` runs another entry point that ends in ``lpnode run``).
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from lpnode.node.client import LpnodeClient

T = TypeVar("T")
PeerList = list[dict[str, Any]]

LPNODE = (sys.executable, "-m", "lpnode.node")
LPNODE_RUN = (*LPNODE, "run")
# adverts every 0.5 s, expiring after 3 s: a killed node is gone in seconds, not minutes
FAST_GOSSIP = """
advert_interval_s = 0.5
advert_ttl_s = 3.0
advert_min_gap_s = 0.1
peer_disconnect_grace_s = 0.5
"""
# A cold start imports libp2p, FastAPI and torch: ~8 s alone on a loaded 2-core machine, more
# when several start at once. The bound is for a wedged process, not the expected time.
STARTUP_S = 45.0
STOP_S = 20.0  # a clean stop (SIGINT/SIGTERM) drains RPC requests and closes the host
LONG_POLL_S = 5.0  # one long-poll's wait: short, so a cancelled wait never leaves a call hanging long
BANNER_MAX_BYTES = 64 * 1024  # the banner is a few hundred bytes; more means stdout carries something else


class NodeNotReady(RuntimeError):
    """An ``lpnode run`` process ended, or stayed silent past the start-up bound, before its banner."""


class WaitTimeout(TimeoutError):
    """A bounded wait for another process's state ran out; the message says what was awaited and last seen."""


@dataclass(frozen=True)
class Banner:
    """What ``lpnode run`` prints once it is up."""

    text: str
    peer_id: str
    listen_addrs: tuple[str, ...]  # each ends in /p2p/<peer id>
    rpc_url: str
    token_path: Path

    @classmethod
    def parse(cls, text: str) -> Banner:
        peer_id, rpc_url, token_path = "", "", ""
        addrs: list[str] = []
        in_addrs = False
        for line in text.splitlines():
            words = line.split()
            if line.startswith("  peer id "):
                peer_id = words[-1]
            elif line.startswith("  listening "):
                addrs.append(words[-1])
                in_addrs = True
                continue
            elif in_addrs and line.startswith("             /"):  # the addresses after the first
                addrs.append(words[-1])
                continue
            elif line.startswith("  rpc "):
                rpc_url = words[1]
                token_path = line.rsplit("token: ", 1)[-1].rstrip(")")
            in_addrs = False
        if not (peer_id and addrs and rpc_url and token_path):
            raise ValueError(f"not an lpnode banner: {text!r}")
        return cls(text, peer_id, tuple(addrs), rpc_url, Path(token_path))


@dataclass(frozen=True)
class Launch:
    """How one node is started; kept so that :meth:`Cluster.restart` starts it the same way."""

    serve: str = "none"  # --serve: comma-separated presets, or "none" (a requester only)
    bootstrap: tuple[str, ...] = ()
    config: str = ""  # TOML appended to the cluster's base config, for this node only
    args: tuple[str, ...] = ()  # more `lpnode run` flags (--cheat=..., --device=...)
    command: tuple[str, ...] = LPNODE_RUN  # what runs `lpnode run`; bench wraps it with probes


@dataclass
class NodeProcess:
    """One running node. ``client`` belongs to the cluster's trio loop; other loops open their own."""

    name: str
    process: trio.Process
    data_dir: Path
    banner: Banner
    client: LpnodeClient
    launch: Launch
    log: Path

    @property
    def peer_id(self) -> str:
        return self.banner.peer_id

    @property
    def addr(self) -> str:
        """Its loopback libp2p address, with /p2p/<peer id>: what another node bootstraps from."""
        for addr in self.banner.listen_addrs:
            if addr.startswith("/ip4/127.0.0.1/"):
                return addr
        raise LookupError(f"{self.name} listens on no loopback address: {self.banner.listen_addrs}")

    @property
    def url(self) -> str:
        return self.banner.rpc_url

    @property
    def token(self) -> str:
        return self.banner.token_path.read_text().strip()

    def open_client(self, *, timeout_s: float = 10.0) -> LpnodeClient:
        """A client of this node for the caller's own trio loop."""
        return LpnodeClient(self.url, self.token, data_dir=self.data_dir, timeout_s=timeout_s)

    def http(self, *, timeout_s: float = 120.0) -> httpx.AsyncClient:
        """Raw HTTP to the node's RPC API with its token, for status codes and bodies the client would hide."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s, trust_env=False)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def kill(self) -> None:
        """SIGKILL: the fault tests' crash, no clean-up on the node's side."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, signum: int = signal.SIGINT, *, timeout_s: float = STOP_S) -> int:
        """A clean stop (SIGINT as Ctrl-C, or SIGTERM); the exit status."""
        if self.running:
            self.process.send_signal(signum)
        with trio.fail_after(timeout_s):
            return await self.process.wait()


@dataclass
class Cluster:
    """Launches ``lpnode run`` processes under ``root``; :meth:`aclose` kills whatever still runs."""

    root: Path
    base_config: str = FAST_GOSSIP
    startup_s: float = STARTUP_S
    nodes: list[NodeProcess] = field(default_factory=list)
    _starting: list[tuple[trio.Process, Path]] = field(default_factory=list)
    _closed: bool = False

    async def launch(
        self,
        name: str,
        *,
        serve: str = "none",
        bootstrap: Sequence[str] = (),
        config: str = "",
        args: Sequence[str] = (),
        command: Sequence[str] = LPNODE_RUN,
    ) -> NodeProcess:
        """Start a node with a fresh data dir ``root/name`` and wait for its banner."""
        data_dir = self.root / name
        data_dir.mkdir()
        launch = Launch(serve, tuple(bootstrap), config, tuple(args), tuple(command))
        return await self._start(name, data_dir, launch, data_dir / "node.log")

    async def restart(self, node: NodeProcess, *, bootstrap: Sequence[str] | None = None) -> NodeProcess:
        """``node`` again on its data dir (same identity, records and store), launched as before.

        The old process must have ended (:meth:`NodeProcess.kill` or ``stop`` first).
        ``bootstrap`` replaces the original list (its addresses may have gone).
        """
        if node.running:
            raise RuntimeError(f"{node.name} still runs: kill or stop it before a restart")
        launch = node.launch if bootstrap is None else replace(node.launch, bootstrap=tuple(bootstrap))
        runs = sum(1 for n in self.nodes if n.data_dir == node.data_dir)
        return await self._start(node.name, node.data_dir, launch, node.data_dir / f"node-{runs + 1}.log")

    async def _start(self, name: str, data_dir: Path, launch: Launch, log: Path) -> NodeProcess:
        if self._closed:
            raise RuntimeError("the cluster is closed")
        config_file = data_dir / "node.toml"
        config_file.write_text(self.base_config + launch.config)
        argv = [
            *launch.command,
            f"--data-dir={data_dir}",
            f"--config={config_file}",
            "--listen=/ip4/127.0.0.1/tcp/0",
            "--rpc=127.0.0.1:0",
            "--no-mdns",  # processes of other tests on this machine must not find these
            f"--serve={launch.serve}",
            *(f"--bootstrap={addr}" for addr in launch.bootstrap),
            *launch.args,
        ]
        with log.open("wb") as log_file:  # the child keeps its own copy of the descriptor
            process = await trio.lowlevel.open_process(argv, stdout=-1, stderr=log_file)
        self._starting.append((process, log))
        try:
            with trio.move_on_after(self.startup_s) as waited:
                text = await _read_banner(process, log)
            if waited.cancelled_caught:
                raise NodeNotReady(f"{name} printed no banner within {self.startup_s} s; log:\n{_tail(log)}")
        except BaseException:
            process.kill()
            raise
        banner = Banner.parse(text)
        client = LpnodeClient(banner.rpc_url, banner.token_path.read_text().strip(), data_dir=data_dir)
        node = NodeProcess(name, process, data_dir, banner, client, launch, log)
        self.nodes.append(node)
        return node

    def logs(self) -> str:
        return "\n".join(f"--- {log.parent.name}/{log.name} ---\n{log.read_text()}" for _, log in self._starting)

    async def aclose(self) -> None:
        """Kill every process still running and wait for each; safe to call twice."""
        self._closed = True
        with trio.CancelScope(shield=True):
            for process, _ in self._starting:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()  # our end of its banner pipe
            for node in self.nodes:
                await node.client.aclose()


@asynccontextmanager
async def open_cluster(
    root: Path, *, base_config: str = FAST_GOSSIP, startup_s: float = STARTUP_S
) -> AsyncIterator[Cluster]:
    """A cluster whose processes all end with the block; their logs go to stderr if the block fails."""
    cluster = Cluster(root, base_config, startup_s)
    try:
        yield cluster
    except BaseException:
        print(cluster.logs(), file=sys.stderr)  # pytest shows it with the failure
        raise
    finally:
        await cluster.aclose()


async def _read_banner(process: trio.Process, log: Path) -> str:
    assert process.stdout is not None
    text = b""
    while b"data dir" not in text:  # the banner's last line; stdout carries nothing else
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise NodeNotReady(f"lpnode run exited with {await process.wait()} before it was ready; log:\n{_tail(log)}")
        text += chunk
        if len(text) > BANNER_MAX_BYTES:
            raise NodeNotReady(f"lpnode run printed {len(text)} bytes and no banner: {text[:500]!r}")
    return text.decode()


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


# ------------------------------------------------------------------ waiting on other processes


async def wait_for_peers(
    node: NodeProcess | LpnodeClient,
    done: Callable[[PeerList], bool],
    *,
    timeout_s: float,
    what: str = "",
) -> PeerList:
    """Long-poll ``node``'s peer list until ``done`` holds; the list then. :class:`WaitTimeout` past ``timeout_s``."""
    client = node.client if isinstance(node, NodeProcess) else node
    answer: dict[str, Any] = {"peers": []}
    with trio.move_on_after(timeout_s):
        answer = await client.peers()
        while not done(answer["peers"]):
            answer = await client.peers(changed_since=answer["version"], wait_s=LONG_POLL_S)
        return list(answer["peers"])
    name = node.name if isinstance(node, NodeProcess) else str(client.data_dir)
    seen = [(p["peer_id"][:12], p.get("connected"), len(p.get("models", []))) for p in answer["peers"]]
    raise WaitTimeout(
        f"{name}: {what or getattr(done, '__name__', 'peer list')} not within {timeout_s} s; "
        f"last seen (peer, connected, models): {seen}"
    )


def exactly(peer_ids: set[str], *, connected: bool = False) -> Callable[[PeerList], bool]:
    """The peer list is exactly ``peer_ids`` (and each directly connected, if asked)."""

    def check(peers: PeerList) -> bool:
        return {p["peer_id"] for p in peers} == peer_ids and (not connected or all(p["connected"] for p in peers))

    check.__name__ = f"exactly {sorted(i[:12] for i in peer_ids)}{' connected' if connected else ''}"
    return check


def offers(peer_id: str, pipelines: Sequence[str] = ()) -> Callable[[PeerList], bool]:
    """``peer_id`` is listed with models (covering every one of ``pipelines``, if given)."""

    def check(peers: PeerList) -> bool:
        return any(
            p["peer_id"] == peer_id and p["models"] and {m["pipeline"] for m in p["models"]} >= set(pipelines)
            for p in peers
        )

    check.__name__ = f"{peer_id[:12]} offering {', '.join(pipelines) or 'models'}"
    return check


@dataclass(frozen=True)
class Pair:
    requester: NodeProcess
    worker: NodeProcess


async def launch_pair(
    cluster: Cluster,
    *,
    serve: str,
    pipelines: Sequence[str] = (),
    requester_config: str = "",
    timeout_s: float = 30.0,
) -> Pair:
    """The usual two nodes: a worker serving ``serve``, and a requester bootstrapped from it that sees its offer."""
    worker = await cluster.launch("worker", serve=serve)
    requester = await cluster.launch("requester", bootstrap=[worker.addr], config=requester_config)
    await wait_for_peers(requester, offers(worker.peer_id, pipelines), timeout_s=timeout_s)
    return Pair(requester, worker)


async def cli(*args: str) -> str:
    """``lpnode ARGS`` as a child process; its stdout. Fails with its stderr if it exits non-zero."""
    result = await trio.run_process([*LPNODE, *args], capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"lpnode {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
    return result.stdout.decode()


# ------------------------------------------------------------------ a cluster for synchronous code


class ClusterPortal:
    """A cluster living in a trio loop of its own, in a background thread.

    For code that is not inside that loop: synchronous tests (which run the CLI
    in-process, itself calling ``trio.run``) and module-scoped fixtures shared
    by trio tests (each test runs in a trio loop of its own). ``call`` runs a
    coroutine function on the cluster's loop and blocks until it returns.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, cluster: Cluster) -> None:
        self._token = token
        self.cluster = cluster

    def call(self, fn: Callable[[Cluster], Awaitable[T]]) -> T:
        async def run() -> T:
            return await fn(self.cluster)

        return trio.from_thread.run(run, trio_token=self._token)


@contextmanager
def cluster_in_thread(
    root: Path, *, base_config: str = FAST_GOSSIP, startup_s: float = STARTUP_S
) -> Iterator[ClusterPortal]:
    """:func:`open_cluster` in a background thread; every process ends when the block does."""
    handoff: queue.Queue[ClusterPortal | BaseException] = queue.Queue(maxsize=1)
    finish: list[trio.Event] = []
    failure: list[BaseException] = []

    async def host() -> None:
        async with open_cluster(root, base_config=base_config, startup_s=startup_s) as cluster:
            finish.append(trio.Event())
            handoff.put(ClusterPortal(trio.lowlevel.current_trio_token(), cluster))
            await finish[0].wait()

    def thread_main() -> None:
        try:
            trio.run(host)
        except BaseException as exc:  # handed to the caller: a thread's exception is lost otherwise
            failure.append(exc)
            if handoff.empty():
                handoff.put(exc)

    thread = threading.Thread(target=thread_main, name="lpnode-cluster", daemon=True)
    thread.start()
    started = handoff.get(timeout=60)
    if isinstance(started, BaseException):
        raise started
    try:
        yield started
    except BaseException:
        print(started.cluster.logs(), file=sys.stderr)
        raise
    finally:
        with suppress(trio.RunFinishedError):  # the loop ended already: its failure is in `failure`
            trio.from_thread.run_sync(finish[0].set, trio_token=started._token)
        thread.join(timeout=STOP_S + 30)
        if failure:
            raise failure[0]


__all__ = [
    "FAST_GOSSIP",
    "LPNODE",
    "LPNODE_RUN",
    "STARTUP_S",
    "Banner",
    "Cluster",
    "ClusterPortal",
    "Launch",
    "NodeNotReady",
    "NodeProcess",
    "Pair",
    "WaitTimeout",
    "cli",
    "cluster_in_thread",
    "exactly",
    "launch_pair",
    "offers",
    "open_cluster",
    "wait_for_peers",
]
