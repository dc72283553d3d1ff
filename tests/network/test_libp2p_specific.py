"""What only the libp2p backend has to get right: transport security, gossip
authentication against raw py-libp2p peers, stream bounds, addresses, failure detection.

All on 127.0.0.1; every test waits on events under ``trio.fail_after``.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import pytest
import trio

# imported by every node (its store's asyncio bridge): it patches asyncio.new_event_loop process-wide,
# which once broke zeroconf's own loop thread at close; mDNS must work with it loaded
import trio_asyncio  # noqa: F401
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.network.health import monitor as health_monitor
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.tools.anyio_service import background_trio_service
from lpnode.node.network._libp2p_health import ping_connection
from lpnode.node.network.base import ByteStream, ConnectionEventKind, GossipMessage
from lpnode.node.network.libp2p import Libp2pConfig, Libp2pNetwork, open_libp2p_network
from lpnode.protocol.errors import NetworkError, PeerUnreachable, StreamClosed

from .conftest import deterministic_key, wait_subscribed

TOPIC = "lpnode/test/1"
DEADLINE = 20  # seconds
LOOPBACK = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)


@asynccontextmanager
async def _nodes(*configs: Libp2pConfig, first_key: int = 0) -> AsyncIterator[list[Libp2pNetwork]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_libp2p_network(deterministic_key(first_key + i), config))
            for i, config in enumerate(configs)
        ]


@asynccontextmanager
async def _raw_host(host: IHost) -> AsyncIterator[IHost]:
    """A bare py-libp2p host on loopback, playing a peer that does not run lpnode."""
    try:
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            yield host
    finally:
        await host.close()


async def test_plaintext_dialer_is_refused() -> None:
    key_pair = create_new_key_pair(deterministic_key(40).seed)
    plaintext_only = new_host(
        key_pair=key_pair, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    )
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (node,), _raw_host(plaintext_only) as raw:
            target = info_from_p2p_addr(multiaddr.Multiaddr(node.listen_addrs()[0]))
            with pytest.raises(Exception) as refused:
                await raw.connect(target)
            assert not isinstance(refused.value, trio.TooSlowError)
            assert node.connected_peers() == frozenset()
            assert not raw.get_network().connections


async def test_unsigned_gossip_is_neither_delivered_nor_forwarded() -> None:
    """A raw gossipsub peer without strict signing cannot inject messages."""
    relay_saw: list[bytes] = []

    def relay_validator(msg: GossipMessage) -> bool:
        relay_saw.append(msg.data)
        return True

    attacker_key = create_new_key_pair(deterministic_key(41).seed)
    attacker = new_host(key_pair=attacker_key)
    router = GossipSub(protocols=[PROTOCOL_ID_V12], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1)
    attacker_pubsub = Pubsub(attacker, router, strict_signing=False)
    with trio.fail_after(DEADLINE):
        async with (
            _nodes(LOOPBACK, LOOPBACK) as (relay, sink),
            _raw_host(attacker),
            background_trio_service(attacker_pubsub),
            background_trio_service(router),
        ):
            await attacker_pubsub.wait_until_ready()
            await sink.connect(relay.listen_addrs()[0])
            await attacker.connect(info_from_p2p_addr(multiaddr.Multiaddr(relay.listen_addrs()[0])))
            async with relay.subscribe(TOPIC, relay_validator), sink.subscribe(TOPIC) as at_sink:
                await wait_subscribed(relay, TOPIC, {sink.local_peer})
                await wait_subscribed(sink, TOPIC, {relay.local_peer})
                await attacker_pubsub.wait_for_subscription(ID.from_base58(relay.local_peer), TOPIC, timeout=DEADLINE)

                await attacker_pubsub.publish(TOPIC, b"unsigned")
                # Now sign, as an honest py-libp2p peer would, and send a marker behind it.
                attacker_pubsub.strict_signing = True
                attacker_pubsub.sign_key = attacker_key.private_key
                await attacker_pubsub.publish(TOPIC, b"signed")

                msg = await at_sink.receive()
                # The relay drops an unsigned message synchronously, on the first
                # scheduling of its task, long before the marker crosses two hops.
                assert msg.data == b"signed"
                assert msg.origin == str(attacker.get_id())
                assert msg.received_from == relay.local_peer
                assert relay_saw == [b"signed"]


async def test_rejected_gossip_is_not_forwarded_and_is_counted() -> None:
    rejected = trio.Event()

    def relay_validator(msg: GossipMessage) -> bool:
        if msg.data.startswith(b"forged"):
            rejected.set()
            return False
        return True

    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK, LOOPBACK, LOOPBACK) as (source, relay, sink):
            await source.connect(relay.listen_addrs()[0])
            await sink.connect(relay.listen_addrs()[0])
            async with (
                source.subscribe(TOPIC),
                relay.subscribe(TOPIC, relay_validator) as at_relay,
                sink.subscribe(TOPIC) as at_sink,
            ):
                await wait_subscribed(relay, TOPIC, {source.local_peer, sink.local_peer})
                await wait_subscribed(source, TOPIC, {relay.local_peer})
                await wait_subscribed(sink, TOPIC, {relay.local_peer})
                await source.publish(TOPIC, b"forged advert")
                await rejected.wait()  # rejection is final: validation precedes forwarding
                await source.publish(TOPIC, b"honest advert")
                at_relay_msg, at_sink_msg = await at_relay.receive(), await at_sink.receive()
                for msg in (at_relay_msg, at_sink_msg):
                    assert (msg.data, msg.origin) == (b"honest advert", source.local_peer)
                assert at_relay_msg.received_from == source.local_peer
                assert at_sink_msg.received_from == relay.local_peer
                assert relay.stats()["gossip_rejected"] == 1


async def test_aclose_closes_connections_at_once() -> None:
    """Leaving must close connections, not leave them for the peer's health checks."""
    no_pings = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False, health_check_interval_s=600)
    with trio.fail_after(DEADLINE):
        async with _nodes(no_pings, no_pings) as (stays, leaves), stays.connection_events() as events:
            await leaves.connect(stays.listen_addrs()[0])
            await leaves.aclose()
            await leaves.aclose()  # idempotent
            async for event in events:
                if event.kind is ConnectionEventKind.DISCONNECTED and event.peer == leaves.local_peer:
                    break
            assert stays.connected_peers() == frozenset()


