#!/usr/bin/env python3
"""A job's messages and output between two processes, as a requester and a worker move them.

``bench/transfer.py`` runs both libp2p hosts in one process: one event loop, so a
sender that runs out of yamux window is never kept waiting by the receiver's
scheduling. Here a server process answers a client process on one stream per
measurement, two ways:

* **message round trip**: the client sends 100 bytes, the server answers 100 bytes
  (``--pings`` of them per round): what a quote, a progress event or a result costs
  each way, less our framing and codec;
* **output transfer**: the server sends ``--kb`` of random bytes (``send_transfer`` /
  ``receive_transfer``, 256 KiB chunks, as job outputs go), timed from the client's
  request to the last byte (``--streams`` per round);
* **round trip after idling** (``--idle-ms``, 0 = skip): the same 100-byte round trip with both
  processes idle for that long before each one, as a job's messages find them (a worker waits
  ~150 ms on its model between a job's quote and its result). The gap to the first column is the
  machine waking an idle process, not Python.

Each yamux implementation runs in its own pair of processes, alternating, ``--rounds`` times:

* ``py-libp2p``: py-libp2p 0.8.1's yamux as shipped (``Libp2pConfig(muxer="py-libp2p")``);
* ``lpnode``: lpnode's (``node/network/_yamux.py``), what a node runs.

    python bench/transfer_2p.py --kb 653 --streams 60 --pings 300 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys

import trio
from lpnode.node.framing import FramedStream
from lpnode.node.network.base import ByteStream
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.transfer import TransferLimits, receive_transfer, send_transfer
from lpnode.protocol.signing import NodeKey

PROTOCOL = "/lpnode/bench-transfer-2p/1"
VARIANTS = ("py-libp2p", "lpnode")
PING = b"p" * 100


def _config(variant: str) -> Libp2pConfig:
    muxer = "lpnode" if variant == "lpnode" else "py-libp2p"
    return Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False, muxer=muxer)


async def serve(kb: int, variant: str) -> None:
    data = os.urandom(kb * 1000)
    digest = hashlib.sha256(data).digest()
    async with open_libp2p_network(NodeKey(b"\x02" * 32), _config(variant)) as net:

        async def handler(stream: ByteStream) -> None:
            request = await stream.receive_some(1)
            if request == b"p":  # round trips until the client says stop
                while len(request := await _receive_exactly(stream, len(PING))) == len(PING):
                    await stream.send_all(request)
            else:
                await send_transfer(FramedStream(stream), data, "application/octet-stream", sha256=digest)
                await stream.receive_some(1)
            await stream.aclose()

        net.set_stream_handler(PROTOCOL, handler)
        print(net.listen_addrs()[0], flush=True)
        await trio.sleep_forever()


async def _receive_exactly(stream: ByteStream, n: int) -> bytes:
    got = b""
    while len(got) < n and (chunk := await stream.receive_some(n - len(got))):
        got += chunk
    return got


async def measure(addr: str, streams: int, pings: int, variant: str, idle_ms: int) -> tuple[float, float, float]:
    """Medians of (message round trip, output transfer, round trip after idling), in seconds."""
    limits = TransferLimits(max_total_bytes=1 << 30)
    async with open_libp2p_network(NodeKey(b"\x01" * 32), _config(variant)) as net:
        peer = await net.connect(addr)
        stream = await net.open_stream(peer, PROTOCOL)
        await stream.send_all(b"p")
        trips = []
        for _ in range(pings + 20):  # the first 20 warm up
            start = trio.current_time()
            await stream.send_all(PING)
            await _receive_exactly(stream, len(PING))
            trips.append(trio.current_time() - start)
        idle_trips = []
        for _ in range(min(pings, 60) if idle_ms else 0):
            await trio.sleep(idle_ms / 1000)
            start = trio.current_time()
            await stream.send_all(PING)
            await _receive_exactly(stream, len(PING))
            idle_trips.append(trio.current_time() - start)
        await stream.aclose()
        transfers = []
        for _ in range(streams + 5):  # the first 5 warm up
            stream = await net.open_stream(peer, PROTOCOL)
            start = trio.current_time()
            await stream.send_all(b"x")
            await receive_transfer(FramedStream(stream), limits)
            transfers.append(trio.current_time() - start)
            await stream.send_all(b"y")
            await stream.aclose()
        idle = statistics.median(idle_trips) if idle_trips else float("nan")
        return statistics.median(trips[20:]), statistics.median(transfers[5:]), idle


def run_variant(kb: int, streams: int, pings: int, variant: str, idle_ms: int) -> tuple[float, float, float]:
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--kb", str(kb), "--variant", variant], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        return trio.run(measure, addr, streams, pings, variant, idle_ms)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--kb", type=int, default=653)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", default="lpnode", choices=VARIANTS)
    parser.add_argument("--idle-ms", type=int, default=0, help="also time round trips after this long idle")
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve, args.kb, args.variant)
        return
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(run_variant(args.kb, args.streams, args.pings, variant, args.idle_ms))
    print(
        f"| yamux | 100-byte round trip, ms per round | median | {args.kb} kB transfer, ms per round | median "
        f"| round trip after {args.idle_ms} ms idle, median |\n"
        "|---|---|---|---|---|---|"
    )
    for variant, values in results.items():
        trips = [t for t, _, _ in values]
        transfers = [x for _, x, _ in values]
        idles = [i for _, _, i in values]
        print(
            f"| {variant} | {' / '.join(f'{t * 1e3:.3f}' for t in trips)} | {statistics.median(trips) * 1e3:.3f} "
            f"| {' / '.join(f'{x * 1e3:.2f}' for x in transfers)} | {statistics.median(transfers) * 1e3:.2f} "
            f"| {statistics.median(idles) * 1e3:.3f} |"
        )


if __name__ == "__main__":
    main()
