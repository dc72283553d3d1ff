"""Job messages on a framed stream: the small I/O shared by the worker and the requester."""

from __future__ import annotations

import trio
from lpnode.protocol.errors import NetworkError
from lpnode.protocol.jobs import MAX_JOB_FRAME_BYTES, JobMessage, decode_job_message, encode_job_message
from lpnode.protocol.signing import NodeKey

from .framing import READ_BYTES, FramedStream, FrameKind
from .network.base import ByteStream

MAX_LINGER_BYTES = 64 * 1024  # read and dropped while waiting for the peer's end; more ends the wait


async def send_job_message(framed: FramedStream, msg: JobMessage, key: NodeKey) -> None:
    """Send ``msg``; a quote is sealed with ``key`` (only the worker sends quotes)."""
    await framed.send_frame(encode_job_message(msg, key), FrameKind.MESSAGE)


async def receive_job_message(framed: FramedStream, timeout_s: float | None = None) -> JobMessage:
    """The next job message; ``timeout_s`` bounds the wait for it to start (StreamTimeout).

    Raises the codec's errors for garbage, StreamClosed when the peer went away.
    """
    body = await framed.receive_frame(MAX_JOB_FRAME_BYTES, FrameKind.MESSAGE, timeout_s=timeout_s)
    return decode_job_message(body)


async def await_peer_close(stream: ByteStream, timeout_s: float) -> bool:
    """Wait for the peer's end of ``stream`` (its close, reset or disconnect), dropping whatever still comes.

    True when the end came within ``timeout_s`` and ``MAX_LINGER_BYTES``. The worker waits here
    after its last message instead of closing at once: the requester closes only once it holds and
    has checked the outputs, so the stream is never torn down under bytes still on their way.
    """
    dropped = 0
    with trio.move_on_after(timeout_s):
        # A cancelled receive_some has consumed nothing, so the timeout cannot leave a write half done.
        while dropped <= MAX_LINGER_BYTES:
            try:
                data = await stream.receive_some(READ_BYTES)
            except (NetworkError, trio.ClosedResourceError, trio.BrokenResourceError):
                return True
            if not data:
                return True
            dropped += len(data)
    return False


__all__ = ["MAX_LINGER_BYTES", "await_peer_close", "receive_job_message", "send_job_message"]