async def test_inbound_streams_beyond_the_bound_are_reset() -> None:
    release = trio.Event()
    running = 0
    two_running = trio.Event()

    async def hold(stream: ByteStream) -> None:
        nonlocal running
        await stream.receive_some(1)
        running += 1
        if running == 2:
            two_running.set()
        await release.wait()
        await stream.send_all(b"done")

    bounded = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False, max_inbound_streams=2)
    with trio.fail_after(DEADLINE):
        async with _nodes(bounded, LOOPBACK) as (server, client):
            server.set_stream_handler("/lpnode/hold/1", hold)
            await client.connect(server.listen_addrs()[0])
            held = [await client.open_stream(server.local_peer, "/lpnode/hold/1") for _ in range(2)]
            for stream in held:
                await stream.send_all(b"x")
            await two_running.wait()
            await _assert_refused(client, server.local_peer, "/lpnode/hold/1")
            assert server.stats()["inbound_streams_refused"] == 1
            release.set()
            for stream in held:
                assert await stream.receive_some(10) == b"done"


async def _assert_refused(client: Libp2pNetwork, peer: str, protocol_id: str) -> None:
    """The server resets the stream right after negotiating it; depending on whether
    the reset overtakes the negotiation reply, the client sees a failed open or a
    stream that ends at once. Either way nothing is served."""
    try:
        stream = await client.open_stream(peer, protocol_id)
    except PeerUnreachable:
        return
    try:
        await stream.send_all(b"x")
    except StreamClosed:
        return
    assert await stream.receive_some(10) == b""


async def test_one_write_protocol_proposal_is_understood_by_a_stock_py_libp2p_listener() -> None:
    """Our dialer sends the multistream header and its proposal together (one round trip); a peer
    running py-libp2p's own listener negotiates it, and refuses an unknown protocol with "na",
    which reads as PeerUnreachable naming it while the connection stays usable."""
    served: list[bytes] = []

    async def echo(stream: INetStream) -> None:
        data = await stream.read(100)
        served.append(data)
        await stream.write(data.upper())
        await stream.close()

    raw_host = new_host(key_pair=create_new_key_pair(deterministic_key(41).seed))
    raw_host.set_stream_handler(TProtocol("/stock/echo/1"), echo)
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (node,), _raw_host(raw_host) as raw:
            addr = f"{raw.get_addrs()[0]}"
            await node.connect(addr)
            peer = raw.get_id().to_base58()
            with pytest.raises(PeerUnreachable, match="not supported"):
                await node.open_stream(peer, "/stock/unknown/1")
            for word in (b"one", b"two"):
                stream = await node.open_stream(peer, "/stock/echo/1")
                await stream.send_all(word)
                assert await stream.receive_some(100) == word.upper()
                await stream.aclose()
            assert served == [b"one", b"two"]


