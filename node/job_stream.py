"""Job messages on a framed stream: the small I/O shared by the worker and the requester."""

from __future__ import annotations

from lpnode.protocol.jobs import MAX_JOB_FRAME_BYTES, JobMessage, decode_job_message, encode_job_message
from lpnode.protocol.signing import NodeKey

from .framing import FramedStream, FrameKind


async def send_job_message(framed: FramedStream, msg: JobMessage, key: NodeKey) -> None:
    """Send ``msg``; a quote is sealed with ``key`` (only the worker sends quotes)."""
    await framed.send_frame(encode_job_message(msg, key), FrameKind.MESSAGE)


async def receive_job_message(framed: FramedStream, timeout_s: float | None = None) -> JobMessage:
    """The next job message; ``timeout_s`` bounds the wait for it to start (StreamTimeout).

    Raises the codec's errors for garbage, StreamClosed when the peer went away.
    """
    body = await framed.receive_frame(MAX_JOB_FRAME_BYTES, FrameKind.MESSAGE, timeout_s=timeout_s)
    return decode_job_message(body)


__all__ = ["receive_job_message", "send_job_message"]
