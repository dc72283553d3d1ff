"""``BufferedReads``: one large ``recv`` serves many small reads, in order, and the end of stream is kept."""

from __future__ import annotations

from libp2p.io.abc import ReadWriteCloser
from lpnode.node.network._noise_reads import BufferedReads


class Pieces(ReadWriteCloser):
    """A stream that hands out fixed pieces, then the end; counts its reads."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.reads: list[int | None] = []
        self.written: list[bytes] = []

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(n)
        return self.pieces.pop(0) if self.pieces else b""

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
