"""One node on a memory hub: what :class:`MemoryNetwork` keeps and how it reacts to deliveries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import trio
from lpnode.protocol.errors import PeerUnreachable

from ._memory_link import Connection, MemoryStream
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

if TYPE_CHECKING:
    from .memory import MemoryHub

logger = logging.getLogger("lpnode.node.network.memory")


class _Neighbour:
    __slots__ = ("conn", "deliver", "node", "topics")

    def __init__(self, conn: Connection, node: MemoryNetwork) -> None:
        self.conn = conn
        self.node = node
        self.deliver = node._on_gossip  # bound once, not once per hop
        self.topics: dict[str, None] = {}  # what it told us it subscribes to


class _Message:
    """One published message; every hop of it shares this object."""

    __slots__ = ("data", "msg_id", "origin", "topic")

    def __init__(self, msg_id: int, topic: str, origin: PeerId, data: bytes) -> None:
        self.msg_id = msg_id
        self.topic = topic
        self.origin = origin
        self.data = data


class _Subscription:
    __slots__ = ("send", "validator")

    def __init__(self, send: trio.MemorySendChannel[GossipMessage], validator: GossipValidator | None) -> None:
        self.send = send
        self.validator = validator


class MemoryNetwork:
    """A node on a :class:`~lpnode.node.network.memory.MemoryHub`; implements ``Network``."""

    def __init__(self, hub: MemoryHub, peer: PeerId, address: str, nursery: trio.Nursery) -> None:
        self._hub = hub
        self._peer = peer
        self._address = address
        self._nursery = nursery  # inbound stream handlers run here
        self.closed = False
        # dicts, not sets, wherever we iterate: forwarding order must not depend on PYTHONHASHSEED
        self._neighbours: dict[PeerId, _Neighbour] = {}
        self._topic_peers: dict[str, dict[PeerId, _Neighbour]] = {}
        self._peerstore: dict[PeerId, str] = {}  # last address seen per peer, for open_stream
        self._subs: dict[str, _Subscription] = {}
        self._events = ConnectionEventFanout()
        self._handlers: dict[str, StreamHandler] = {}
        self._inbound_active = 0
        self._seen: dict[int, float] = {}  # message id -> expiry; insertion order is age order

    # -- Network ----------------------------------------------------------------

    @property
    def local_peer(self) -> PeerId:
        return self._peer

    def listen_addrs(self) -> list[str]:
        return [self._address]

    def connected_peers(self) -> frozenset[PeerId]:
        return frozenset(self._neighbours)

    def topic_peers(self, topic: str) -> frozenset[PeerId]:
        return frozenset(self._topic_peers.get(topic, ()))

    async def connect(self, addr: str) -> PeerId:
        self._check_open()
        return await self._hub._dial(self, addr)

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        hub = self._hub
        msg_id = hub._new_message_id()
        now = trio.current_time()
        self._remember(msg_id, now)
        data = bytes(data)
        sub = self._subs.get(topic)
        # like gossipsub, our own validator sees our own message before it goes out
        if sub is not None and not self._validate(sub, GossipMessage(topic, self._peer, self._peer, data)):
            return
        hub._stats.published += 1
        message = _Message(msg_id, topic, self._peer, data)
        for nb in self._topic_peers.get(topic, {}).values():
            hub._gossip(nb.conn, self._peer, nb.deliver, now, message)

    def subscribe(
        self, topic: str, validator: GossipValidator | None = None, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        return self._subscription(topic, validator, buffer)

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        self._check_open()
        return self._events.subscribe(buffer)

    async def open_stream(self, peer: PeerId, protocol_id: str, addrs: Sequence[str] = ()) -> ByteStream:
        self._check_open()
        if peer not in self._neighbours:
            await self._dial_somehow(peer, addrs)
        nb = self._neighbours.get(peer)
        if nb is None:
            raise PeerUnreachable(f"connection to {peer} lost while opening a stream")
        conn = nb.conn
        await conn.wait_passable()  # a partition stalls negotiation; its timeout ends it
        await trio.sleep(2 * conn.delay_s)  # multistream-select: propose, hear back
        remote = nb.node
        if conn.closed or remote.closed:
            raise PeerUnreachable(f"connection to {peer} lost while opening a stream")
        handler = remote._handlers.get(protocol_id)
        if handler is None:
            raise PeerUnreachable(f"{peer} does not speak {protocol_id}")
        if remote._inbound_active >= self._hub.config.max_inbound_streams:
            raise PeerUnreachable(f"{peer} refused {protocol_id}: too many inbound streams")
        local_end, remote_end = conn.open_stream_pair(
            self._peer, peer, protocol_id, self._hub.config.stream_window_bytes
        )
        self._hub._stats.streams_opened += 1
        remote._inbound_active += 1
        remote._nursery.start_soon(remote._serve_inbound, handler, remote_end, name=f"{protocol_id} handler")
        return local_end

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        self._handlers[protocol_id] = handler

    async def aclose(self) -> None:
        """Leave the hub: peers see DISCONNECTED, streams reset, channels end. Idempotent."""
        if not self.closed:
            self.closed = True
            for nb in list(self._neighbours.values()):
                self._hub._disconnect(nb.conn)
            self._hub._unregister(self)
            for sub in self._subs.values():
                sub.send.close()
            self._subs.clear()
            self._events.close()
            self._nursery.cancel_scope.cancel()
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- context managers behind subscribe() and connection_events() ------------

    @asynccontextmanager
    async def _subscription(
        self, topic: str, validator: GossipValidator | None, buffer: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[GossipMessage]]:
        self._check_open()
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic!r} (one subscription per topic)")
        send, receive = trio.open_memory_channel[GossipMessage](buffer)
        sub = _Subscription(send, validator)
        self._subs[topic] = sub
        self._announce(((topic, True),))
        try:
            async with receive:
                yield receive
        finally:
            if self._subs.get(topic) is sub:
                del self._subs[topic]
                self._announce(((topic, False),))
            send.close()

    # -- called by the hub's scheduler (synchronously, never blocking) -----------

    def _on_gossip(self, due: float, arg: tuple[Connection, PeerId, _Message]) -> None:
        conn, src, message = arg
        hub = self._hub
        hub._in_flight -= 1
        stats = hub._stats
        if conn.closed:
            stats.dropped_disconnected += 1
            return
        if message.msg_id in self._seen:
            stats.duplicates += 1
            return
        self._remember(message.msg_id, due)
        topic, origin = message.topic, message.origin
        sub = self._subs.get(topic)
        if sub is None:
            stats.dropped_unsubscribed += 1
            return
        if not self._validate(sub, msg := GossipMessage(topic, origin, src, message.data)):
            return
        try:
            sub.send.send_nowait(msg)
            stats.delivered += 1
        except trio.WouldBlock:
            stats.dropped_full += 1  # the subscriber fell behind; forwarding goes on regardless
        except trio.BrokenResourceError:
            stats.dropped_unsubscribed += 1  # the consumer closed its end but is still subscribed
        me = self._peer
        for peer, nb in self._topic_peers.get(topic, {}).items():
            if peer != src and peer != origin:
                hub._gossip(nb.conn, me, nb.deliver, due, message)

    def _on_control(self, due: float, arg: tuple[Connection, PeerId, tuple[tuple[str, bool], ...]]) -> None:
        conn, src, changes = arg
        self._hub._in_flight -= 1
        nb = self._neighbours.get(src)
        if conn.closed or nb is None or nb.conn is not conn:
            return
        if conn.blocked():
            self._hub._defer(self._on_control, arg)  # held like bytes in a stalled TCP connection
            return
        for topic, subscribed in changes:
            if subscribed and topic not in nb.topics:
                nb.topics[topic] = None
                self._topic_peers.setdefault(topic, {})[src] = nb
                self._emit(ConnectionEvent(ConnectionEventKind.SUBSCRIBED, src, topic))
            elif not subscribed and topic in nb.topics:
                del nb.topics[topic]
                self._forget_topic_peer(topic, src)

    # -- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("this network was closed")

    def _remember(self, msg_id: int, now: float) -> None:
        seen = self._seen
        seen[msg_id] = now + self._hub.config.seen_ttl_s
        cap = self._hub.config.seen_max_entries
        while seen:
            oldest = next(iter(seen))
            if len(seen) <= cap and seen[oldest] > now:
                break
            del seen[oldest]

    def _validate(self, sub: _Subscription, msg: GossipMessage) -> bool:
        if sub.validator is None:
            return True
        try:
            accepted = bool(sub.validator(msg))
        except Exception:
            logger.exception("%s: validator on %r raised; message from %s rejected", self._peer, msg.topic, msg.origin)
            accepted = False
        if not accepted:
            self._hub._stats.rejected += 1
        return accepted

    def _announce(self, changes: tuple[tuple[str, bool], ...]) -> None:
        now = trio.current_time()
        for nb in self._neighbours.values():
            self._hub._announce(nb.conn, self, nb.node, now, changes)

    def _emit(self, event: ConnectionEvent) -> None:
        self._hub._stats.events_dropped += self._events.emit(event)

    def _add_neighbour(self, remote: MemoryNetwork, conn: Connection, now: float) -> None:
        peer = remote.local_peer
        self._neighbours[peer] = _Neighbour(conn, remote)
        self._peerstore[peer] = remote.listen_addrs()[0]  # what identify would have told us
        self._emit(ConnectionEvent(ConnectionEventKind.CONNECTED, peer))
        if self._subs:
            self._hub._announce(conn, self, remote, now, tuple((topic, True) for topic in self._subs))

    def _drop_neighbour(self, peer: PeerId, conn: Connection) -> None:
        nb = self._neighbours.get(peer)
        if nb is None or nb.conn is not conn:
            return
        del self._neighbours[peer]
        for topic in nb.topics:
            self._forget_topic_peer(topic, peer)
        self._emit(ConnectionEvent(ConnectionEventKind.DISCONNECTED, peer))

    def _forget_topic_peer(self, topic: str, peer: PeerId) -> None:
        peers = self._topic_peers.get(topic)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self._topic_peers[topic]

    async def _dial_somehow(self, peer: PeerId, hints: Sequence[str]) -> None:
        """Dial ``peer`` using the hints, then the address we last saw it at."""
        candidates = [*hints]
        if (known := self._peerstore.get(peer)) is not None:
            candidates.append(known)
        failures: list[str] = []
        for addr in candidates:
            if not addr.endswith(f"/p2p/{peer}"):
                continue
            try:
                await self.connect(addr)
                return
            except PeerUnreachable as exc:
                failures.append(str(exc))
        raise PeerUnreachable(f"no reachable address for {peer}: {failures or 'none known'}")

    async def _serve_inbound(self, handler: StreamHandler, stream: MemoryStream) -> None:
        try:
            await handler(stream)
        except Exception:
            # the root of the handler task: the node lives on, this request is lost
            self._hub._stats.handler_crashes += 1
            logger.exception(
                "%s: %s handler for %s crashed; stream reset, its request is lost",
                self._peer,
                stream.protocol_id,
                stream.remote_peer,
            )
            stream.reset()
        else:
            await stream.aclose()
        finally:
            self._inbound_active -= 1
