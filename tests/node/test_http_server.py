"""The API's HTTP/1.1 server (lpnode.node.http_server) over real loopback sockets, from raw clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from lpnode.node.http_server import DEFAULT_LIMITS, HttpLimits, Message, Receive, Scope, Send, serve_http

pytestmark = pytest.mark.trio


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the method, path, query and the whole body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "body": body.decode(),
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serving(app: Callable[..., Any], limits: HttpLimits = DEFAULT_LIMITS) -> AsyncIterator[int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http(app, listeners, limits=limits, task_status=task_status))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_answer(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """One answer with a content-length: (head, body); what follows it stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        assert data, f"connection closed mid-answer: {bytes(buffer)!r}"
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(buffer) < length:
        data = await stream.receive_some(65536)
        assert data, "connection closed mid-body"
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


async def until_closed(stream: trio.SocketStream) -> bytes:
    rest = b""
    while data := await stream.receive_some(65536):
        rest += data
    return rest


async def test_keep_alive_answers_pipelined_requests_in_order() -> None:
    async with serving(echo) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST /a?x=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhelloGET /b%20c HTTP/1.1\r\nhost: t\r\n\r\n"
        )
        buffer = bytearray()
        head, body = await read_answer(stream, buffer)
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\ndate: " in head.lower()
        assert json.loads(body) == {"method": "POST", "path": "/a", "query": "x=1", "body": "hello"}
        _, body = await read_answer(stream, buffer)
        assert json.loads(body) == {"method": "GET", "path": "/b c", "query": "", "body": ""}
        # and the connection still takes requests
        await stream.send_all(b"GET /c HTTP/1.1\r\nhost: t\r\n\r\n")
        _, body = await read_answer(stream, buffer)
        assert json.loads(body)["path"] == "/c"


async def test_chunked_request_body_reaches_the_app_whole() -> None:
    async with serving(echo) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await stream.send_all(b"4\r\ndefg\r\n2\r\nhi\r\n0\r\n\r\n")
        _, body = await read_answer(stream, bytearray())
        assert json.loads(body)["body"] == "abcdefghi"


async def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    async with serving(echo) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:  # a client that waits for it, as curl does before a large upload
            interim += await stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"abc")
        _, body = await read_answer(stream, bytearray())
        assert json.loads(body)["body"] == "abc"


async def test_head_answer_has_no_body_and_the_connection_goes_on() -> None:
    async with serving(echo) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\nGET /y HTTP/1.1\r\nhost: t\r\n\r\n")
        received = b""
        while received.count(b"\r\n\r\n") < 2 or not received.endswith(b"}"):
            received += await stream.receive_some(65536)
        head_answer, _, rest = received.partition(b"\r\n\r\n")
        assert head_answer.startswith(b"HTTP/1.1 200") and b"content-length: " in head_answer.lower()
        assert rest.startswith(b"HTTP/1.1 200")  # the GET's answer follows at once: no body after the HEAD's head
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["path"] == "/y"


@pytest.mark.parametrize(
    ("request_head", "status", "words"),
    [
        (b"GET /x HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "over the node's limit"),
        (b"NOT AN HTTP REQUEST\r\n\r\n", 400, "malformed HTTP request"),
    ],
)
async def test_a_head_the_server_refuses_gets_the_api_error_body(request_head: bytes, status: int, words: str) -> None:
    def render(code: int, message: str) -> bytes:
        return json.dumps({"error": f"e{code}", "message": message}).encode()

    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not see a refused head")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_http(never, listeners, render_error=render, task_status=task_status)
        )
        async with await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1]) as stream:
            await stream.send_all(request_head)
            head, body = await read_answer(stream, bytearray())
            assert head.startswith(f"HTTP/1.1 {status} ".encode())
            answer = json.loads(body)
            assert answer["error"] == f"e{status}" and words in answer["message"]
            assert await until_closed(stream) == b""
        nursery.cancel_scope.cancel()


async def test_an_answer_before_the_upload_is_read_reaches_the_client_whole() -> None:
    """A 413 sent while the client is still uploading: the lingering close lets the client read it
    instead of a reset, and the connection then closes."""
    refusal = b'{"error": "input_too_large"}'

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the first piece only
        headers = [(b"content-length", str(len(refusal)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": refusal})

    async with serving(refuse) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n\r\n" + b"x" * 65536)
        buffer = bytearray()
        async with trio.open_nursery() as nursery:

            async def keep_uploading() -> None:
                for _ in range(64):  # 4 MiB more, which the server reads and drops
                    await stream.send_all(b"x" * 65536)

            nursery.start_soon(keep_uploading)
            head, body = await read_answer(stream, buffer)
        assert head.startswith(b"HTTP/1.1 413 ") and body == refusal
        assert await until_closed(stream) == b""


async def test_disconnect_is_seen_by_an_app_waiting_on_receive() -> None:
    saw_disconnect = trio.Event()

    async def stream_until_gone(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert await receive() == {"type": "http.request", "body": b"", "more_body": False}
        message: Message = await receive()  # blocks until the client goes
        assert message == {"type": "http.disconnect"}
        saw_disconnect.set()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})  # dropped, no error

    async with serving(stream_until_gone) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /events HTTP/1.1\r\nhost: t\r\n\r\n")
        received = b""
        while b"data: 1" not in received:
            received += await stream.receive_some(65536)
        assert b"transfer-encoding: chunked" in received.lower()
        await stream.aclose()
        await saw_disconnect.wait()


async def test_an_app_that_fails_before_answering_gets_a_500_and_the_server_goes_on() -> None:
    calls = 0

    async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        await echo(scope, receive, send)

    async with serving(flaky) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        failed = await client.get("/first")
        assert failed.status_code == 500 and "internal error" in failed.json()["detail"]
        assert (await client.post("/second", content=b"ok")).json()["body"] == "ok"


async def test_an_idle_connection_is_closed_after_the_keep_alive_time() -> None:
    limits = HttpLimits(keep_alive_s=0.05, head_timeout_s=0.05)
    async with serving(echo, limits) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n")
        await read_answer(stream, bytearray())
        assert await until_closed(stream) == b""  # the server closed it, unasked


async def test_connections_over_the_limit_wait_for_one_to_close() -> None:
    async with serving(echo, HttpLimits(max_connections=1)) as port:
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(b"GET /1 HTTP/1.1\r\nhost: t\r\n\r\n")
        await read_answer(first, bytearray())
        second = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel takes it into the backlog
        await second.send_all(b"GET /2 HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.move_on_after(0.2):  # not served while the first connection is open
            await second.receive_some(65536)
            raise AssertionError("the second connection was served beside the first")
        await first.aclose()
        _, body = await read_answer(second, bytearray())
        assert json.loads(body)["path"] == "/2"
        await second.aclose()


async def test_a_connection_that_breaks_the_server_code_does_not_stop_the_server() -> None:
    async def wrong_length(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/bad":  # more body than its content-length: h11 refuses to send it
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"too long"})
            return
        await echo(scope, receive, send)

    async with serving(wrong_length) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/bad")
        assert (await client.get("/good")).json()["path"] == "/good"
