"""HTTP/1.1 for the node's local API: h11 on trio, the ASGI app called in each connection's own task.

Hypercorn served the API until session 13. Measured with ``bench/http_server.py`` (two processes,
one request at a time, a client that writes each request in one piece, a bare ASGI app behind
each server), hypercorn spent 0.41–0.57 ms of CPU per request on its own, this server 0.16–0.30 ms
(the dev box; the H100 host). Hypercorn's cost is what this API does not need: a task, a memory
channel and an idle-timer task per request, a lock and a cancel scope per write, the head and the
body of each answer in separate writes (two segments: the client may wake twice), HTTP/2 and
WebSocket dispatch. Here a request costs its parse, one call of the app, and one write for an
answer that fits one body message.

What it does:

* HTTP/1.1 keep-alive (and 1.0); pipelined requests are answered in order;
* request bodies go to the app as it reads them (``receive``), never buffered whole here;
  ``Expect: 100-continue`` is answered when the app first reads the body (curl waits a second
  for it before an upload over 1 MB);
* an answer's head goes out with its first body message, in one write; HEAD, 204 and 304 answers
  carry no body; streamed answers (server-sent events) are chunked;
* the app's ``receive`` returns ``http.disconnect`` once the client has gone (what Starlette's
  streaming responses watch for), and writes to a client that has gone are dropped;
* a head the server cannot take (malformed, over :attr:`HttpLimits.max_head_bytes`) gets the API's
  own JSON error body (``render_error``), not an empty 400 or 431;
* an answer sent before its request body was read (a 413 for an upload over the limit) is followed
  by a lingering close: the rest of the body is read and dropped for a moment before the socket
  closes, so the kernel does not answer it with a reset that loses the answer on its way.

Bounds (:class:`HttpLimits`): head size, time for a head to arrive, silence inside a body, idle
keep-alive, one write's time, open connections. Not here: TLS (the API listens on loopback; a
remote client comes through a proxy), HTTP/2, WebSockets, ASGI lifespan (the app has no lifespan
handlers).
"""

from __future__ import annotations

import email.utils
import errno
import functools
import http
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RenderError = Callable[[int, str], bytes]  # (status, message) -> a JSON body

_RECEIVE_BYTES = 64 * 1024
_ACCEPT_RETRY_S = 0.1  # out of file descriptors: wait for some to close, as trio.serve_listeners does
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int = 64 * 1024  # request line + headers; over it: 431
    head_timeout_s: float = 10.0  # a new connection's first head, or a head once its first byte is in
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this
    body_idle_s: float = 60.0  # the longest silence inside a request body
    send_timeout_s: float = 60.0  # one write to a client that does not read: it is treated as gone
    linger_s: float = 2.0  # reading and dropping an unread body before closing (see the module's doc)
    max_connections: int = 1000  # beyond it, new connections wait in the listen backlog


DEFAULT_LIMITS = HttpLimits()


def plain_error(status: int, message: str) -> bytes:
    """The error body when the app gives no renderer: ``{"detail": message}``, FastAPI's shape."""
    return json.dumps({"detail": message}).encode()


