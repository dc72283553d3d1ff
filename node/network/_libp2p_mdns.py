"""mDNS discovery for the libp2p backend (https://github.com/libp2p/specs/blob/master/discovery/mdns.md).

We use py-libp2p's broadcaster and listener but not its ``MDNSDiscovery``
(``new_host(enable_mDNS=True)``), because that one:

- binds every interface, with no way to pin it (tests must stay on loopback);
- reports peers through a process-wide singleton, so every host in a process
  hears every other host's discoveries, from zeroconf's thread;
- only writes discovered addresses into the peerstore and never dials them;
- advertises the raw listen addresses, ``0.0.0.0`` included;
- registers and closes zeroconf on the event loop, blocking it for the
  duration of the mDNS probe.

Here zeroconf is bound to the chosen interface, blocking calls run in worker
threads, and each discovered peer goes through a bounded channel (handed over
with ``TrioToken.run_sync_soon``, the thread-safe way in) to a task that dials it.

Zeroconf runs on an asyncio loop of our own, in a thread of our own. Left to
itself it would make one with ``asyncio.new_event_loop()``, which trio-asyncio
(imported by the node's store) patches process-wide to return a loop that only
works inside trio: zeroconf's thread would then fail at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio
from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
from libp2p.discovery.mdns.listener import PeerListener
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr
from zeroconf import InterfaceChoice, Zeroconf

log = logging.getLogger("lpnode.network.libp2p")

_SERVICE_TYPE = "_p2p._udp.local."
_DISCOVERY_QUEUE = 64  # discovered peers waiting to be dialled; more are dropped (and re-announced later)
_LOOP_START_TIMEOUT_S = 10.0


@contextlib.contextmanager
def _asyncio_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """A plain asyncio loop running in a daemon thread, stopped and closed at exit (blocking)."""
    # the policy's own factory, not asyncio.new_event_loop(): trio-asyncio replaces that one
    loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
    ready = threading.Event()

    def run() -> None:
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="lpnode-mdns", daemon=True)
    thread.start()
    try:
        if not ready.wait(_LOOP_START_TIMEOUT_S):
            raise RuntimeError("mDNS: the asyncio loop thread did not start")
        yield loop
    finally:
        # zeroconf leaves announcement tasks pending at close: end them before the loop goes
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(_LOOP_START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _open_zeroconf(interfaces: Sequence[str] | InterfaceChoice) -> tuple[Zeroconf, contextlib.ExitStack]:
    """Zeroconf on its own loop thread (blocking); closing the stack stops that thread."""
    stack = contextlib.ExitStack()
    loop = stack.enter_context(_asyncio_loop_thread())

    async def create() -> Zeroconf:  # inside the loop, so zeroconf adopts it instead of making one
        return Zeroconf(interfaces=interfaces)

    try:
        zc = asyncio.run_coroutine_threadsafe(create(), loop).result(_LOOP_START_TIMEOUT_S)
    except BaseException:
        stack.close()
        raise
    return zc, stack


def service_type(network_tag: str | None) -> str:
    """The spec's service name, or its private-network variant ``_p2p-<tag>``."""
    return f"_p2p-{network_tag}._udp.local." if network_tag else _SERVICE_TYPE


class _Listener(PeerListener):
    """py-libp2p's listener, reporting to us instead of its global singleton.

    Runs in zeroconf's thread: it only parses and hands over, never touches
    the peerstore (which is not thread-safe).
    """

    def __init__(self, zc: Zeroconf, stype: str, own_name: str, report: Callable[[PeerInfo], None]) -> None:
        self._report = report
        super().__init__(peerstore=None, zeroconf=zc, service_type=stype, service_name=own_name)  # type: ignore[arg-type]

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        if name == self.service_name or type_ != self.service_type:
            return
        info = self._get_service_info_with_retry(zc, type_, name)
        peer_info = self._extract_peer_info(info) if info is not None else None
        if peer_info is not None:
            self._report(peer_info)

    update_service = add_service

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        return  # a vanished announcement says nothing about the connection


async def serve_mdns(
    *,
    peer_id: str,
    announce_addrs: Sequence[str],
    interface_addr: str | None,
    network_tag: str | None,
    dial: Callable[[PeerInfo], Awaitable[None]],
    stats: Counter[str],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce ``announce_addrs`` and dial peers found, until cancelled."""
    stype = service_type(network_tag)
    own_name = f"{secrets.token_hex(16)}.{stype}"
    interfaces = [interface_addr] if interface_addr else InterfaceChoice.All
    zc, loop_thread = await trio.to_thread.run_sync(_open_zeroconf, interfaces)
    found_send, found_recv = trio.open_memory_channel[PeerInfo](_DISCOVERY_QUEUE)
    token = trio.lowlevel.current_trio_token()

    def offer(info: PeerInfo) -> None:  # on the trio thread
        if info.peer_id.to_base58() == peer_id:
            return
        try:
            found_send.send_nowait(info)
        except (trio.WouldBlock, trio.ClosedResourceError):
            stats["mdns_discoveries_dropped"] += 1

    def report(info: PeerInfo) -> None:  # on zeroconf's thread
        with contextlib.suppress(trio.RunFinishedError):  # the node is gone; so is the interest
            token.run_sync_soon(offer, info)

    port = next((int(p) for a in announce_addrs if (p := Multiaddr(a).value_for_protocol("tcp"))), 0)
    broadcaster = PeerBroadcaster(
        zeroconf=zc,
        service_type=stype,
        service_name=own_name,
        peer_id=peer_id,
        port=port,
        listen_addrs=list(announce_addrs),
    )
    listener: _Listener | None = None
    try:
        if announce_addrs:
            await trio.to_thread.run_sync(broadcaster.register)
        else:
            log.warning("mDNS: no address to announce on %s; only listening", interface_addr or "any interface")
        listener = _Listener(zc, stype, own_name, report)
        task_status.started()
        async for info in found_recv:
            stats["mdns_discoveries"] += 1
            await dial(info)
    finally:
        found_send.close()
        if listener is not None:
            listener.stop()

        def shut_down() -> None:
            try:
                if announce_addrs:
                    broadcaster.unregister()
                zc.close()
            finally:
                loop_thread.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shut_down)
