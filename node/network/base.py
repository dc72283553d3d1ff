"""The network as the node sees it: a small interface with two implementations.

``lpnode.node.network.libp2p`` talks real libp2p (TCP + Noise + Yamux + gossipsub);
``lpnode.node.network.memory`` is an in-process network with injectable latency,
loss and partitions that runs in trio's virtual time. Node logic only ever sees
:class:`Network`, and ``tests/network/test_conformance.py`` holds both honest.

Peers are named by their libp2p peer id in its usual base58 text form
(``12D3KooW...``); addresses are multiaddr strings ending in ``/p2p/<peer id>``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

PeerId = str


@dataclass(frozen=True)
class GossipMessage:
    """One message delivered on a topic.

    ``origin`` is the peer that published it; the backend guarantees it is
    authenticated (libp2p: strict message signing; memory: set by the hub), so
    an application signature can be checked against it. ``received_from`` is
    the neighbour that forwarded it to us (equal to ``origin`` on a direct hop).
    """

    topic: str
    origin: PeerId
    received_from: PeerId
    data: bytes


# Runs before a message is delivered locally *and* before it is forwarded: a
# message a validator rejects never reaches the subscriber and is never passed on.
# Must be cheap and must not block; it may update counters.
GossipValidator = Callable[[GossipMessage], bool]


class ConnectionEventKind(enum.Enum):
    CONNECTED = "connected"  # first direct connection to the peer opened
    DISCONNECTED = "disconnected"  # last direct connection to the peer closed
    SUBSCRIBED = "subscribed"  # a directly connected peer joined ``topic``
    # Events were lost (the reader fell behind its bounded buffer): re-read connected_peers()
    # (and topic_peers()) instead of trusting a view built from events. ``peer`` is "".
    RESYNC = "resync"


@dataclass(frozen=True)
class ConnectionEvent:
    """Something changed about a directly connected peer."""

    kind: ConnectionEventKind
    peer: PeerId  # "" for RESYNC
    topic: str | None = None  # set for SUBSCRIBED only


RESYNC_EVENT = ConnectionEvent(ConnectionEventKind.RESYNC, "")


class _EventSink:
    """One reader's bounded channel: ``room`` events plus one slot kept for the RESYNC marker."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.send, self.receive = trio.open_memory_channel[ConnectionEvent](room + 1)
        self._sent = 0  # events put in, ever
        self._resync_at = 0  # self._sent just after the last RESYNC went in; 0 = never

    def offer(self, event: ConnectionEvent) -> bool:
        """Queue ``event``, or make sure a RESYNC is queued behind the loss; False if ``event`` was lost."""
        stats = self.send.statistics()
        if stats.current_buffer_used < self.room or stats.tasks_waiting_receive:
            self._put(event)
            return True
        # Taken so far = put - still queued. While the marker is still queued, reading it will
        # re-read the state this lost event changed, so it covers this loss too.
        if self._sent - stats.current_buffer_used < self._resync_at:
            return False
        self._put(RESYNC_EVENT)  # the kept slot is free: only the marker ever fills it
        self._resync_at = self._sent
        return False

    def _put(self, event: ConnectionEvent) -> None:
        self.send.send_nowait(event)
        self._sent += 1


class ConnectionEventFanout:
    """Hands each connection event to every reader, never blocking and never queueing without bound.

    For the backends. A reader that falls behind loses events, but never silently: a RESYNC
    follows any loss, so a view kept from events is corrected from the network's real state
    (a lost DISCONNECTED once left a bootstrap peer connected in the directory and never
    redialled, review s10).
    """

    def __init__(self) -> None:
        self._sinks: list[_EventSink] = []

    def __len__(self) -> int:
        return len(self._sinks)

    @asynccontextmanager
    async def subscribe(self, buffer: int) -> AsyncIterator[trio.MemoryReceiveChannel[ConnectionEvent]]:
        if buffer < 0:
            raise ValueError("buffer must be >= 0")
        sink = _EventSink(buffer)
        self._sinks.append(sink)
        try:
            async with sink.receive:
                yield sink.receive
        finally:
            if sink in self._sinks:
                self._sinks.remove(sink)
            sink.send.close()

    def emit(self, event: ConnectionEvent) -> int:
        """Give ``event`` to every reader; return how many lost it (each of those gets a RESYNC)."""
        lost = 0
        for sink in list(self._sinks):
            try:
                lost += not sink.offer(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sinks.remove(sink)  # its reader is gone
        return lost

    def close(self) -> None:
        """End every reader's channel (the network closed)."""
        for sink in self._sinks:
            sink.send.close()
        self._sinks.clear()


@runtime_checkable
class ByteStream(Protocol):
    """A reliable, ordered, bidirectional byte stream to one peer.

    Semantics every backend keeps (checked by the conformance suite):
    ``receive_some`` returns at least one byte, or ``b""`` once the remote has
    closed its side (a reset may also read as ``b""``: frame your messages);
    ``send_all`` after the remote went away raises :class:`StreamClosed`;
    ``aclose`` is idempotent.
    """

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def protocol_id(self) -> str: ...

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int = 65536) -> bytes: ...

    async def aclose(self) -> None: ...


StreamHandler = Callable[[ByteStream], Awaitable[None]]


@runtime_checkable
class Network(Protocol):
    """What the node needs from a peer-to-peer network.

    Obtained from ``open_libp2p_network(...)`` or ``MemoryHub.open_network(...)``,
    both async context managers; leaving the context closes every connection,
    stream and subscription of this node.
    """

    @property
    def local_peer(self) -> PeerId: ...

    def listen_addrs(self) -> list[str]:
        """Addresses other peers can dial, each ending in ``/p2p/<local peer>``."""
        ...

    def connected_peers(self) -> frozenset[PeerId]:
        """Peers with at least one open direct connection."""
        ...

    async def connect(self, addr: str) -> PeerId:
        """Dial ``addr`` (must end in ``/p2p/<peer>``); return the peer id.

        Raises :class:`PeerUnreachable` on failure. Connecting to a peer that is
        already connected returns at once.
        """
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish on ``topic``. Delivery is best effort (like gossipsub).

        The publisher's own subscription does not receive its own message.
        """
        ...

    def subscribe(
        self, topic: str, validator: GossipValidator | None = None, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        """Join ``topic``; yields the channel of validated messages.

        ``buffer`` bounds the queue: when the consumer falls behind, newer
        messages are dropped (and counted by the backend), never queued without
        bound. One subscription per topic per node.
        """
        ...

    def topic_peers(self, topic: str) -> frozenset[PeerId]:
        """Directly connected peers known to be subscribed to ``topic``."""
        ...

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        """Yields a channel of connect/disconnect events from now on.

        At most ``buffer`` events wait in it. A reader that falls further behind loses
        events, and then receives a RESYNC event after the loss: the events are hints,
        :meth:`connected_peers` is the truth.
        """
        ...

    async def open_stream(self, peer: PeerId, protocol_id: str, addrs: Sequence[str] = ()) -> ByteStream:
        """Open a stream to ``peer`` speaking ``protocol_id``, dialing if needed.

        ``addrs`` are hints for reaching a peer we are not connected to.
        Raises :class:`PeerUnreachable` if the peer cannot be reached or does not
        speak the protocol.
        """
        ...

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id``: ``handler`` runs in its own task per inbound stream.

        An exception escaping the handler is logged and the stream is reset; it
        never takes the node down. The backend closes the stream when the
        handler returns.
        """
        ...
