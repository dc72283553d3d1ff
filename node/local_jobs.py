"""The ``allow_local`` path: a job this node asked for, run by this node's own worker, without the network.

Neither network backend opens a stream to its own host, so :class:`LocalWorker`
hands this node's :class:`~lpnode.node.job_worker.JobWorker` one end of an
in-process byte stream and gives the requester the other. Everything else is
the real thing: the same negotiation, quote and reservation, input and output
transfers, a receipt signed by this node and checked by the requester, so a
local result is exactly as verifiable as a remote one.

Built by whoever holds the node's worker (``lpnode run``)::

    worker = await nursery.start(serve_job_worker, network, key, pool, ...)
    local = LocalWorker(worker)
    outcome = await run_job(node, job, allow_local=True, local=local, ...)

The worker's handler for a local stream runs inside the requester's try (its
deadline and cancellation bound it, as a remote worker is bound by the
requester's Cancel), and the try ends only once the handler has returned or
been cancelled: nothing of a local job outlives ``run_job``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from lpnode.protocol.errors import StreamClosed
from lpnode.protocol.names import JOB_PROTOCOL

from .job_worker import JobWorker
from .network.base import ByteStream, PeerId

DEFAULT_WINDOW_BYTES = 256 * 1024  # bytes in flight per direction, like a yamux stream window
HANDLER_GRACE_S = 1.0  # time the worker gets to wind down after the requester closed its end


class _Pipe:
    """One direction: a bounded byte buffer with end-of-stream and reader-gone flags."""

    def __init__(self, window: int) -> None:
        self.buffer = bytearray()
        self.window = window
        self.eof = False  # the writer closed (FIN after the buffered bytes)
        self.reader_gone = False  # the reader closed: further writes fail
        self.changed = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self.changed.unpark_all()


class LocalStream:
    """One end of an in-process stream; implements :class:`~lpnode.node.network.base.ByteStream`.

    Semantics as the network backends keep them: ``receive_some`` returns at
    least one byte or ``b""`` once the other end closed; ``send_all`` to an end
    that closed raises :class:`StreamClosed`; ``aclose`` is idempotent. A
    cancelled ``receive_some`` consumes nothing.
    """

    def __init__(self, remote_peer: PeerId, protocol_id: str, *, send: _Pipe, recv: _Pipe) -> None:
        self._remote_peer = remote_peer
        self._protocol_id = protocol_id
        self._send = send
        self._recv = recv
        self._closed = False

    @property
    def remote_peer(self) -> PeerId:
        return self._remote_peer

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        pipe = self._send
        view = memoryview(data)
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed locally")
            if pipe.reader_gone:
                raise StreamClosed(f"local stream {self._protocol_id} to {self._remote_peer} is gone")
            if not view:
                return
            room = pipe.window - len(pipe.buffer)
            if room <= 0:
                await pipe.changed.park()
                continue
            pipe.buffer += view[:room]
            view = view[room:]
            pipe.wake()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        await trio.lowlevel.checkpoint()
        pipe = self._recv
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed locally")
            if pipe.buffer:
                data = bytes(pipe.buffer[:max_bytes])
                del pipe.buffer[:max_bytes]
                pipe.wake()
                return data
            if pipe.eof:
                return b""
            await pipe.changed.park()

    async def aclose(self) -> None:
        """FIN after the bytes already sent, and stop reading; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._send.eof = True
        self._send.wake()
        self._recv.reader_gone = True
        self._recv.buffer.clear()  # nobody will read it; a writer blocked on the window wakes and fails
        self._recv.wake()
        await trio.lowlevel.checkpoint()


def local_stream_pair(
    peer_id: PeerId, protocol_id: str, window: int = DEFAULT_WINDOW_BYTES
) -> tuple[LocalStream, LocalStream]:
    """(requester's end, worker's end) of a fresh stream from ``peer_id`` to itself."""
    if window < 1:
        raise ValueError("window must be at least 1 byte")
    there, back = _Pipe(window), _Pipe(window)
    return (
        LocalStream(peer_id, protocol_id, send=there, recv=back),
        LocalStream(peer_id, protocol_id, send=back, recv=there),
    )


class LocalWorker:
    """This node's own job worker, reached in process (see the module docstring).

    ``worker`` must be the worker of the node that will call ``run_job`` with it:
    its key signs the receipt, and ``run_job`` checks the peer ids agree.
    """

    def __init__(self, worker: JobWorker, *, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        if window_bytes < 1:
            raise ValueError("window_bytes must be at least 1")
        self.worker = worker
        self.window_bytes = window_bytes

    @property
    def peer_id(self) -> PeerId:
        return self.worker.key.peer_id

    @asynccontextmanager
    async def open_stream(self) -> AsyncIterator[ByteStream]:
        """A job stream to this node's worker; the worker serves it until the block ends."""
        mine, theirs = local_stream_pair(self.peer_id, JOB_PROTOCOL, self.window_bytes)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def serve() -> None:
                try:
                    await self.worker.handle(theirs)  # catches everything but cancellation at its root
                finally:
                    done.set()

            nursery.start_soon(serve)
            try:
                yield mine
            finally:
                await mine.aclose()
                # A finished job returns at once; an abandoned one hears the close and winds down.
                # Past the grace, it is cancelled, so no part of a local job outlives the try.
                with trio.move_on_after(HANDLER_GRACE_S):
                    await done.wait()
                nursery.cancel_scope.cancel()


__all__ = ["DEFAULT_WINDOW_BYTES", "LocalStream", "LocalWorker", "local_stream_pair"]
