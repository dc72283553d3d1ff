"""Gossipsub for the libp2p backend: py-libp2p's ``Pubsub`` with three hooks.

py-libp2p's ``Pubsub`` has no callback for "a peer joined a topic", hands a
subscriber the raw protobuf through a fixed 32-slot queue (dropping silently),
delivers the publisher's own messages back to it, and forgets which neighbour
forwarded a message once it is validated. :class:`LpnodePubsub` overrides three
of its public methods, each calling the original, rather than copying any of
its logic:

- ``handle_subscription`` (a remote SubOpts arrived) reports newly known
  subscriptions, for ``SUBSCRIBED`` connection events;
- ``push_msg`` (every inbound or local message, before validation) records the
  forwarding peer in a context variable, which is per task, so concurrent
  messages cannot see each other's forwarder;
- ``notify_subscriptions`` (the message passed validation) turns it into a
  :class:`GossipMessage` and offers it to our own bounded channel, counting drops.

:class:`LpnodeGossipSub` likewise extends two router methods so that a message
sent while the mesh is still forming is not lost (see its docstring).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from .base import GossipMessage, GossipValidator

log = logging.getLogger("lpnode.network.libp2p")

# The neighbour whose message is being processed by the current task.
_forwarder: ContextVar[ID | None] = ContextVar("lpnode_gossip_forwarder", default=None)

# Mesh degrees of the gossipsub spec's defaults (D=6, D_lo=4, D_hi=12).
_DEGREE, _DEGREE_LOW, _DEGREE_HIGH = 6, 4, 12


class LpnodeGossipSub(GossipSub):
    """py-libp2p's gossipsub router with two fixes for a young mesh.

    Right after peers subscribe, py-libp2p's mesh can be empty for up to a
    heartbeat: the event-driven GRAFT runs in a task spawned after the
    subscription is processed, and is skipped altogether when the
    subscription arrives before the peer's pubsub stream is registered. A
    message published or forwarded into that gap goes to nobody, and is never
    gossiped either, because by the next heartbeat the peer is in the mesh and
    IHAVE only goes to peers outside it. Seen here as a lost first message
    about one run in twenty.
    """

    def _get_peers_to_send(
        self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID, msg_id: bytes | None = None
    ) -> Iterable[ID]:
        peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is not None and msg_forwarder == origin == pubsub.my_id:
            # Flood publishing, go-libp2p's default: our own messages go to every
            # known subscriber, not only the mesh (peers not yet identified are
            # queued by the router and flushed when their stream opens).
            for topic in topic_ids:
                peers.update(p for p in pubsub.peer_topics.get(topic, ()) if self._is_gossipsub_peer(p))
            peers.discard(pubsub.my_id)
        return peers

    def add_peer(self, peer_id: ID, protocol_id: TProtocol | None) -> None:
        super().add_peer(peer_id, protocol_id)
        pubsub = self.pubsub
        if pubsub is None or not pubsub.manager.is_running:
            return
        # The GRAFT that py-libp2p skipped because the subscription came first.
        for topic, subscribers in pubsub.peer_topics.items():
            if peer_id in subscribers and topic in self.mesh:
                pubsub.manager.run_task(self.on_peer_subscribed, peer_id, topic)


def make_router(heartbeat_s: float) -> LpnodeGossipSub:
    """A gossipsub router speaking the versions js-libp2p interop was verified on."""
    return LpnodeGossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=_DEGREE,
        degree_low=_DEGREE_LOW,
        degree_high=_DEGREE_HIGH,
        # py-libp2p's default is 120 s, which leaves a new mesh empty for minutes.
        heartbeat_interval=heartbeat_s,  # type: ignore[arg-type]  # annotated int, used as seconds
        # Its spam protection silently drops above ~10 msg/s per topic per
        # forwarder; adverts are rate-limited by the node itself instead.
        spam_protection_enabled=False,
        # Its "adaptive gossip" (on by default) stretches the heartbeat to 30-60 s when a node has
        # fewer than ~6 peers: the mesh was repaired that rarely, and the message cache, shifted
        # once a heartbeat, held minutes of adverts that a joining or restarted node was then
        # handed at once (QA: 24-130 adverts up to 2 minutes old, every one dropped and counted).
        adaptive_gossip_enabled=False,
    )


class LpnodePubsub(Pubsub):
    """py-libp2p ``Pubsub`` that delivers into our channels and reports subscriptions."""

    def __init__(
        self,
        host: IHost,
        router: LpnodeGossipSub,
        *,
        on_subscribed: Callable[[ID, str], None],
        stats: Counter[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, strict_signing=True, **kwargs)
        self._on_subscribed = on_subscribed
        self._stats = stats
        self._sinks: dict[str, trio.MemorySendChannel[GossipMessage]] = {}

    # -- hooks (see the module docstring) ---------------------------------------------

    async def stream_handler(self, stream: INetStream) -> None:
        """py-libp2p's per-peer pubsub reader, with every error caught at its root.

        Its own handler catches stream and varint errors but not a frame that is
        not a protobuf RPC: one such 5-byte frame from any peer raised
        ``DecodeError`` out of the host's nursery and took the whole node down.
        A peer that speaks garbage loses its pubsub stream; we stay up.
        """
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().stream_handler(stream)
        except Exception as exc:  # the root of this peer's reader task: log, drop the peer, carry on
            self._stats["pubsub_streams_dropped"] += 1
            log.warning("dropping pubsub stream of %s: %s: %s", peer_id, type(exc).__name__, exc)
            with trio.CancelScope(shield=True):
                try:
                    await stream.reset()
                except Exception:  # already gone: nothing left to release
                    log.debug("reset of %s's pubsub stream failed", peer_id)
            self._handle_dead_peer(peer_id)

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        topic = sub_message.topicid
        known_before = origin_id in self.peer_topics.get(topic, ())
        super().handle_subscription(origin_id, sub_message)
        if sub_message.subscribe and not known_before and origin_id in self.peer_topics.get(topic, ()):
            self._on_subscribed(origin_id, topic)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        token = _forwarder.set(msg_forwarder)
        try:
            await super().push_msg(msg_forwarder, msg)
        finally:
            _forwarder.reset(token)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        origin = ID(publish_message.from_id)
        if origin == self.my_id:
            return  # our own publication: the publisher does not hear itself
        forwarder = _forwarder.get() or origin
        for topic in publish_message.topicIDs:
            sink = self._sinks.get(topic)
            if sink is None:
                continue
            message = GossipMessage(
                topic=topic,
                origin=origin.to_base58(),
                received_from=forwarder.to_base58(),
                data=publish_message.data,
            )
            try:
                sink.send_nowait(message)
            except trio.WouldBlock:
                self._stats["gossip_dropped_slow_subscriber"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._stats["gossip_dropped_closed_subscriber"] += 1
            else:
                self._stats["gossip_delivered"] += 1

    # -- our side ---------------------------------------------------------------------

    def attach_sink(
        self, topic: str, sink: trio.MemorySendChannel[GossipMessage], validator: GossipValidator | None
    ) -> None:
        if topic in self._sinks:
            raise ValueError(f"already subscribed to {topic!r}: one subscription per topic per node")
        self._sinks[topic] = sink
        if validator is not None:
            self.set_topic_validator(topic, self._adapt(topic, validator), is_async_validator=False)

    def detach_sink(self, topic: str) -> None:
        self._sinks.pop(topic, None)
        self.remove_topic_validator(topic)

    def _adapt(self, topic: str, validator: GossipValidator) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            origin = ID(msg.from_id)
            if origin == self.my_id and forwarder == self.my_id:
                return True  # validators judge what others send; our own publish passes
            candidate = GossipMessage(
                topic=topic,
                origin=origin.to_base58(),
                received_from=forwarder.to_base58(),
                data=msg.data,
            )
            try:
                accepted = validator(candidate)
            except Exception:
                # Callback root: py-libp2p would let this end the peer's read loop.
                log.exception("gossip validator for %s raised; message from %s rejected", topic, origin)
                accepted = False
            if not accepted:
                self._stats["gossip_rejected"] += 1
            return accepted

        return validate
