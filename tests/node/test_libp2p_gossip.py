"""The node's gossip over real libp2p on 127.0.0.1: discovery, and forged adverts from a raw peer.

The in-memory tests (``test_gossip.py``) cover the logic; these check that
the same logic holds when the origin of a message is what a real gossipsub
peer claims it is. Each test waits on directory changes or connection events
under ``trio.fail_after``; nothing sleeps.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import Offer
from lpnode.node.network.base import ConnectionEventKind, Network
from lpnode.node.network.libp2p import Libp2pConfig, Libp2pNetwork, open_libp2p_network
from lpnode.protocol import ADVERT_TOPIC, CapabilityAdvert, GpuInfo, NodeKey, SignedEnvelope, encode, sign_advert
from lpnode.protocol.envelope import seal, signing_domain

DEADLINE_S = 15
LOOPBACK = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
CPU = (GpuInfo(name="cpu: test", kind="cpu", vram_total_bytes=0, vram_free_bytes=0),)


def key_for(index: int) -> NodeKey:
    return NodeKey(bytes([0x70 + index]) * 32)


def offer() -> Offer:
    return Offer(gpus=CPU, models=(), queue_depth=0, queue_capacity=4)


@asynccontextmanager
async def libp2p_node(index: int, *, bootstrap: tuple[str, ...] = ()) -> AsyncIterator[Node]:
    """A real node: libp2p host on loopback plus the production node logic."""
    key = key_for(index)
    # no periodic re-advert within a test: every advert seen is one the test caused
    config = NodeConfig(
        listen=LOOPBACK.listen_addrs, bootstrap=bootstrap, mdns=False, advert_interval_s=60, advert_ttl_s=120
    ).validate()
    async with open_libp2p_network(key, LOOPBACK) as network, trio.open_nursery() as nursery:
        yield await nursery.start(functools.partial(serve_node, config, key, network, offer))
        nursery.cancel_scope.cancel()


async def until(node: Node, condition: Callable[[], bool]) -> None:
    while not condition():
        await node.directory.wait_changed()


async def wait_topic_peer(net: Network, topic: str, peer: str) -> None:
    """Return once ``net`` knows ``peer`` is subscribed to ``topic`` (a publish reaches it from then on)."""
    async with net.connection_events() as events:
        while peer not in net.topic_peers(topic):
            async for event in events:
                if event.kind is ConnectionEventKind.SUBSCRIBED:
                    break


def advert_from(network: Libp2pNetwork, key: NodeKey, *, about: str | None = None, seq: int) -> CapabilityAdvert:
    """A well-formed, current advert signed by nobody yet; ``about`` another peer than ``key``'s."""
    now_ms = int(time.time() * 1000)
    return CapabilityAdvert(
        peer_id=about or key.peer_id,
        seq=seq,
        issued_at_ms=now_ms,
        expires_at_ms=now_ms + 30_000,
        listen_addrs=tuple(network.listen_addrs()[:1]),
        software_version="0.1.0",
        protocol_version=1,
        gpus=CPU,
        models=(),
        queue_depth=0,
        queue_capacity=4,
    )


async def test_two_real_nodes_see_each_other() -> None:
    with trio.fail_after(DEADLINE_S):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(libp2p_node(0))
            b = await stack.enter_async_context(libp2p_node(1, bootstrap=tuple(a.network.listen_addrs()[:1])))
            await until(a, lambda: b.peer_id in a.directory.peer_ids())
            await until(b, lambda: a.peer_id in b.directory.peer_ids())
            record = a.directory.get(b.peer_id)
            assert record is not None
            assert record.connected
            assert record.received_from == b.peer_id
            assert record.advert.listen_addrs == tuple(b.network.listen_addrs())
            assert a.gossip_stats.dropped.total() == b.gossip_stats.dropped.total() == 0


async def test_forged_adverts_from_a_raw_libp2p_peer_are_dropped_and_counted() -> None:
    attacker_key = key_for(9)
    with trio.fail_after(DEADLINE_S):
        async with AsyncExitStack() as stack:
            relay = await stack.enter_async_context(libp2p_node(0))
            victim = await stack.enter_async_context(libp2p_node(1, bootstrap=tuple(relay.network.listen_addrs()[:1])))
            # a bare libp2p peer: valid transport identity, no node logic, publishes what it likes
            attacker = await stack.enter_async_context(open_libp2p_network(attacker_key, LOOPBACK))
            await attacker.connect(relay.network.listen_addrs()[0])
            await wait_topic_peer(attacker, ADVERT_TOPIC, relay.peer_id)
            await until(relay, lambda: victim.peer_id in relay.directory.peer_ids())
            genuine = relay.directory.get(victim.peer_id)
            assert genuine is not None and victim.publisher.last is not None

            # (a) bytes that are no advert at all
            await attacker.publish(ADVERT_TOPIC, b"\x93\x01garbage")
            # (b) an advert about the victim, with a seq that would replace its record, signed by the
            # attacker: once with the envelope naming the victim as signer, once naming the attacker
            claim = advert_from(attacker, attacker_key, about=victim.peer_id, seq=genuine.advert.seq + 10**6)
            payload = encode(claim)
            impostor = SignedEnvelope(
                signer=victim.peer_id,
                payload=payload,
                signature=attacker_key.sign(signing_domain(CapabilityAdvert), payload),
            )
            await attacker.publish(ADVERT_TOPIC, encode(impostor))
            await attacker.publish(ADVERT_TOPIC, seal(attacker_key, claim))
            # (c) the victim's own signed advert (Ed25519 is deterministic: these are the bytes
            # it published), replayed under the attacker's gossip origin
            await attacker.publish(ADVERT_TOPIC, sign_advert(key_for(1), victim.publisher.last))
            # an honest advert of the attacker's own, sent last: py-libp2p validates each message
            # synchronously in the first step of its own task, in arrival order, so once this one
            # is in the directory the four before it have been judged
            await attacker.publish(ADVERT_TOPIC, sign_advert(attacker_key, advert_from(attacker, attacker_key, seq=1)))
            await until(relay, lambda: attacker_key.peer_id in relay.directory.peer_ids())

            assert relay.gossip_stats.dropped == {"malformed": 1, "bad_signature": 1, "forged_origin": 2}
            assert relay.directory.get(victim.peer_id) == genuine
            assert isinstance(relay.network, Libp2pNetwork)
            assert relay.network.stats()["gossip_rejected"] == 4  # rejected in the validator: never forwarded

            # the relay keeps working: the victim's next advert still gets through, and no forged
            # one was ever forwarded to the victim
            victim.publisher.poke()
            await until(relay, lambda: relay.directory.get(victim.peer_id) != genuine)
            fresh = relay.directory.get(victim.peer_id)
            assert fresh is not None and fresh.advert == victim.publisher.last
            assert victim.gossip_stats.dropped.total() == 0
