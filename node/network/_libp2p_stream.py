"""Streams for the libp2p backend: the ``ByteStream`` wrapper and the inbound handler root.

py-libp2p reports a dead stream through a dozen exception types spread over its
muxer, network and transport packages (all under ``BaseLibp2pError``), and an
exception escaping a stream handler tears down the whole host. This module is
the one place that turns those into the two outcomes our interface promises:
``receive_some`` returns ``b""`` and ``send_all`` raises :class:`StreamClosed`.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from ...protocol.errors import StreamClosed
from ._yamux import YamuxStream
from .base import PeerId, StreamHandler

log = logging.getLogger("lpnode.network.libp2p")

# What py-libp2p raises when the stream, its connection or its socket is gone.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class Libp2pStream:
    """One libp2p stream seen as a :class:`~lpnode.node.network.base.ByteStream`."""

    def __init__(self, stream: INetStream, remote_peer: PeerId, protocol_id: str) -> None:
        self._stream = stream
        # Reads and writes go straight to our yamux stream: py-libp2p's NetStream adds nothing to
        # them but a state lock (a pass of the scheduler per call) and errors we map anyway.
        # Close and reset still go through it, which keeps the swarm's bookkeeping.
        muxed = getattr(stream, "muxed_stream", None)
        self._io: INetStream | YamuxStream = muxed if isinstance(muxed, YamuxStream) else stream
        self._remote_peer = remote_peer
        self._protocol_id = protocol_id
        self._closed = False

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise StreamClosed(f"stream {self._protocol_id} to {self._remote_peer} was closed locally")
        try:
            await self._io.write(data)
        except TRANSPORT_ERRORS as exc:
            raise StreamClosed(f"stream {self._protocol_id} to {self._remote_peer} is gone: {exc!r}") from exc

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._closed:
            return b""
        try:
            # A remote reset reads as end of stream too (see ByteStream's contract):
            # callers frame their messages, so a truncated one is detected above us.
            return await self._io.read(max_bytes)
        except TRANSPORT_ERRORS:
            return b""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled caller must still release the stream, or the
        # remote waits for a FIN that never comes and the slot (256 per
        # connection) stays taken.
        with trio.CancelScope(shield=True):
            try:
                await self._stream.close()
            except TRANSPORT_ERRORS:
                await self.reset()

    async def reset(self) -> None:
        """Abort the stream in both directions (the remote reads end of stream)."""
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self._stream.reset()
            except TRANSPORT_ERRORS as exc:
                log.debug("reset of %s to %s failed: %r", self._protocol_id, self._remote_peer, exc)


class InboundHandlerRoot:
    """Runs one application handler per inbound stream, bounded and crash-proof.

    py-libp2p already gives every inbound stream its own task; this is the code
    at the root of that task. ``limiter`` is shared by all protocols of a node:
    a stream arriving when every slot is taken is reset at once rather than
    queued (py-libp2p blocks forever on the 257th stream of a connection, so
    unbounded queuing would wedge the peer).
    """

    def __init__(
        self,
        protocol_id: str,
        handler: StreamHandler,
        limiter: trio.CapacityLimiter,
        stats: Counter[str],
    ) -> None:
        self._protocol_id = protocol_id
        self._handler = handler
        self._limiter = limiter
        self._stats = stats

    async def __call__(self, raw: INetStream) -> None:
        peer = raw.muxed_conn.peer_id.to_base58()
        stream = Libp2pStream(raw, peer, self._protocol_id)
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            self._stats["inbound_streams_refused"] += 1
            log.warning(
                "refused inbound %s stream from %s: %d handlers already running",
                self._protocol_id,
                peer,
                self._limiter.total_tokens,
            )
            await stream.reset()
            return
        try:
            self._stats["inbound_streams"] += 1
            await self._handler(stream)
        except Exception:
            # Task root: py-libp2p would let this kill the host. What is lost is
            # this one exchange; the peer sees the stream reset.
            self._stats["inbound_handler_crashes"] += 1
            log.exception("handler for %s from %s crashed; stream reset", self._protocol_id, peer)
            await stream.reset()
        else:
            await stream.aclose()
        finally:
            self._limiter.release()
