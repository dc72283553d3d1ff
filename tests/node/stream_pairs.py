"""One stream between two nodes, with both ends in the test's hands, on either backend.

Also two ``ByteStream`` wrappers that model what the real stack does not
produce on demand: a bit flipped in transit, and a count of bytes read.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from lpnode.node.network.base import ByteStream, PeerId

from tests.network.conftest import GroupOpener

PAIR_PROTOCOL = "/lpnode/test-pair/1"
_HELLO = b"\x00"  # makes the listener's handler run on every backend before we yield


@asynccontextmanager
async def stream_pair(open_group: GroupOpener) -> AsyncIterator[tuple[ByteStream, ByteStream]]:
    """(dialer's end, listener's end) of a fresh stream; both stay open until exit."""
    async with open_group(2, None) as (client, server):
        send, receive = trio.open_memory_channel[ByteStream](1)
        release = trio.Event()

        async def hold(stream: ByteStream) -> None:
            await send.send(stream)
            await release.wait()  # the backend closes the stream when this returns

        server.set_stream_handler(PAIR_PROTOCOL, hold)
        dialer = await client.open_stream(server.local_peer, PAIR_PROTOCOL)
        await dialer.send_all(_HELLO)
        listener = await receive.receive()
        assert await listener.receive_some(1) == _HELLO
        try:
            yield dialer, listener
        finally:
            release.set()


class BitFlipStream:
    """Sends through ``inner``, flipping the lowest bit of the byte at stream offset ``at``."""

    def __init__(self, inner: ByteStream, at: int) -> None:
        self._inner = inner
        self._at = at
        self._sent = 0

    @property
    def remote_peer(self) -> PeerId:
        return self._inner.remote_peer

    @property
    def protocol_id(self) -> str:
        return self._inner.protocol_id

    async def send_all(self, data: bytes) -> None:
        start, self._sent = self._sent, self._sent + len(data)
        if start <= self._at < self._sent:
            flipped = bytearray(data)
            flipped[self._at - start] ^= 1
            data = bytes(flipped)
        await self._inner.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def reset(self) -> None:
        await reset_stream(self._inner)


class CountingStream:
    """Counts the bytes read through ``inner``."""

    def __init__(self, inner: ByteStream) -> None:
        self._inner = inner
        self.received = 0

    @property
    def remote_peer(self) -> PeerId:
        return self._inner.remote_peer

    @property
    def protocol_id(self) -> str:
        return self._inner.protocol_id

    async def send_all(self, data: bytes) -> None:
        await self._inner.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        data = await self._inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def reset(self) -> None:
        await reset_stream(self._inner)


async def reset_stream(stream: ByteStream) -> None:
    """Abort ``stream`` as a vanishing peer would (both backends have a reset, one of them sync)."""
    result = stream.reset()  # type: ignore[attr-defined]
    if inspect.isawaitable(result):
        await result
