"""``BufferedReads``: one large ``recv`` serves many small reads, in order, and the end of stream is kept;
``LeanNoiseChannel``: the session's Noise messages on it, framed exactly as py-libp2p frames them."""

from __future__ import annotations

import secrets

import pytest
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import IncompleteReadError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from lpnode.node.network._noise_reads import BufferedReads, LeanNoiseChannel
from noise.connection import NoiseConnection


class Pieces(ReadWriteCloser):
    """A stream that hands out fixed pieces, then the end; counts its reads."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.reads: list[int | None] = []
        self.written: list[bytes] = []

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(n)
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if n is not None and len(piece) > n:  # at most n, as a socket's recv; the rest comes next
            piece, rest = piece[:n], piece[n:]
            self.pieces.insert(0, rest)
        return piece

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def close(self) -> None:
        pass

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 9)


async def test_small_reads_come_from_one_recv_in_order() -> None:
    inner = Pieces(b"\x00\x05hello\x00\x03abc", b"xyz")
    stream = BufferedReads(inner, read_bytes=1024)
    assert await stream.read(2) == b"\x00\x05"
    assert await stream.read(5) == b"hello"
    assert await stream.read(2) == b"\x00\x03"
    assert await stream.read(100) == b"abc"  # at most what is buffered: a short read, as recv gives
    assert inner.reads == [1024]
    assert await stream.read() == b"xyz"  # whole next piece, no copy needed
    assert await stream.read(0) == b""
    assert await stream.read(4) == b""  # the end of stream passes through
    assert inner.reads == [1024, 1024, 1024]


async def test_writes_and_addresses_pass_through() -> None:
    inner = Pieces()
    stream = BufferedReads(inner)
    await stream.write(b"out")
    assert inner.written == [b"out"] and stream.get_remote_address() == ("127.0.0.1", 9)


async def test_exact_reads_span_recvs_keep_the_rest_and_tell_a_cut_from_a_clean_end() -> None:
    inner = Pieces(b"\x00\x05he", b"llo\x00", b"\x03abcdef")
    stream = BufferedReads(inner, read_bytes=1024)
    assert await stream.read_exactly(2) == b"\x00\x05"
    assert await stream.read_exactly(5) == b"hello"  # across two recvs
    assert await stream.read_exactly(2) == b"\x00\x03"  # the rest of the second recv kept, then the third
    assert await stream.read_exactly(3) == b"abc"
    with pytest.raises(IncompleteReadError):
        await stream.read_exactly(4)  # three bytes, then the end: a cut, not a message
    assert await BufferedReads(Pieces(), read_bytes=16).read_exactly(2) == b""  # a clean end before any byte


async def test_the_lean_channel_speaks_py_libp2ps_framing_both_ways() -> None:
    # two Noise transport states from a real handshake (NN: no keys needed), one per end
    initiator = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    responder = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    initiator.set_as_initiator()
    responder.set_as_responder()
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    assert initiator.handshake_finished and responder.handshake_finished

    wire = Pieces()
    ours = LeanNoiseChannel(RawConnection(wire, True), initiator, BufferedReads(wire))
    big = secrets.token_bytes(MAX_PLAINTEXT_LENGTH * 2 + 10)  # three Noise messages
    await ours.write_msg(b"hi")
    await ours.write_msg(big)
    sent = b"".join(wire.written)
    # py-libp2p's stock reader decrypts what we wrote, message by message
    stock = NoiseTransportReadWriter(RawConnection(Pieces(sent), False), responder)
    assert await stock.read_msg() == b"hi"
    assert b"".join([await stock.read_msg() for _ in range(3)]) == big
    # and we read what py-libp2p's stock writer sends back
    back = Pieces()
    await NoiseTransportReadWriter(RawConnection(back, False), responder).write_msg(big)
    reader = LeanNoiseChannel(RawConnection(Pieces(), True), initiator, BufferedReads(Pieces(*back.written)))
    assert b"".join([await reader.read_msg() for _ in range(3)]) == big
    with pytest.raises(IncompleteReadError):
        await reader.read_msg()  # the end of the connection
