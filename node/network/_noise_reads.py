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

Once the handshake is done, the session's messages skip py-libp2p's layers too
(:class:`LeanNoiseChannel`): its Noise transport reader/writer framed each message through a
packet reader, a message reader, the raw connection and a byte-exact read loop, five Python
layers and as many coroutine frames per message each way. Here a message is its 2-byte length
and its ciphertext, read from and written to the buffered stream directly, encrypted and
decrypted by the very cipher states the handshake produced.
"""

from __future__ import annotations

import trio
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport
from libp2p.security.secure_session import SecureSession
from noise.connection import NoiseConnection

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

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; IncompleteReadError if the stream ends first (b"" at a clean end before any)."""
        start, end = self._offset, self._offset + n
        if end <= len(self._buffer):  # the common case: the whole of it arrived with an earlier recv
            self._offset = end
            return self._buffer[start:end]
        parts = [self._buffer[start:]]
        got = len(parts[0])
        self._buffer, self._offset = b"", 0
        while got < n:
            data = await self._receive()
            if not data:
                if got == 0:
                    return b""
                raise IncompleteReadError(f"the stream ended {got} bytes into a {n}-byte read")
            take = min(len(data), n - got)
            parts.append(data[:take] if take < len(data) else data)
            got += take
            if take < len(data):
                self._buffer, self._offset = data, take
        return b"".join(parts)

    async def close(self) -> None:
        await self._stream.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._stream.get_remote_address()


class LeanNoiseChannel(NoiseTransportReadWriter):
    """The session's Noise messages straight over :class:`BufferedReads` (see the module docstring).

    The same wire format as py-libp2p's (and go's): a message is a 2-byte big-endian length, then the
    ciphertext of at most :data:`MAX_PLAINTEXT_LENGTH` bytes of plaintext; a longer write is several.
    """

    def __init__(self, conn: IRawConnection, noise_state: NoiseConnection, stream: BufferedReads) -> None:
        super().__init__(conn, noise_state)
        self._stream = stream

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded:  # a handshake's; never on a session, but keep py-libp2p's meaning
            await super().write_msg(msg, prefix_encoded)
            return
        encrypt = self.encrypt  # py-libp2p's own (the noise state's), so what wraps it still sees every message
        if len(msg) <= MAX_PLAINTEXT_LENGTH:
            sealed = encrypt(msg)
            await self._stream.write(len(sealed).to_bytes(2, "big") + sealed)
            return
        view = memoryview(msg)
        parts: list[bytes] = []
        for start in range(0, len(msg), MAX_PLAINTEXT_LENGTH):
            sealed = encrypt(bytes(view[start : start + MAX_PLAINTEXT_LENGTH]))
            parts += (len(sealed).to_bytes(2, "big"), sealed)
        await self._stream.write(b"".join(parts))

    async def read_msg(self, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded:
            return await super().read_msg(prefix_encoded)
        header = await self._stream.read_exactly(2)
        if not header:
            raise IncompleteReadError("the connection ended")  # as py-libp2p's reader reports a clean end
        body = await self._stream.read_exactly(int.from_bytes(header, "big"))
        if not body:
            raise IncompleteReadError("the connection ended after a message's length")
        return self.decrypt(body)


def _lean(session: ISecureConn, conn: IRawConnection) -> ISecureConn:
    """``session`` with its messages on a :class:`LeanNoiseChannel`, when it is py-libp2p's Noise session over ours."""
    channel = getattr(session, "conn", None)
    if (
        isinstance(session, SecureSession)
        and type(channel) is NoiseTransportReadWriter
        and isinstance(conn, RawConnection)
        and isinstance(conn.stream, BufferedReads)
    ):
        session.conn = LeanNoiseChannel(conn, channel.noise_state, conn.stream)
    return session


def _buffered(conn: IRawConnection) -> IRawConnection:
    if isinstance(conn, RawConnection) and not isinstance(conn.stream, BufferedReads):
        conn.stream = BufferedReads(conn.stream)
    return conn


class NoiseTransport(Transport):
    """py-libp2p's Noise transport over :class:`BufferedReads`."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _lean(await super().secure_inbound(_buffered(conn)), conn)

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _lean(await super().secure_outbound(_buffered(conn), peer_id), conn)


__all__ = ["READ_BYTES", "BufferedReads", "LeanNoiseChannel", "NoiseTransport"]
