"""One suite, two backends: what node logic may rely on from any Network.

Runs against the in-memory network and real libp2p on 127.0.0.1; a behaviour
the fake has and libp2p lacks (or the reverse) fails here first.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
from lpnode.node.network.base import ByteStream, ConnectionEventKind, GossipMessage
from lpnode.protocol.errors import PeerUnreachable, StreamClosed

from .conftest import GroupOpener, wait_subscribed

TOPIC = "lpnode/test/1"
ECHO = "/lpnode/test-echo/1"
DEADLINE = 20  # seconds; generous for libp2p mesh formation on a loaded 2-core box


async def _echo(stream: ByteStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def _receive_exactly(stream: ByteStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(65536, n - len(buf)))
        if not chunk:
            raise AssertionError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def test_addresses_name_the_peer(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with open_group(2, [(1, 0)]) as (a, b):
            assert a.local_peer != b.local_peer
            assert a.listen_addrs(), "a started network listens somewhere"
            for addr in a.listen_addrs():
                assert addr.endswith(f"/p2p/{a.local_peer}")
            assert b.local_peer in a.connected_peers()
            assert a.local_peer in b.connected_peers()
            # connecting twice is harmless and names the same peer
            assert await b.connect(a.listen_addrs()[0]) == a.local_peer


async def test_gossip_reaches_subscribers_with_authenticated_origin(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with open_group(3, None) as nets:
            hub, *leaves = nets
            async with (
                hub.subscribe(TOPIC) as at_hub,
                leaves[0].subscribe(TOPIC) as at_0,
                leaves[1].subscribe(TOPIC) as at_1,
            ):
                await wait_subscribed(hub, TOPIC, {n.local_peer for n in leaves})
                await wait_subscribed(leaves[0], TOPIC, {hub.local_peer})
                await wait_subscribed(leaves[1], TOPIC, {hub.local_peer})
                await leaves[0].publish(TOPIC, b"hello")
                for channel in (at_hub, at_1):
                    msg = await channel.receive()
                    assert isinstance(msg, GossipMessage)
                    assert msg.data == b"hello"
                    assert msg.topic == TOPIC
                    assert msg.origin == leaves[0].local_peer
                # the publisher does not hear itself: the next thing it hears is another's message
                await leaves[1].publish(TOPIC, b"second")
                msg = await at_0.receive()
                assert (msg.data, msg.origin) == (b"second", leaves[1].local_peer)


async def test_validator_stops_delivery_and_forwarding(open_group: GroupOpener) -> None:
    seen_at_relay: list[bytes] = []

    def relay_validator(msg: GossipMessage) -> bool:
        seen_at_relay.append(msg.data)
        return msg.data != b"bad"

    with trio.fail_after(DEADLINE):
        # a line: source - relay - sink; everything the sink gets went through the relay
        async with (
            open_group(3, [(0, 1), (2, 1)]) as (source, relay, sink),
            source.subscribe(TOPIC),
            relay.subscribe(TOPIC, relay_validator) as at_relay,
            sink.subscribe(TOPIC) as at_sink,
        ):
            await wait_subscribed(relay, TOPIC, {source.local_peer, sink.local_peer})
            await wait_subscribed(source, TOPIC, {relay.local_peer})
            await wait_subscribed(sink, TOPIC, {relay.local_peer})
            await source.publish(TOPIC, b"bad")
            await source.publish(TOPIC, b"good")
            assert (await at_relay.receive()).data == b"good"
            assert (await at_sink.receive()).data == b"good"
            assert b"bad" in seen_at_relay


async def test_stream_round_trip_and_bulk_transfer(open_group: GroupOpener) -> None:
    payload = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)  # 3 MiB
    with trio.fail_after(DEADLINE * 2):
        async with open_group(2, [(1, 0)]) as (server, client):
            server.set_stream_handler(ECHO, _echo)
            stream = await client.open_stream(server.local_peer, ECHO)
            assert stream.remote_peer == server.local_peer
            assert stream.protocol_id == ECHO
            await stream.send_all(b"ping")
            assert await _receive_exactly(stream, 4) == b"ping"

            async def send_payload() -> None:
                await stream.send_all(payload)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_payload)
                echoed = await _receive_exactly(stream, len(payload))
            assert echoed == payload
            await stream.aclose()
            await stream.aclose()  # idempotent


async def test_unknown_protocol_and_unknown_peer_are_unreachable(open_group: GroupOpener) -> None:
    with trio.fail_after(DEADLINE):
        async with open_group(2, [(1, 0)]) as (server, client):
            with pytest.raises(PeerUnreachable):
                await client.open_stream(server.local_peer, "/lpnode/nobody-serves-this/1")
            from .conftest import deterministic_key

            stranger = deterministic_key(99).peer_id
            with pytest.raises(PeerUnreachable):
                await client.open_stream(stranger, ECHO)


async def test_handler_crash_does_not_take_the_node_down(open_group: GroupOpener) -> None:
    async def crash(stream: ByteStream) -> None:
        await stream.receive_some(10)
        raise RuntimeError("handler bug")

    with trio.fail_after(DEADLINE):
        async with open_group(2, [(1, 0)]) as (server, client):
            server.set_stream_handler("/lpnode/crash/1", crash)
            server.set_stream_handler(ECHO, _echo)
            bad = await client.open_stream(server.local_peer, "/lpnode/crash/1")
            await bad.send_all(b"x")
            assert await bad.receive_some(10) == b""  # reset or closed, reads as end of stream
            good = await client.open_stream(server.local_peer, ECHO)
            await good.send_all(b"still alive")
            assert await _receive_exactly(good, 11) == b"still alive"


async def test_remote_close_ends_the_stream(open_group: GroupOpener) -> None:
    async def say_and_close(stream: ByteStream) -> None:
        await stream.send_all(b"bye")

    with trio.fail_after(DEADLINE):
        async with open_group(2, [(1, 0)]) as (server, client):
            server.set_stream_handler("/lpnode/bye/1", say_and_close)
            stream = await client.open_stream(server.local_peer, "/lpnode/bye/1")
            assert await _receive_exactly(stream, 3) == b"bye"
            assert await stream.receive_some(10) == b""


async def test_peer_leaving_is_reported_and_send_fails(open_group: GroupOpener) -> None:
    hold = trio.Event()
    inbound: list[ByteStream] = []
    got_stream = trio.Event()

    async def hold_open(stream: ByteStream) -> None:
        inbound.append(stream)
        got_stream.set()
        await hold.wait()

    with trio.fail_after(DEADLINE):
        async with open_group(3, None) as (hub, stays, leaves):
            hub.set_stream_handler("/lpnode/hold/1", hold_open)
            async with hub.connection_events() as events:
                stream = await leaves.open_stream(hub.local_peer, "/lpnode/hold/1")
                await stream.send_all(b"x")
                await got_stream.wait()
                await leaves_close(leaves)
                async for event in events:
                    if event.kind is ConnectionEventKind.DISCONNECTED and event.peer == leaves.local_peer:
                        break
                assert leaves.local_peer not in hub.connected_peers()
                assert stays.local_peer in hub.connected_peers()
            # the hub's side of the stream to a departed peer fails loudly, it does not hang
            with pytest.raises(StreamClosed):
                for _ in range(64):  # a send may be buffered before the close is seen
                    await inbound[0].send_all(b"y" * 65536)
            hold.set()


async def leaves_close(net: object) -> None:
    """Close one network early (its context exit later is then a no-op)."""
    aclose = getattr(net, "aclose", None)
    assert aclose is not None, "a network object offers aclose() for leaving early"
    await aclose()


async def test_connect_to_dead_address_fails_cleanly(open_group: GroupOpener, backend_name: str) -> None:
    with trio.fail_after(DEADLINE):
        async with open_group(1, []) as (a,):
            if backend_name == "libp2p":
                from .conftest import deterministic_key

                dead = f"/ip4/127.0.0.1/tcp/1/p2p/{deterministic_key(50).peer_id}"
            else:
                from .conftest import deterministic_key

                dead = f"/memory/424242/p2p/{deterministic_key(50).peer_id}"  # well-formed, nobody there
            with pytest.raises(PeerUnreachable):
                await a.connect(dead)
            with pytest.raises(PeerUnreachable):
                await a.connect("/not/a/multiaddr")
