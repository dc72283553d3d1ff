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
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio
from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
from libp2p.discovery.mdns.listener import PeerListener
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr
from zeroconf import InterfaceChoice, Zeroconf

log = logging.getLogger("lpnode.network.libp2p")

_SERVICE_TYPE = "_p2p._udp.local."
_DISCOVERY_QUEUE = 64  # discovered peers waiting to be dialled; more are dropped (and re-announced later)


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
    zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=interfaces))
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
            if announce_addrs:
                broadcaster.unregister()
            zc.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shut_down)
