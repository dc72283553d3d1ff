"""The production :class:`~lpnode.node.network.base.Network`: real libp2p.

TCP + Noise + Yamux hosts from py-libp2p 0.8.1, gossipsub for adverts, direct
streams for negotiation. Everything py-libp2p does in a way we cannot accept
(see "Verified facts about the stack" in the design notes) is corrected here or
in the ``_libp2p_*`` helpers, never worked around by callers:

- only Noise is offered, so plaintext and secio dialers are refused;
- gossipsub heartbeats every ~1 s and its silent spam cap is off
  (``_libp2p_pubsub``);
- connection health pings drop a frozen peer within seconds instead of 60–90;
- inbound streams are bounded and a crashing handler costs only its stream
  (``_libp2p_stream``);
- leaving the context closes the host explicitly (py-libp2p leaks otherwise);
- yamux is lpnode's own (``_yamux``): py-libp2p's costs ~0.4 ms of Python per message
  and polls every 10 ms for flow-control credit; the wire protocol is the same.

Usage::

    async with open_libp2p_network(key, Libp2pConfig()) as net:
        await net.connect("/ip4/192.0.2.7/tcp/9471/p2p/12D3KooW...")
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import ifaddr
import multiaddr.exceptions
import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetConn, INetStream, INetwork, INotifee, ISecureConn
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ...protocol.errors import NetworkError, PeerUnreachable
from ...protocol.signing import NodeKey
from . import _libp2p_health
from ._libp2p_mdns import serve_mdns
from ._libp2p_pubsub import LpnodePubsub, make_router
from ._libp2p_stream import TRANSPORT_ERRORS, InboundHandlerRoot, Libp2pStream
from ._multiselect import PipelinedMultiselectClient
from ._noise_reads import NoiseTransport
from ._yamux import YamuxConnection
from .base import (
    ByteStream,
    ConnectionEvent,
    ConnectionEventFanout,
    ConnectionEventKind,
    GossipMessage,
    GossipValidator,
    PeerId,
    StreamHandler,
)
from .ports import multiaddr_port_in_use

__all__ = ["Libp2pConfig", "Libp2pNetwork", "open_libp2p_network"]

log = logging.getLogger("lpnode.network.libp2p")

# Receivers drop pubsub RPCs above 1 MiB (py-libp2p's default frame limit);
# refusing here turns a silent loss into an error at the publisher.
MAX_GOSSIP_BYTES = 1024 * 1024 - 4096
_ADDR_HINT_TTL_S = 600  # how long a dial hint from open_stream() stays in the peerstore
_UNSUBSCRIBE_GRACE_S = 2.0  # bound on announcing an unsubscription while leaving a topic
_CLOSE_GRACE_S = 5.0  # bound on closing connections politely before the host's tasks are cancelled


@dataclass(frozen=True)
class Libp2pConfig:
    """How a node's libp2p host is set up. Times are in seconds."""

    # TCP multiaddrs to listen on, without /p2p; port 0 picks a free port.
    listen_addrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/9471",)
    # Find and dial peers on the LAN by mDNS.
    enable_mdns: bool = True
    # Bind mDNS to the interface with this address ("127.0.0.1" in tests); None: all interfaces.
    mdns_interface_addr: str | None = None
    # Private mDNS namespace (service "_p2p-<tag>"): only nodes with the same tag find each other.
    mdns_network_tag: str | None = None
    gossip_heartbeat_s: float = 1.0
    # Ping every connection this often; a ping unanswered within ping_timeout_s drops it.
    health_check_interval_s: float = 3.0
    # 2 s dropped healthy but CPU-starved peers (20 nodes on 2 cores: hundreds of false
    # drops a minute, each a reconnect); a frozen peer is still noticed in ~5-8 s
    ping_timeout_s: float = 5.0
    # Inbound streams handled at once, over all peers and protocols; more are reset.
    max_inbound_streams: int = 128
    # Bound on dialing a peer plus negotiating a stream's protocol.
    dial_timeout_s: float = 10.0
    # The yamux implementation: "lpnode" (``_yamux``) or "py-libp2p" (its own, for benchmarks that compare).
    muxer: Literal["lpnode", "py-libp2p"] = "lpnode"

    def __post_init__(self) -> None:
        if not self.listen_addrs:
            raise ValueError("Libp2pConfig.listen_addrs: at least one address is needed")
        for addr in self.listen_addrs:
            _check_listen_addr(addr)
        for name in ("gossip_heartbeat_s", "health_check_interval_s", "ping_timeout_s", "dial_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Libp2pConfig.{name} must be a positive number of seconds, got {value!r}")
        if self.muxer not in ("lpnode", "py-libp2p"):
            raise ValueError(f"Libp2pConfig.muxer must be 'lpnode' or 'py-libp2p', got {self.muxer!r}")
        if self.max_inbound_streams < 1:
            raise ValueError(f"Libp2pConfig.max_inbound_streams must be >= 1, got {self.max_inbound_streams}")
        if self.mdns_interface_addr is not None:
            try:
                unspecified = ipaddress.ip_address(self.mdns_interface_addr).is_unspecified
            except ValueError:
                unspecified = True
            if unspecified:
                raise ValueError(
                    "Libp2pConfig.mdns_interface_addr must be one interface's IP address (None for all),"
                    f" got {self.mdns_interface_addr!r}"
                )
        tag = self.mdns_network_tag
        # DNS-SD service names ("p2p-<tag>") are at most 15 bytes (RFC 6763 §7.2).
        if tag is not None and not (0 < len(tag) <= 11 and tag.isascii() and tag.replace("-", "").isalnum()):
            raise ValueError(f"Libp2pConfig.mdns_network_tag must be 1-11 ASCII letters, digits or '-', got {tag!r}")