async def serve_http(
    app: ASGIApp,
    listeners: Sequence[trio.SocketListener],
    *,
    limits: HttpLimits = DEFAULT_LIMITS,
    render_error: RenderError = plain_error,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listeners`` until cancelled; connections are closed when it is."""
    slots = trio.Semaphore(limits.max_connections)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, app, listener, limits, render_error, slots, nursery)
        task_status.started()


async def _accept_loop(
    app: ASGIApp,
    listener: trio.SocketListener,
    limits: HttpLimits,
    render_error: RenderError,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
) -> None:
    server = _address(listener.socket.getsockname())
    while True:
        await slots.acquire()  # released when the connection ends
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release()
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            log.warning("RPC server cannot accept a connection (%s); retrying", exc)
            await trio.sleep(_ACCEPT_RETRY_S)
            continue
        connection = _Connection(app, stream, limits, render_error, server)
        nursery.start_soon(_serve_connection, connection, slots)


async def _serve_connection(connection: _Connection, slots: trio.Semaphore) -> None:
    try:
        await connection.serve()
    except Exception:  # a connection's task root: what broke one connection must not stop the server
        log.exception("RPC connection from %s failed", connection.client)
    finally:
        slots.release()


def _address(sockaddr: Any) -> tuple[str, int] | None:
    return (str(sockaddr[0]), int(sockaddr[1])) if isinstance(sockaddr, tuple) and len(sockaddr) >= 2 else None


class _ClientGone(Exception):
    """The client closed, reset, timed out or broke the protocol: the connection ends, no answer."""


class _Connection:
    """One client connection: its requests in turn, each handed to the app in this task."""

    def __init__(
        self,
        app: ASGIApp,
        stream: trio.SocketStream,
        limits: HttpLimits,
        render_error: RenderError,
        server: tuple[str, int] | None,
    ) -> None:
        self.app = app
        self.stream = stream
        self.limits = limits
        self.render_error = render_error
        self.server = server
        try:
            self.client = _address(stream.socket.getpeername())
        except OSError:  # reset before it was served: its requests, if any, fail on the first read
            self.client = None
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self.served = 0

    async def serve(self) -> None:
        try:
            while (request := await self._read_head()) is not None:
                exchange = _Exchange(self, request)
                await exchange.run()
                self.served += 1
                if not exchange.reusable():
                    if exchange.body_unread():
                        await self._linger()
                    return
                self.h11.start_next_cycle()
        except _ClientGone:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _read_head(self) -> h11.Request | None:
        """The next request's head; None when the client closed, idled out, or sent no valid head."""
        first_byte_in = self.h11.trailing_data[0] != b""
        wait = self.limits.head_timeout_s if first_byte_in or not self.served else self.limits.keep_alive_s
        with trio.move_on_after(wait) as timer:
            while True:
                try:
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    too_large = exc.error_status_hint == 431
                    await self._refuse_head(
                        exc.error_status_hint, "" if too_large else f"malformed HTTP request: {exc}"
                    )
                    return None
                if isinstance(event, h11.Request):
                    # h11 bounds a head that arrives in pieces; one that arrives whole is measured here
                    if _head_size(event) > self.limits.max_head_bytes:
                        await self._refuse_head(431)
                        return None
                    return event
                if event is h11.NEED_DATA:
                    data = await self._receive()
                    if data and not first_byte_in:  # the head has begun: it gets the head's own time
                        first_byte_in = True
                        timer.deadline = trio.current_time() + self.limits.head_timeout_s
                    self.h11.receive_data(data)
                    continue
                return None  # ConnectionClosed, or PAUSED after a close
        return None  # idle or slow: closed without an answer, as an idle keep-alive connection is

    async def _refuse_head(self, status: int, message: str = "") -> None:
        """Answer a head the server will not hand to the app, then the connection closes."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        message = message or f"request head over the node's limit of {self.limits.max_head_bytes} bytes"
        body = self.render_error(status, message)
        head = h11.Response(status_code=status, headers=_error_headers(body), reason=_reason(status))
        try:
            data = [self.h11.send(head), self.h11.send(h11.Data(data=body)), self.h11.send(h11.EndOfMessage())]
            await self.send_all(b"".join(part for part in data if part))
        except (h11.LocalProtocolError, _ClientGone):
            return
        await self._linger()  # whatever the client still sends must not reset the answer away

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(_RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone() from exc

    async def receive_with(self, timeout_s: float) -> bytes:
        with trio.move_on_after(timeout_s):
            return await self._receive()
        raise _ClientGone()

    async def send_all(self, data: bytes) -> None:
        if not data:
            return
        try:
            with trio.fail_after(self.limits.send_timeout_s):
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            raise _ClientGone() from exc

    async def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends, for a moment (see the module's doc)."""
        with trio.move_on_after(self.limits.linger_s):
            try:
                await self.stream.send_eof()
                while await self.stream.receive_some(_RECEIVE_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


class _Exchange:
    """One request and its answer: the ASGI scope, ``receive`` and ``send`` the app is called with."""

    def __init__(self, connection: _Connection, request: h11.Request) -> None:
        self.connection = connection
        self.h11 = connection.h11
        self.request = request
        self.method = request.method.decode("ascii")
        self.head: h11.Response | None = None  # the answer's head, until its first body message
        self.no_body = False  # HEAD, 204, 304: h11 refuses body bytes
        self.started = False
        self.complete = False
        self.gone = False  # the client closed or broke: writes are dropped, receive says disconnect
        self.body_read = False
        self.pending: Any = None  # an h11 event read ahead (see _end_of_body_next)

    async def run(self) -> None:
        try:
            await self.connection.app(self._scope(), self.receive, self.send)
        except _ClientGone:
            self.gone = True
        except Exception:
            # FastAPI answers 500 itself and re-raises for the server's log: log it here only when
            # the client got no complete answer
            if self.complete:
                log.debug("%s %s raised after its answer", self.method, self.request.target, exc_info=True)
            else:
                log.exception("%s %s failed", self.method, self.request.target)
        if self.gone or self.complete:
            return
        if self.started:  # a broken answer cannot be mended: the connection closes (not reusable())
            log.error("%s %s ended its answer early", self.method, self.request.target)
            return
        body = self.connection.render_error(500, "internal error: the API gave no answer; see the node's log")
        try:
            head = h11.Response(status_code=500, headers=_error_headers(body), reason=_reason(500))
            await self._write(head, body, more=False)
        except _ClientGone:
            self.gone = True

    def reusable(self) -> bool:
        self._skip_buffered_body()
        return not self.gone and self.complete and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def _skip_buffered_body(self) -> None:
        """Consume what is left of the request body in the buffer: a GET's end of message, which no
        app reads, or the rest of a body the app did not want. Nothing is read from the socket."""
        try:
            while self.pending is not None or self.h11.their_state is h11.SEND_BODY:
                event = self._take_event()
                if not isinstance(event, h11.Data | h11.EndOfMessage):
                    return  # NEED_DATA: the rest is still on its way (a lingering close reads it)
        except _ClientGone:
            self.gone = True

    def body_unread(self) -> bool:
        return not self.gone and self.h11.their_state is h11.SEND_BODY

    def _scope(self) -> Scope:
        target = self.request.target
        path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.request.http_version.decode("ascii"),
            "method": self.method,
            "scheme": "http",
            "path": urllib.parse.unquote(path.decode("ascii")),  # h11 admits only visible ASCII in a target
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(self.request.headers),  # h11 gives the names in lower case, as ASGI wants
            "client": self.connection.client,
            "server": self.connection.server,
            "state": {},
        }

    # ------------------------------------------------------------------ receive

    async def receive(self) -> Message:
        if self.gone:
            return {"type": "http.disconnect"}
        if self.body_read:
            await self._wait_gone()
            return {"type": "http.disconnect"}
        if self.h11.they_are_waiting_for_100_continue:
            continue_head = h11.InformationalResponse(status_code=100, headers=[])
            await self._send_raw(self.h11.send(continue_head))
            if self.gone:
                return {"type": "http.disconnect"}
        try:
            return await self._next_body_message()
        except _ClientGone:
            self.gone = True
            return {"type": "http.disconnect"}

    async def _next_body_message(self) -> Message:
        while True:
            event = self._take_event()
            if event is h11.NEED_DATA:
                data = await self.connection.receive_with(self.connection.limits.body_idle_s)
                self.h11.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                # Most bodies arrive whole: say so in this message, saving the app a second call
                more = not self._end_of_body_next()
                self.body_read = not more
                return {"type": "http.request", "body": bytes(event.data), "more_body": more}
            if isinstance(event, h11.EndOfMessage):
                self.body_read = True
                return {"type": "http.request", "body": b"", "more_body": False}
            raise _ClientGone()  # ConnectionClosed mid-body

    def _take_event(self) -> Any:
        if self.pending is None:
            return self._h11_event()
        event, self.pending = self.pending, None
        return event

    def _h11_event(self) -> Any:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:  # a broken chunked encoding, a body over its length
            raise _ClientGone() from exc

    def _end_of_body_next(self) -> bool:
        """True, and the end consumed, when the body's end is already in the buffer after its data."""
        if self.h11.their_state is not h11.SEND_BODY:
            return False
        event = self._h11_event()
        if isinstance(event, h11.EndOfMessage):
            return True
        if event is not h11.NEED_DATA:  # the next chunk of a chunked body: the next receive() returns it
            self.pending = event
        return False

    async def _wait_gone(self) -> None:
        """The request is read: wait until the client closes (what ``http.disconnect`` means after it)."""
        while True:
            try:
                data = await self.connection.receive_with(math.inf)
            except _ClientGone:
                self.gone = True
                return
            if not data:
                self.gone = True
                return
            # A pipelined next request: keep it for the connection, up to a head's worth
            self.h11.receive_data(data)
            if len(self.h11.trailing_data[0]) > self.connection.limits.max_head_bytes:
                await trio.sleep_forever()

    # --------------------------------------------------------------------- send

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            status = int(message["status"])
            headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
            self.no_body = self.method == "HEAD" or status in (204, 304)
            self.head = h11.Response(
                status_code=status, headers=[*headers, (b"date", _http_date())], reason=_reason(status)
            )
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("ASGI: http.response.body outside an answer")
            more = bool(message.get("more_body", False))
            await self._write(self.head, bytes(message.get("body", b"")), more=more)
            self.head = None
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} for an HTTP request")

    async def _write(self, head: h11.Response | None, body: bytes, *, more: bool) -> None:
        """The head (if not sent yet), this body message and, at the end, the body's end: one write."""
        if self.gone:
            self.complete = not more  # the app's answer ends; nobody reads it
            return
        parts = []
        if head is not None:
            self.started = True
            parts.append(self.h11.send(head))
        if body and not self.no_body:
            parts.append(self.h11.send(h11.Data(data=body)))  # LocalProtocolError: more than content-length
        if not more:
            parts.append(self.h11.send(h11.EndOfMessage()))  # ... or less
        await self._send_raw(b"".join(part for part in parts if part))
        self.complete = not more

    async def _send_raw(self, data: bytes) -> None:
        try:
            await self.connection.send_all(data)
        except _ClientGone:
            self.gone = True  # dropped: the app finishes its answer to nobody, as if it had been sent


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:  # a status the standard does not name: the reason phrase is optional
        return b""


def _head_size(request: h11.Request) -> int:
    return (
        len(request.method) + len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers)
    )


def _error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"date", _http_date()),
    ]


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header (RFC 9110 §6.6.1), formatted once a second."""
    global _date_cache
    second = int(time.time())  # wall-clock time is what the header states
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, usegmt=True).encode())
    return _date_cache[1]


__all__ = ["DEFAULT_LIMITS", "ASGIApp", "HttpLimits", "RenderError", "plain_error", "serve_http"]
