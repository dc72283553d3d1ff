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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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


@dataclass(frozen=True)
class ConnectionEvent:
    """Something changed about a directly connected peer."""

    kind: ConnectionEventKind
    peer: PeerId
    topic: str | None = None  # set for SUBSCRIBED only


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
        """Yields a channel of connect/disconnect events from now on."""
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