async def test_listen_addrs_name_interfaces_not_the_unspecified_address() -> None:
    wildcard = Libp2pConfig(listen_addrs=("/ip4/0.0.0.0/tcp/0",), enable_mdns=False)
    with trio.fail_after(DEADLINE):
        async with _nodes(wildcard, LOOPBACK) as (server, client):
            addrs = server.listen_addrs()
            assert addrs[0].startswith("/ip4/127.0.0.1/tcp/")
            assert not any("/0.0.0.0/" in a or a.split("/")[4] == "0" for a in addrs)
            assert all(a.endswith(f"/p2p/{server.local_peer}") for a in addrs)
            assert await client.connect(addrs[0]) == server.local_peer


async def test_connect_refuses_bad_addresses_with_a_clear_message() -> None:
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (node,):
            with pytest.raises(PeerUnreachable, match="not a multiaddr"):
                await node.connect("/ip4/127.0.0.1/tcp/1")  # no /p2p part
            with pytest.raises(PeerUnreachable, match="own address"):
                await node.connect(node.listen_addrs()[0])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="listen_addrs"):
        Libp2pConfig(listen_addrs=())
    with pytest.raises(ValueError, match="listen_addrs"):
        Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/udp/1",))
    with pytest.raises(ValueError, match="ping_timeout_s"):
        Libp2pConfig(ping_timeout_s=0)
    with pytest.raises(ValueError, match="max_inbound_streams"):
        Libp2pConfig(max_inbound_streams=0)
    with pytest.raises(ValueError, match="mdns_interface_addr"):
        Libp2pConfig(mdns_interface_addr="lo")
    with pytest.raises(ValueError, match="mdns_network_tag"):
        Libp2pConfig(mdns_network_tag="a-tag-too-long")


async def test_mdns_on_loopback_finds_and_dials_peers() -> None:
    tag = secrets.token_hex(5)  # a private namespace: other test runs on this machine stay invisible
    mdns = Libp2pConfig(
        listen_addrs=("/ip4/127.0.0.1/tcp/0",),
        enable_mdns=True,
        mdns_interface_addr="127.0.0.1",
        mdns_network_tag=tag,
    )
    with trio.fail_after(DEADLINE):
        async with (
            _nodes(mdns) as (first,),
            first.connection_events() as events,
            _nodes(mdns, first_key=1) as (second,),
        ):
            async for event in events:
                if event.kind is ConnectionEventKind.CONNECTED and event.peer == second.local_peer:
                    break


