#!/usr/bin/env python3
"""Throughput of ``send_transfer``/``receive_transfer`` against raw ``send_all`` on libp2p loopback.

Two libp2p hosts (TCP + Noise + Yamux) in this one process on 127.0.0.1, one
connection between them. Each measurement opens a fresh stream on it and moves
``--mb`` MB of random bytes from the dialer to the listener:

* **raw**: ``send_all`` in slices of the chunk size; the listener loops
  ``receive_some`` into one buffer until every byte arrived. No framing, no hash.
* **transfer**: ``send_transfer`` (sha256 of the payload, header frame, one
  DATA frame per chunk, end mark) and ``receive_transfer`` (exact reads, length
  checks, sha256 of what arrived, the payload joined into one ``bytes``).
* **transfer, sha256 given**: the same with the hash passed in, as a worker
  sending outputs whose hashes its receipt already holds does.
* **stock yamux**: "sha256 given" between two more hosts that run py-libp2p's yamux
  (``Libp2pConfig(muxer="py-libp2p")``); the other modes run lpnode's (``node/network/_yamux.py``).
  Both hosts share this process's
  event loop, which hides what a sender waits for from a receiver in another process:
  ``bench/transfer_2p.py`` measures that shape.

Time runs from the first send to the listener holding the whole payload
(``trio.current_time()``, monotonic). The three alternate within each
round and the table shows medians, so both see the same machine state. Both
hosts share one core (see DESIGN.md), so the figures are below what two
processes would reach; the ratio is the point.

    python bench/transfer.py                       # 50 MB, chunks 64 KiB / 256 KiB / 1 MiB, 5 rounds
    python bench/transfer.py --mb 20 --rounds 3 --chunks 262144
    python bench/transfer.py --mb 0.653 --rounds 41 --chunks 262144   # one 512² PNG output, as bench/e2e.py's
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
from contextlib import AsyncExitStack
from functools import partial

import trio
from lpnode.node.framing import FramedStream
from lpnode.node.network.base import ByteStream, Network
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.transfer import TransferLimits, receive_transfer, send_transfer
from lpnode.protocol.signing import NodeKey

RAW = "/lpnode/bench-raw/1"
FRAMED = "/lpnode/bench-transfer/1"


async def _measure(
    client: Network, server: Network, data: bytes, chunk: int, framed: bool, digest: bytes | None
) -> float:
    """Seconds from the first byte sent to the listener holding all of ``data``."""
    done: trio.MemorySendChannel[float]
    done, finished = trio.open_memory_channel[float](1)
    limits = TransferLimits(max_total_bytes=len(data), max_chunk_bytes=max(chunk, 4096))

    async def raw_sink(stream: ByteStream) -> None:
        buffer = bytearray()
        while len(buffer) < len(data):
            piece = await stream.receive_some(65536)
            if not piece:
                raise RuntimeError(f"raw stream ended after {len(buffer)} bytes")
            buffer += piece
        await done.send(trio.current_time())

    async def transfer_sink(stream: ByteStream) -> None:
        got = await receive_transfer(FramedStream(stream), limits)
        assert len(got.data) == len(data)
        await done.send(trio.current_time())

    server.set_stream_handler(RAW, raw_sink)
    server.set_stream_handler(FRAMED, transfer_sink)
    stream = await client.open_stream(server.local_peer, FRAMED if framed else RAW)
    start = trio.current_time()
    if framed:
        await send_transfer(FramedStream(stream), data, "application/octet-stream", chunk_bytes=chunk, sha256=digest)
    else:
        view = memoryview(data)
        for offset in range(0, len(data), chunk):
            await stream.send_all(bytes(view[offset : offset + chunk]))
    end = await finished.receive()
    await stream.aclose()
    return end - start


async def run(mb: float, chunks: list[int], rounds: int) -> list[tuple[int, float, float, float, float]]:
    data = os.urandom(int(mb * 1e6))
    digest = hashlib.sha256(data).digest()
    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    stock_config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False, muxer="py-libp2p")
    rows = []
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(open_libp2p_network(NodeKey(b"\x01" * 32), config))
        server = await stack.enter_async_context(open_libp2p_network(NodeKey(b"\x02" * 32), config))
        stock_client = await stack.enter_async_context(open_libp2p_network(NodeKey(b"\x03" * 32), stock_config))
        stock_server = await stack.enter_async_context(open_libp2p_network(NodeKey(b"\x04" * 32), stock_config))
        await client.connect(server.listen_addrs()[0])
        await stock_client.connect(stock_server.listen_addrs()[0])
        for chunk in chunks:
            measure = partial(_measure, client, server, data, chunk)
            measure_stock = partial(_measure, stock_client, stock_server, data, chunk)
            await measure(True, None)  # warm-up: first stream, allocator, yamux windows
            await measure_stock(True, None)
            raw, framed, known, stock = [], [], [], []
            for _ in range(rounds):
                raw.append(await measure(False, None))
                framed.append(await measure(True, None))
                known.append(await measure(True, digest))
                stock.append(await measure_stock(True, digest))
            medians = (statistics.median(times) for times in (raw, framed, known, stock))
            rows.append((chunk, *medians))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="payload size in MB (10^6 bytes)")
    parser.add_argument("--chunks", default="65536,262144,1048576", help="chunk sizes in bytes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = trio.run(run, args.mb, chunks, args.rounds)
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        "\n| chunk | raw send_all MB/s | transfer MB/s (ratio) | transfer, sha256 given MB/s (ratio) "
        "| the same, stock yamux MB/s (ratio) | sha256 given, ms: ours / stock |\n|---|---|---|---|---|---|"
    )
    size = args.mb * 1e6
    for chunk, raw_s, framed_s, known_s, stock_s in rows:
        raw, framed, known, stock = (size / t / 1e6 for t in (raw_s, framed_s, known_s, stock_s))
        print(
            f"| {chunk // 1024} KiB | {raw:.0f} | {framed:.0f} ({raw_s / framed_s:.2f}) | {known:.0f} ({raw_s / known_s:.2f})"
            f" | {stock:.0f} ({raw_s / stock_s:.2f}) | {known_s * 1e3:.2f} / {stock_s * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