def _check_listen_addr(addr: str) -> None:
    try:
        parsed = Multiaddr(addr)
    except (ValueError, multiaddr.exceptions.Error) as exc:
        raise ValueError(f"Libp2pConfig.listen_addrs: {addr!r} is not a multiaddr ({exc})") from None
    names = [p.name for p in parsed.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ValueError(f"Libp2pConfig.listen_addrs: {addr!r} must look like /ip4/<ip>/tcp/<port>")


class _ConnectionNotifee(INotifee):
    """Turns py-libp2p's per-connection callbacks into per-peer events."""

    def __init__(self, network: Libp2pNetwork) -> None:
        self._network = network

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._network._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._network._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return


# How long listen addresses are reused: an interface's address may change (DHCP), a bound port does not.
LISTEN_ADDRS_TTL_S = 30.0


class Libp2pNetwork:
    """A started libp2p node; obtain one from :func:`open_libp2p_network`."""

    def __init__(self, host: IHost, config: Libp2pConfig) -> None:
        self._host = host
        self._config = config
        self._local_peer = host.get_id().to_base58()
        self._counters: Counter[str] = Counter()
        self._pubsub = LpnodePubsub(
            host, make_router(config.gossip_heartbeat_s), on_subscribed=self._on_subscribed, stats=self._counters
        )
        self._inbound_limiter = trio.CapacityLimiter(config.max_inbound_streams)
        self._connected: set[ID] = set()
        self._events = ConnectionEventFanout()
        self._close_requested = trio.Event()
        self._closed = trio.Event()
        self._listen_addrs: tuple[list[str], float] | None = None  # (addresses, when they were read)
        host.get_network().register_notifee(_ConnectionNotifee(self))

    # -- Network ----------------------------------------------------------------------

    @property
    def local_peer(self) -> PeerId:
        return self._local_peer

    def listen_addrs(self) -> list[str]:
        # Kept for LISTEN_ADDRS_TTL_S: every advert carries them, and reading them (the listeners' sockets,
        # then the interfaces' addresses for a wildcard bind) cost a busy worker milliseconds per advert.
        now = trio.current_time()
        if self._listen_addrs is not None and now - self._listen_addrs[1] < LISTEN_ADDRS_TTL_S:
            return list(self._listen_addrs[0])
        suffix = f"/p2p/{self._local_peer}"
        out: list[str] = []
        for bound in self._host.get_transport_addrs():
            for addr in _expand_unspecified(bound):
                if addr + suffix not in out:
                    out.append(addr + suffix)
        if out:  # none before the listeners are up: read again next time
            self._listen_addrs = (out, now)
        return list(out)

    def connected_peers(self) -> frozenset[PeerId]:
        return frozenset(peer.to_base58() for peer, conns in self._swarm_connections().items() if conns)

    async def connect(self, addr: str) -> PeerId:
        self._check_open()
        try:
            info = info_from_p2p_addr(Multiaddr(addr))
        except (ValueError, multiaddr.exceptions.Error) as exc:
            raise PeerUnreachable(f"{addr!r} is not a multiaddr ending in /p2p/<peer id>: {exc}") from exc
        if info.peer_id == self._host.get_id():
            raise PeerUnreachable(f"{addr!r} is this node's own address")
        if not self._swarm_connections().get(info.peer_id):
            # An explicit connect dials for real. py-libp2p's swarm otherwise refuses, for a while, to dial a
            # peer whose addresses all failed (its "negative cache"): a restarted bootstrap node then stayed
            # alone for ~50 s while peering redialed it every 8 s. Callers of connect back off themselves.
            swarm = self._host.get_network()
            if isinstance(swarm, Swarm):
                swarm.unblock_peer(info.peer_id)
            await self._dial(info, what=addr)
        return info.peer_id.to_base58()

    async def publish(self, topic: str, data: bytes) -> None:
        self._check_open()
        if len(data) > MAX_GOSSIP_BYTES:
            raise ValueError(f"gossip message of {len(data)} bytes exceeds {MAX_GOSSIP_BYTES}")
        await self._pubsub.publish(topic, data)
        self._counters["gossip_published"] += 1

    def subscribe(
        self, topic: str, validator: GossipValidator | None = None, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        if buffer < 0:
            raise ValueError("buffer must be >= 0")
        return self._subscription(topic, validator, buffer)

    def topic_peers(self, topic: str) -> frozenset[PeerId]:
        connections = self._swarm_connections()
        return frozenset(peer.to_base58() for peer in self._pubsub.peer_topics.get(topic, ()) if connections.get(peer))

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        return self._events.subscribe(buffer)

    async def open_stream(self, peer: PeerId, protocol_id: str, addrs: Sequence[str] = ()) -> ByteStream:
        self._check_open()
        try:
            peer_id = ID.from_base58(peer)
        except ValueError as exc:
            raise PeerUnreachable(f"{peer!r} is not a peer id") from exc
        hints = [hint for addr in addrs if (hint := _dial_hint(addr, peer_id)) is not None]
        if hints:
            self._host.get_peerstore().add_addrs(peer_id, hints, _ADDR_HINT_TTL_S)
        timeout = self._config.dial_timeout_s
        try:
            # One deadline for dial + stream + protocol negotiation; it also stops
            # the 257th stream on a connection from blocking forever.
            with trio.fail_after(timeout):
                raw = await self._host.new_stream(peer_id, [TProtocol(protocol_id)])
        except trio.TooSlowError as exc:
            raise PeerUnreachable(f"opening {protocol_id} to {peer} took longer than {timeout} s") from exc
        except TRANSPORT_ERRORS as exc:
            # py-libp2p wraps the reason (e.g. "protocol not supported") in a generic StreamFailure
            reason = f"{exc} ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
            raise PeerUnreachable(f"cannot open {protocol_id} to {peer}: {reason}") from exc
        self._counters["outbound_streams"] += 1
        return Libp2pStream(raw, peer, protocol_id)

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        root = InboundHandlerRoot(protocol_id, handler, self._inbound_limiter, self._counters)
        self._host.set_stream_handler(TProtocol(protocol_id), root)

    # -- beyond the interface ---------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since start, by name; a counter that never moved is absent.

        ``gossip_published``, ``gossip_delivered``, ``gossip_rejected`` (by a
        validator), ``gossip_dropped_slow_subscriber`` (subscription buffer full),
        ``inbound_streams``, ``inbound_streams_refused`` (over
        ``max_inbound_streams``), ``inbound_handler_crashes``, ``outbound_streams``,
        ``connection_events_dropped``, ``mdns_discoveries``, ...
        """
        return dict(self._counters)

    async def aclose(self) -> None:
        """Close every connection and stop the host; safe to call twice."""
        self._close_requested.set()
        await self._closed.wait()

    # -- internals --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._close_requested.is_set():
            raise NetworkError("the network is closed")

    def _swarm_connections(self) -> dict[ID, list[INetConn]]:
        return self._host.get_network().connections

    async def _dial(self, info: PeerInfo, *, what: str) -> None:
        timeout = self._config.dial_timeout_s
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError as exc:
            raise PeerUnreachable(f"dialing {what} took longer than {timeout} s") from exc
        except TRANSPORT_ERRORS as exc:
            raise PeerUnreachable(f"dialing {what} failed: {exc}") from exc

    async def _dial_discovered(self, info: PeerInfo) -> None:
        if self._swarm_connections().get(info.peer_id):
            return
        try:
            await self._dial(info, what=f"mDNS peer {info.peer_id}")
        except PeerUnreachable as exc:
            log.info("%s", exc)

    @asynccontextmanager
    async def _subscription(
        self, topic: str, validator: GossipValidator | None, buffer: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[GossipMessage]]:
        self._check_open()
        send, receive = trio.open_memory_channel[GossipMessage](buffer)
        self._pubsub.attach_sink(topic, send, validator)
        try:
            await self._pubsub.subscribe(topic)
            yield receive
        finally:
            self._pubsub.detach_sink(topic)
            send.close()
            if not self._close_requested.is_set():
                with trio.CancelScope(shield=True), trio.move_on_after(_UNSUBSCRIBE_GRACE_S):
                    await self._pubsub.unsubscribe(topic)

    def _emit(self, event: ConnectionEvent) -> None:
        if lost := self._events.emit(event):
            self._counters["connection_events_dropped"] += lost

    def _on_connected(self, peer: ID) -> None:
        if peer not in self._connected:
            self._connected.add(peer)
            self._emit(ConnectionEvent(ConnectionEventKind.CONNECTED, peer.to_base58()))

    def _on_disconnected(self, peer: ID) -> None:
        # The swarm drops a connection from its table before notifying, so an
        # empty entry means this was the peer's last connection.
        if peer in self._connected and not self._swarm_connections().get(peer):
            self._connected.discard(peer)
            self._emit(ConnectionEvent(ConnectionEventKind.DISCONNECTED, peer.to_base58()))

    def _on_subscribed(self, peer: ID, topic: str) -> None:
        self._emit(ConnectionEvent(ConnectionEventKind.SUBSCRIBED, peer.to_base58(), topic))

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until :meth:`aclose`; started by :func:`open_libp2p_network`."""
        host = self._host
        listen = [Multiaddr(a) for a in self._config.listen_addrs]
        try:
            async with (
                host.run(listen_addrs=listen),
                background_trio_service(self._pubsub),
                background_trio_service(self._pubsub.router),  # type: ignore[arg-type]
            ):
                await self._pubsub.wait_until_ready()
                async with trio.open_nursery() as tasks:
                    if self._config.enable_mdns:
                        await tasks.start(self._serve_mdns)
                    task_status.started()
                    await self._close_requested.wait()
                    tasks.cancel_scope.cancel()
                # Outside the nursery, whose cancellation would also cancel this.
                # Explicit: leaving host.run() alone leaves connections open.
                with trio.move_on_after(_CLOSE_GRACE_S):
                    await host.close()
        finally:
            self._close_requested.set()
            with trio.CancelScope(shield=True):
                await host.close()  # idempotent; covers leaving by error or cancellation
            self._events.close()
            self._closed.set()

    async def _serve_mdns(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interface = self._config.mdns_interface_addr
        announce = [a for a in self.listen_addrs() if _announce_on(a, interface)]
        await serve_mdns(
            peer_id=self._local_peer,
            announce_addrs=announce,
            interface_addr=interface,
            network_tag=self._config.mdns_network_tag,
            dial=self._dial_discovered,
            stats=self._counters,
            task_status=task_status,
        )


@asynccontextmanager
async def open_libp2p_network(key: NodeKey, config: Libp2pConfig) -> AsyncIterator[Libp2pNetwork]:
    """Start a libp2p node with ``key``'s identity; leaving the block closes it.

    Raises :class:`NetworkError` for a fixed listen port another process holds (``ports``): py-libp2p
    would share it silently.
    """
    for addr in config.listen_addrs:
        if multiaddr_port_in_use(addr):
            raise NetworkError(f"cannot listen on {addr}: another process holds that port (another node?)")
    network = Libp2pNetwork(_new_host(key, config), config)
    async with trio.open_nursery() as nursery:
        await nursery.start(network._serve)
        try:
            yield network
        finally:
            with trio.CancelScope(shield=True):
                await network.aclose()


def _new_host(key: NodeKey, config: Libp2pConfig) -> IHost:
    _libp2p_health.install()  # a peer that serves no ping is alive, not dropped at the first health check
    key_pair = create_new_key_pair(key.seed)  # same seed as NodeKey: same peer id
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    health = ConnectionConfig(
        dial_timeout=config.dial_timeout_s,
        outbound_stream_protocol_negotiation_timeout=config.dial_timeout_s,
        enable_health_monitoring=True,
        health_initial_delay=0.0,
        health_warmup_window=0.0,
        health_check_interval=config.health_check_interval_s,
        ping_timeout=config.ping_timeout_s,
        abort_connection_on_ping_failure=True,
        min_connections=0,
        low_watermark=0,
    )
    muxers: TMuxerOptions = {TProtocol(YAMUX_PROTOCOL_ID): YamuxConnection if config.muxer == "lpnode" else Yamux}
    host = new_host(
        key_pair=key_pair,
        # Only Noise: new_host's default also accepts plaintext and secio.
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=muxers,
        listen_addrs=[Multiaddr(a) for a in config.listen_addrs],
        enable_mDNS=False,  # ours is in _libp2p_mdns: pinned interface, and it dials
        connection_config=health,
    )
    # header and proposal in one write: a new stream costs one round trip, not two (_multiselect)
    assert isinstance(host, BasicHost), f"new_host made a {type(host).__name__}"
    host.multiselect_client = PipelinedMultiselectClient()
    swarm = host.get_network()
    assert isinstance(swarm, Swarm), f"new_host made a {type(swarm).__name__} network"
    # py-libp2p's auto-connector dials peerstore entries toward the midpoint of its watermarks
    # (150 with the default high watermark of 300, whatever low_watermark says) every 30 s and
    # after each disconnect, and the peerstore is never pruned; the node's own dialer decides
    # whom to keep connected (node/peering.py). Its entry point does nothing on this host.
    swarm.auto_connector.maybe_connect = _no_auto_connect  # type: ignore[method-assign]
    swarm.upgrader.muxer_multistream = _NegotiatedMuxer(muxers, swarm.upgrader.muxer_multistream.negotiate_timeout)
    _remember_transport_addrs(host)
    return host


def _remember_transport_addrs(host: BasicHost) -> None:
    """py-libp2p reads its listeners' sockets and parses their multiaddrs again on every gossip publish
    (for the signed peer record it attaches): milliseconds of a busy worker's event loop per advert. A
    bound listener's address does not change, so the first non-empty answer is kept."""
    read = host.get_transport_addrs
    known: list[Multiaddr] = []

    def remembered() -> list[Multiaddr]:
        if not known:
            known.extend(read())
        return list(known)

    host.get_transport_addrs = remembered  # type: ignore[method-assign]


class _NegotiatedMuxer(MuxerMultistream):
    """py-libp2p's muxer negotiation, building the class it negotiated: 0.8.1's ``new_conn`` builds its
    own ``Yamux`` for ``/yamux/1.0.0`` whatever class the host was given."""

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        muxer = await self.select_transport(conn)
        protocol = next(p for p, cls in self.transports.items() if cls is muxer)
        return self._annotate_connection(muxer(conn, peer_id), conn, protocol)


async def _no_auto_connect() -> None:
    """The auto-connector's ``maybe_connect`` on our hosts: the node's dialer does that job (see above)."""


def _dial_hint(addr: str, peer: ID) -> Multiaddr | None:
    """``addr`` without its ``/p2p`` part, or None (logged) if it is unusable for ``peer``."""
    try:
        parsed = Multiaddr(addr)
        named = parsed.value_for_protocol("p2p") if "p2p" in [p.name for p in parsed.protocols()] else None
    except (ValueError, multiaddr.exceptions.Error) as exc:
        log.info("ignoring address hint %r: %s", addr, exc)
        return None
    if named is None:
        return parsed
    if named != peer.to_base58():
        log.info("ignoring address hint %r: it names another peer than %s", addr, peer)
        return None
    return parsed.decapsulate(Multiaddr(f"/p2p/{named}"))


def _expand_unspecified(bound: Multiaddr) -> list[str]:
    """A bound address as peers can dial it: ``0.0.0.0``/``::`` become interface addresses."""
    text = str(bound)
    names = [p.name for p in bound.protocols()]
    family = names[0] if names else ""
    if family not in ("ip4", "ip6"):
        return [text]
    ip = ipaddress.ip_address(bound.value_for_protocol(family))
    if not ip.is_unspecified:
        return [text]
    rest = text.split("/", 3)[3]  # "tcp/<port>"
    return [f"/{family}/{local}/{rest}" for local in _interface_ips(version=ip.version)]


def _interface_ips(*, version: int) -> list[str]:
    """This machine's addresses of one IP version, loopback first; IPv6 link-local left out."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            raw = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            ip = ipaddress.ip_address(raw.split("%")[0])
            if ip.version == version and not ip.is_link_local and ip not in found:
                found.append(ip)
    found.sort(key=lambda ip: not ip.is_loopback)
    return [str(ip) for ip in found]


def _announce_on(addr: str, interface: str | None) -> bool:
    """Whether to announce ``addr`` by mDNS: on the pinned interface only, else never loopback."""
    ip = ipaddress.ip_address(addr.split("/")[2])
    if interface is not None:
        return ip == ipaddress.ip_address(interface)
    return not ip.is_loopback