_FROZEN_PEER_SCRIPT = """
import sys, trio
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.protocol.signing import NodeKey

async def main():
    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    async with open_libp2p_network(NodeKey(bytes([77]) * 32), config) as net:
        print(net.listen_addrs()[0], flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.slow
async def test_frozen_peer_is_dropped_by_health_checks() -> None:
    fast = Libp2pConfig(
        listen_addrs=("/ip4/127.0.0.1/tcp/0",),
        enable_mdns=False,
        health_check_interval_s=1.0,
        ping_timeout_s=1.0,
    )
    child = await trio.lowlevel.open_process([sys.executable, "-c", _FROZEN_PEER_SCRIPT], stdout=subprocess.PIPE)
    try:
        with trio.fail_after(DEADLINE):
            addr = (await _read_line(child)).strip()
            async with _nodes(fast) as (node,), node.connection_events() as events:
                peer = await node.connect(addr)
                child.send_signal(signal.SIGSTOP)  # alive to the kernel, silent to us
                frozen_at = trio.current_time()
                async for event in events:
                    if event.kind is ConnectionEventKind.DISCONNECTED and event.peer == peer:
                        break
                assert peer not in node.connected_peers()
                assert trio.current_time() - frozen_at < 10
    finally:
        child.kill()
        with trio.CancelScope(shield=True):
            await child.wait()


async def _read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            raise AssertionError(f"child exited before printing its address (got {line!r})")
        line += chunk
    return line.decode()


async def test_garbage_pubsub_frame_costs_the_sender_its_stream_not_the_node() -> None:
    """One 5-byte frame that is no protobuf RPC used to crash the whole host (DecodeError)."""
    vandal = new_host(key_pair=create_new_key_pair(deterministic_key(42).seed))
    with trio.fail_after(DEADLINE):
        async with (
            _nodes(LOOPBACK, LOOPBACK) as (node, friend),
            _raw_host(vandal),
            node.subscribe(TOPIC),
            friend.subscribe(TOPIC) as at_friend,
        ):
            target = info_from_p2p_addr(multiaddr.Multiaddr(node.listen_addrs()[0]))
            await vandal.connect(target)
            stream = await vandal.new_stream(target.peer_id, [TProtocol("/meshsub/1.1.0")])
            await stream.write(bytes([4]) + b"\xff\xff\xff\xff")  # varint length 4, then not an RPC
            with pytest.raises(Exception):  # noqa: B017 - reset or EOF: py-libp2p raises either
                if not await stream.read(1):
                    raise StreamClosed("the node closed the garbage stream")
            # the node is alive and still gossips
            await friend.connect(node.listen_addrs()[0])
            await wait_subscribed(node, TOPIC, {friend.local_peer})
            await wait_subscribed(friend, TOPIC, {node.local_peer})
            await node.publish(TOPIC, b"still here")
            assert (await at_friend.receive()).data == b"still here"
            assert node.stats()["pubsub_streams_dropped"] == 1


async def test_a_peer_that_came_back_is_dialed_at_once_despite_py_libp2p_negative_cache() -> None:
    """A bootstrap node restarted on its old address: an explicit connect must reach it now (QA O8: py-libp2p's
    dial negative cache refused every redial for ~50 s, so the restarted node stayed alone)."""
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (dialer,):
            async with _nodes(LOOPBACK, first_key=1) as (first_life,):
                addr = next(a for a in first_life.listen_addrs() if "/127.0.0.1/" in a)
                await dialer.connect(addr)
            with pytest.raises(PeerUnreachable):  # gone: this failed dial puts it in the negative cache
                await dialer.connect(addr)
            port = multiaddr.Multiaddr(addr).value_for_protocol("tcp")
            again = Libp2pConfig(listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",), enable_mdns=False)
            async with _nodes(again, first_key=1) as (second_life,):
                assert await dialer.connect(addr) == second_life.local_peer


async def test_a_listen_port_another_process_holds_is_refused() -> None:
    """py-libp2p listens with SO_REUSEPORT: without this check a second node on a taken port starts silently
    and the kernel splits the first node's incoming connections between the two (QA O11)."""
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (first,):
            addr = next(a for a in first.listen_addrs() if "/127.0.0.1/" in a)
            port = multiaddr.Multiaddr(addr).value_for_protocol("tcp")
            taken = Libp2pConfig(listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",), enable_mdns=False)
            with pytest.raises(NetworkError, match="another process holds that port"):
                async with open_libp2p_network(deterministic_key(5), taken):
                    pass


async def test_lpnode_yamux_talks_to_py_libp2ps_and_fits_frames_in_noise_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our yamux (``_yamux``) against py-libp2p's own, both ways, with payloads past every window: the bytes
    arrive as sent. Its data frames fit one Noise message each (py-libp2p's 64 KiB frames went out as two,
    the second 17 bytes), and its window updates are few (py-libp2p's receiver sends one per read)."""
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter

    sent: list[tuple[int, int]] = []  # (channel, plaintext length) of every Noise message
    encrypt = NoiseTransportReadWriter.encrypt

    def recording(self: NoiseTransportReadWriter, data: bytes) -> bytes:
        sent.append((id(self), len(data)))
        return encrypt(self, data)

    monkeypatch.setattr(NoiseTransportReadWriter, "encrypt", recording)
    payload = secrets.token_bytes(3_000_000)  # past the 1 MiB window ours gives and py-libp2p's 256 KiB

    async def echo(stream: ByteStream) -> None:
        received = bytearray()
        while len(received) < len(payload) and (chunk := await stream.receive_some(1 << 16)):
            received.extend(chunk)
        await stream.send_all(bytes(received))
        await stream.aclose()

    async def round_trip(node: Libp2pNetwork, peer: str) -> tuple[bytes, list[int]]:
        stream = await node.open_stream(peer, "/lpnode/test-frames/1")
        sent.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            back = bytearray()
            while len(back) < len(payload) and (chunk := await stream.receive_some(1 << 16)):
                back.extend(chunk)
        await stream.aclose()
        big = {channel for channel, size in sent if size > 60_000}
        return bytes(back), [size for channel, size in sent if channel in big]

    stock = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False, muxer="py-libp2p")
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK, stock, LOOPBACK) as (ours, theirs, ours_too):
            for node in (ours, theirs, ours_too):
                node.set_stream_handler("/lpnode/test-frames/1", echo)
            await ours.connect(theirs.listen_addrs()[0])
            await theirs.connect(ours_too.listen_addrs()[0])
            await ours.connect(ours_too.listen_addrs()[0])
            back, _ = await round_trip(ours, theirs.local_peer)  # we open, py-libp2p accepts
            assert back == payload
            back, _ = await round_trip(theirs, ours_too.local_peer)  # py-libp2p opens, we accept
            assert back == payload
            back, sizes = await round_trip(ours, ours_too.local_peer)  # ours on both ends
            assert back == payload
    # both directions of the last round trip: ceil(3,000,000 / 65,507) = 46 data frames each way, each
    # one whole Noise message; the rest are window updates and the open, a handful, not one per read
    assert MAX_PLAINTEXT_LENGTH == 65_519 and max(sizes) == 65_519 and 17 not in sizes
    assert sum(size > 1000 for size in sizes) == 2 * 46
    assert len(sizes) - 2 * 46 <= 16


