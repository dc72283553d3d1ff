"""A connection health probe that tells a peer without ping from a dead one.

py-libp2p's health monitor pings each connection (``/ipfs/ping/1.0.0``) and, as
configured here (``abort_connection_on_ping_failure``), closes one whose ping
fails: that is how a frozen peer is dropped within seconds. Its probe means to
count a peer that answers ``na`` (it serves no ping) as alive, but in 0.8.1
``MultiselectClient.select_one_of`` wraps that answer in a plain
``MultiselectClientError``, which the probe's ``except ProtocolNotSupportedError``
never sees: the "failed" ping closed the connection at the first health check,
within a second of connecting, to every peer that serves no ping (a js-libp2p
node without ``@libp2p/ping``; found by the JS requester in tests/e2e/js_peer),
killing its jobs in flight. docs/protocol.md §2 asks peers to serve ping; one
that does not is no less alive.

:func:`ping_connection` is that probe, same signature and result, with the
negotiation through :class:`PipelinedMultiselectClient` (one round trip, and it
raises ``ProtocolNotSupportedError`` for ``na``). :func:`install` puts it where
the monitor looks it up; the monitor is built inside the swarm's ``run``, so a
module attribute is the one seam it offers.
"""

from __future__ import annotations

import contextlib
import logging

import trio
from libp2p.abc import INetConn, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.network.health import monitor
from libp2p.network.health.ping_probe import ConnectionPingResult
from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

from ._multiselect import PipelinedMultiselectClient

log = logging.getLogger("lpnode.network.health")

# what a stream to a dying peer raises: py-libp2p's errors, a broken socket, a pong that is not our ping
_PROBE_FAILURES = (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError)


async def ping_connection(
    conn: INetConn,
    *,
    ping_timeout: float,
    negotiate_timeout: int | None = None,
    skip_when_streams_open: bool = False,
) -> ConnectionPingResult:
    """Ping ``conn`` once: success when the peer pongs, or answers that it serves no ping; failure on silence."""
    if skip_when_streams_open and conn.get_streams():
        return ConnectionPingResult(success=True, skipped=True)
    with trio.move_on_after(ping_timeout):
        stream: INetStream | None = None
        try:
            stream = await conn.new_stream()
            started = trio.current_time()
            client = PipelinedMultiselectClient()
            try:
                await client.select_one_of(
                    [TProtocol(PING_PROTOCOL)], MultiselectCommunicator(stream), negotiate_timeout or int(ping_timeout)
                )
            except ProtocolNotSupportedError:
                # it answered, over this connection, within the timeout: alive, it just serves no ping
                return ConnectionPingResult(success=True, rtt_ms=(trio.current_time() - started) * 1000.0)
            rtt_ms = await perform_ping_roundtrip(stream)
            return ConnectionPingResult(success=True, rtt_ms=float(rtt_ms), protocol_supported=True)
        except _PROBE_FAILURES as exc:
            log.debug("health ping to %s failed: %r", conn.muxed_conn.peer_id, exc)
            return ConnectionPingResult(success=False)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(ping_timeout):
                    await _close(stream)
    log.debug("health ping to %s unanswered for %.1f s", conn.muxed_conn.peer_id, ping_timeout)
    return ConnectionPingResult(success=False)


async def _close(stream: INetStream) -> None:
    try:
        await stream.close()
    except _PROBE_FAILURES:
        with contextlib.suppress(*_PROBE_FAILURES):  # the connection is going: nothing left to tell the peer
            await stream.reset()


def install() -> None:
    """Have py-libp2p's health monitor (every host of this process) probe with :func:`ping_connection`."""
    if not hasattr(monitor, "ping_connection"):  # a py-libp2p whose monitor finds its probe elsewhere
        raise RuntimeError("libp2p.network.health.monitor has no ping_connection to replace: check the py-libp2p pin")
    monitor.ping_connection = ping_connection


__all__ = ["install", "ping_connection"]
