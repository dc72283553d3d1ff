"""Noise over a TCP stream read in large pieces, not a system call per length prefix.

py-libp2p's Noise channel reads each message as its 2-byte length, then its body, each
through ``TrioTCPStream.read`` (a trio lock and a ``recv`` apiece, the body often in
several). The yamux above reads each decrypted message whole, so a job's every message
and every 64 KiB of its output cost two to four system calls and as many trips through
trio. Here the connection's socket is read up to :data:`READ_BYTES` at a time and the
Noise reader is served from that buffer: one ``recv`` for as many messages as have
arrived. Nothing changes on the wire.

:class:`NoiseTransport` is py-libp2p's Noise transport, with its raw connections so
wrapped before the handshake (which reads through the buffer too).

Both directions also go to trio's socket stream directly rather than through
``TrioTCPStream``, whose read and write locks are two more passes of the scheduler per
message: the one reader needs no lock, and writes take a :class:`FastLock` (free but for
the handshake's rare overlap with nothing, and py-libp2p's own muxer, which writes from
several tasks).
"""

from __future__ import annotations

import trio
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import Transport

from ._fast_lock import FastLock

READ_BYTES = 256 * 1024  # up to four full Noise messages per recv


class BufferedReads(ReadWriteCloser):
    """A byte stream whose reads are served from one large ``recv`` at a time; writes pass through.

    One reader at a time (the connection's Noise reader: py-libp2p's handshake, then the muxer's
    single read loop), as the stream underneath also requires.
    """

    def __init__(self, stream: ReadWriteCloser, read_bytes: int = READ_BYTES) -> None:
        self._stream = stream
        # py-libp2p's TCP stream: its trio socket stream, used directly (see the module docstring)
        self._socket = stream.stream if isinstance(stream, TrioTCPStream) else None
        self._write_lock = FastLock()
        self._read_bytes = read_bytes
        self._buffer = b""
        self._offset = 0

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if self._offset >= len(self._buffer):
            data = await self._receive()
            if not data:
                return data  # end of stream
            self._buffer, self._offset = data, 0
        start = self._offset
        end = len(self._buffer) if n is None or n < 0 else min(len(self._buffer), start + n)
        self._offset = end
        if start == 0 and end == len(self._buffer):
            return self._buffer  # all of one recv: no copy
        return self._buffer[start:end]

    async def write(self, data: bytes) -> None:
        if self._socket is None:
            await self._stream.write(data)
            return
        async with self._write_lock:
            try:
                await self._socket.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # as TrioTCPStream reports a reset; a locally closed socket too (it returned silently,
                # and the data was lost without a word)
                raise ConnectionClosedError(f"TCP connection closed: {exc!r}", transport="tcp") from exc

    async def _receive(self) -> bytes:
        if self._socket is None:
            return await self._stream.read(self._read_bytes)
        try:
            return await self._socket.receive_some(self._read_bytes)
        except trio.BrokenResourceError as exc:
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {exc!r}", transport="tcp") from exc
        except trio.ClosedResourceError:
            return b""  # closed here: the end of stream, as TrioTCPStream reads it

    async def close(self) -> None:
        await self._stream.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._stream.get_remote_address()


def _buffered(conn: IRawConnection) -> IRawConnection:
    if isinstance(conn, RawConnection) and not isinstance(conn.stream, BufferedReads):
        conn.stream = BufferedReads(conn.stream)
    return conn


class NoiseTransport(Transport):
    """py-libp2p's Noise transport over :class:`BufferedReads`."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await super().secure_inbound(_buffered(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await super().secure_outbound(_buffered(conn), peer_id)


__all__ = ["READ_BYTES", "BufferedReads", "NoiseTransport"]