async def test_py_libp2ps_auto_connector_dials_nobody() -> None:
    """Its target is the midpoint of the watermarks (150 by default, whatever low_watermark says): it dialled
    every peerstore entry every 30 s beside the node's own dialer (QA3 Q12). Now it does nothing."""
    from libp2p.network.swarm import Swarm

    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK, LOOPBACK) as (a, b):
            host = a._host  # type: ignore[attr-defined]
            addr = multiaddr.Multiaddr(b.listen_addrs()[0])
            peer = ID.from_base58(b.local_peer)
            host.get_peerstore().add_addrs(peer, [addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))], 600)
            swarm = host.get_network()
            assert isinstance(swarm, Swarm)
            await swarm.auto_connector.maybe_connect()  # what its timer and every disconnect call
            assert b.local_peer not in a.connected_peers()


async def test_a_peer_that_serves_no_ping_passes_the_health_probe() -> None:
    """A peer answering "na" to /ipfs/ping (js-libp2p without @libp2p/ping) is alive: py-libp2p 0.8.1's own
    probe read it as a failed ping and the health monitor closed the connection at its first check."""
    quiet = new_host(key_pair=create_new_key_pair(deterministic_key(42).seed))
    quiet.get_mux().handlers.pop(TProtocol(PING_PROTOCOL))  # a peer without ping
    pinging = new_host(key_pair=create_new_key_pair(deterministic_key(43).seed))
    assert health_monitor.ping_connection is ping_connection  # installed by open_libp2p_network's hosts
    with trio.fail_after(DEADLINE):
        async with _nodes(LOOPBACK) as (node,), _raw_host(quiet) as no_ping, _raw_host(pinging) as with_ping:
            results = []
            for raw in (no_ping, with_ping):
                peer = await node.connect(f"{raw.get_addrs()[0]}")
                (conn,) = node._host.get_network().connections[ID.from_base58(peer)]
                results.append(await ping_connection(conn, ping_timeout=5.0))
                assert peer in node.connected_peers()
    assert [(r.success, r.protocol_supported) for r in results] == [(True, False), (True, True)]


def test_the_gossip_router_keeps_a_one_second_heartbeat_in_a_small_network() -> None:
    # py-libp2p 0.8.1's adaptive gossip (on by default) sets the heartbeat to 30-60 s when a node has
    # fewer than ~6 peers: the mesh was repaired that rarely, and the message cache, shifted once a
    # heartbeat, held minutes of adverts that every joining node was handed at once (QA: a restarted
    # node in a 3-node network dropped 24 expired or replayed adverts; with it off, none).
    from lpnode.node.network._libp2p_pubsub import make_router

    router = make_router(1.0)
    assert router.adaptive_gossip_enabled is False  # the heartbeat never calls _adapt_gossip_parameters
    assert router.heartbeat_interval == 1.0
    assert router.mcache.window_size * router.heartbeat_interval <= 5  # what a newcomer is handed: seconds
