"""A node of ours and a js-libp2p 2.x node (TCP + @chainsafe/libp2p-noise 16 + @chainsafe/libp2p-yamux 7).

lpnode speaks yamux through its own implementation (``node/network/_yamux.py``); this checks it
against another one than py-libp2p's, both ways, with payloads past every flow-control window:
each side opens streams to the other's echo service and gets its bytes back.

Needs Node.js (20+) and the packages: ``cd tests/network/js_interop && npm ci``. Skipped without them,
so the default test run (and CI) does not depend on npm.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from lpnode.node.network.base import ByteStream
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network

from .conftest import deterministic_key

JS_DIR = Path(__file__).parent / "js_interop"
PROTOCOL = "/lpnode/echo/1"
SIZES = (1, 70_000, 3_000_000)  # one byte; past one frame; past the 1 MiB window ours gives and the 256 KiB theirs

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules").is_dir(),
    reason="needs node and `npm ci` in tests/network/js_interop",
)


class _Lines:
    """JSON lines from the js node's stdout, and JSON lines to its stdin."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        self._stdout = process.stdout
        self._stdin = process.stdin
        self._buffer = b""

    async def read(self) -> Any:
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"the js node exited; it said: {self._buffer!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def write(self, value: Any) -> None:
        await self._stdin.send_all(json.dumps(value).encode() + b"\n")


@asynccontextmanager
async def _js_node() -> AsyncIterator[tuple[str, _Lines]]:
    process = await trio.lowlevel.open_process(
        ["node", "echo_node.mjs"], cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        lines = _Lines(process)
        started = await lines.read()
        yield started["addr"], lines
    finally:
        process.kill()
        await process.wait()


async def _read_exactly(stream: ByteStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(min(1 << 20, n - len(got)))
        if not chunk:
            raise AssertionError(f"stream ended after {len(got)} of {n} bytes")
        got.extend(chunk)
    return bytes(got)


async def _echo(stream: ByteStream) -> None:
    size = int.from_bytes(await _read_exactly(stream, 4), "big")
    await stream.send_all(await _read_exactly(stream, size))
    await stream.aclose()


async def test_lpnode_and_js_libp2p_carry_each_others_streams_both_ways() -> None:
    config = Libp2pConfig(listen_addrs=("/ip4/127.0.0.1/tcp/0",), enable_mdns=False)
    with trio.fail_after(60):
        async with _js_node() as (js_addr, js), open_libp2p_network(deterministic_key(0), config) as ours:
            ours.set_stream_handler(PROTOCOL, _echo)
            peer = await ours.connect(js_addr)
            for size in SIZES:  # we open, js-libp2p echoes
                payload = secrets.token_bytes(size)
                stream = await ours.open_stream(peer, PROTOCOL)
                await stream.send_all(size.to_bytes(4, "big") + payload)
                assert await _read_exactly(stream, size) == payload
                await stream.aclose()
            our_addr = next(a for a in ours.listen_addrs() if "/127.0.0.1/" in a)
            for size in SIZES:  # js-libp2p opens, we echo
                await js.write({"dial": our_addr, "bytes": size})
                answer = await js.read()
                assert answer == {"ok": True, "received": size}, answer
