"""The API's HTTP server against hypercorn and a canned-answer floor: round trip and server CPU per request.

    python bench/http_server.py [--requests 700] [--out results.jsonl]

For each server (``floor``: a trio loop that answers every request with the same bytes; ``lpnode``:
``lpnode.node.http_server``; ``hypercorn``: hypercorn's trio worker, when it is installed) and each
app (``bare``: an ASGI app that reads the body and answers a 300-byte JSON; ``fastapi``: the same
behind FastAPI with a bearer-token dependency, as the node's routes are), a server process is
started and this process sends it sequential requests over one keep-alive connection:

* ``raw``: each request written in one piece, the answer read by hand: the server's own cost;
* ``httpx``: through httpx, as the node's Python client and the CLI send them.

Reported per case: the median round trip and the server process's CPU time per request (from
/proc). Sequential requests: what one request costs, not how many a server can take at once.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import trio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

ANSWER = json.dumps({"images": [{"url": "/v1/outputs/" + "a" * 64, "seed": 1, "nsfw": False}], "x": "y" * 200}).encode()
BODY = json.dumps({"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "seed": 3}).encode()
WARMUP = 200
# hypercorn closes a connection after 1,000 requests (keep_alive_max_requests): stay under it
MAX_REQUESTS = 1000 - WARMUP


def bare_app() -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # hypercorn asks; the node's server does not
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    return app


_BEARER = HTTPBearer(auto_error=False)


async def token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    assert credentials is not None and credentials.credentials == "t"


def fastapi_app() -> Any:
    app = FastAPI(dependencies=[Depends(token)])

    @app.post("/job")
    async def job(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return app


async def serve(server: str, app_kind: str, port: int) -> None:
    app = bare_app() if app_kind == "bare" else fastapi_app()
    if server == "lpnode":
        from lpnode.node.http_server import serve_http

        await serve_http(app, await trio.open_tcp_listeners(port, host="127.0.0.1"))
    elif server == "hypercorn":
        from hypercorn.config import Config
        from hypercorn.trio import serve as hypercorn_serve

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        await hypercorn_serve(app, config)
    else:
        await serve_floor(port)


async def serve_floor(port: int) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ANSWER),
        ANSWER,
    )

    async def connection(stream: trio.SocketStream) -> None:
        buffer = b""
        while data := await stream.receive_some(65536):
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = _content_length(head)
                if len(rest) < length:
                    break
                buffer = rest[length:]
                await stream.send_all(answer)

    await trio.serve_tcp(connection, port, host="127.0.0.1")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, pid: int, requests: int) -> dict[str, dict[str, float]]:
    import httpx

    results: dict[str, dict[str, float]] = {}
    headers = {"authorization": "Bearer t", "content-type": "application/json"}

    async def timed(one: Callable[[], Awaitable[None]]) -> dict[str, float]:
        for _ in range(WARMUP):
            await one()
        samples = []
        cpu_before = cpu_s(pid)
        for _ in range(requests):
            start = time.perf_counter()
            await one()
            samples.append(time.perf_counter() - start)
        return {
            "round_trip_ms": round(statistics.median(samples) * 1000, 3),
            "server_cpu_ms": round((cpu_s(pid) - cpu_before) / requests * 1000, 3),
        }

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = b"POST /job HTTP/1.1\r\nhost: b\r\nauthorization: Bearer t\r\ncontent-type: application/json\r\n"
    request += b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)

    async def raw_one() -> None:
        await stream.send_all(request)
        buffer = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError(f"server closed the connection: {buffer[:200]!r}")
            buffer += data
            head, found, rest = buffer.partition(b"\r\n\r\n")
            if found and len(rest) >= _content_length(head):
                assert head.startswith(b"HTTP/1.1 200"), head
                return

    results["raw"] = await timed(raw_one)
    await stream.aclose()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:

        async def httpx_one() -> None:
            (await client.post("/job", content=BODY)).raise_for_status()

        results["httpx"] = await timed(httpx_one)
    return results


def run_case(server: str, app_kind: str, requests: int) -> dict[str, Any]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--serve", server, app_kind, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{server} did not start") from None
                time.sleep(0.05)
        return {"server": server, "app": app_kind, **trio.run(measure, port, process.pid, requests)}
    finally:
        process.terminate()
        process.wait()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=700)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", nargs=3, metavar=("SERVER", "APP", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        server, app_kind, port = args.serve
        trio.run(serve, server, app_kind, int(port))
        return 0
    requests = min(args.requests, MAX_REQUESTS)
    try:
        import hypercorn  # noqa: F401

        servers = ["floor", "lpnode", "hypercorn"]
    except ImportError:
        servers = ["floor", "lpnode"]
    for app_kind in ("bare", "fastapi"):
        for server in servers:
            if server == "floor" and app_kind == "fastapi":
                continue
            record = run_case(server, app_kind, requests) | {"cores": len(os.sched_getaffinity(0))}
            print(json.dumps(record), flush=True)
            if args.out:
                with args.out.open("a") as out:
                    out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
