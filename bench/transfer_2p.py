#!/usr/bin/env python3
"""One job output's transfer between two processes, as a worker and a requester move it.

``bench/transfer.py`` runs both libp2p hosts in one process: one event loop, so a
sender that runs out of yamux window is never kept waiting by the receiver's
scheduling. Here a server process sends ``--kb`` of random bytes on every stream a
client process opens (``send_transfer`` / ``receive_transfer``, 256 KiB chunks, as
job outputs go), and the client times each from its request to the last byte.
Each yamux variant runs in its own pair of processes, alternating, ``--rounds`` times:

* ``stock``: py-libp2p 0.8.1 as shipped;
* ``frames``: data frames that fit one Noise message (``_yamux_tuning``, what lpnode runs).

    python bench/transfer_2p.py --kb 653 --streams 60 --rounds 3
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
from lpnode.node.network._yamux_tuning import tune_yamux
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.transfer import TransferLimits, receive_transfer, send_transfer
from lpnode.protocol.signing import NodeKey

PROTOCOL = "/lpnode/bench-transfer-2p/1"
VARIANTS = {"stock": False, "frames": True}


async def serve(kb: int, variant: str) -> None:
    data = os.urandom(kb * 1000)
    digest = hashlib.sha256(data).digest()
    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    async with open_libp2p_network(NodeKey(b"\x02" * 32), config) as net:
        tune_yamux(VARIANTS[variant])  # after the host is built: it applies lpnode's own settings

        async def handler(stream: object) -> None:
            framed = FramedStream(stream)  # type: ignore[arg-type]
            await stream.receive_some(1)  # type: ignore[attr-defined]
            await send_transfer(framed, data, "application/octet-stream", sha256=digest)
            await stream.receive_some(1)  # type: ignore[attr-defined]
            await stream.aclose()  # type: ignore[attr-defined]

        net.set_stream_handler(PROTOCOL, handler)  # type: ignore[arg-type]
        print(net.listen_addrs()[0], flush=True)
        await trio.sleep_forever()


async def measure(addr: str, streams: int, variant: str) -> list[float]:
    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    limits = TransferLimits(max_total_bytes=1 << 30)
    async with open_libp2p_network(NodeKey(b"\x01" * 32), config) as net:
        tune_yamux(VARIANTS[variant])
        peer = await net.connect(addr)
        times = []
        for _ in range(streams + 5):  # the first 5 warm up
            stream = await net.open_stream(peer, PROTOCOL)
            start = trio.current_time()
            await stream.send_all(b"x")
            await receive_transfer(FramedStream(stream), limits)
            times.append(trio.current_time() - start)
            await stream.send_all(b"y")
            await stream.aclose()
        return times[5:]


def run_variant(kb: int, streams: int, variant: str) -> float:
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--kb", str(kb), "--variant", variant], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        return statistics.median(trio.run(measure, addr, streams, variant))
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "serve"))
    parser.add_argument("--kb", type=int, default=653)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", default="stock", choices=tuple(VARIANTS))
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve, args.kb, args.variant)
        return
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            medians[variant].append(run_variant(args.kb, args.streams, variant))
    print(f"| yamux | median ms per {args.kb} kB transfer, per round | median of rounds |\n|---|---|---|")
    for variant, values in medians.items():
        rounds = " / ".join(f"{v * 1e3:.2f}" for v in values)
        print(f"| {variant} | {rounds} | {statistics.median(values) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
