"""Job streams opened ahead of need: at most one idle stream per worker we are using.

A new job stream costs a round trip before the QuoteRequest can go (multistream-select's
answer): tens of ms between homes, and on loopback still ~3-4 ms of py-libp2p CPU on both
ends (yamux SYN and ACK, the negotiation, a burst of window updates; docs/benchmarks.md).
A requester sending jobs back to back to one worker, as scripts, workflows and spot checks
do, need not pay it each time: once the worker has the job and runs it,
:meth:`SpareStreams.replenish` opens the next stream to it, hidden behind the run, and the
next job to that worker :meth:`~SpareStreams.take` s it instead of opening one (waiting for it
if it is still being opened: that is never slower than opening another).

Measured (``bench/spares.py``, docs/benchmarks.md "Spare job streams"): on the H100 host,
3-4 ms less per job on loopback; on the in-memory network with a 20 or 60 ms round trip, one
round trip less. Opened after the job instead, the open only moved into the requester's
answer (output store, final record) and saved nothing reliable. The cost: the worker handles
the open while its model runs; on a GPU worker that did not measurably slow the run, while on
a 2-core CPU box running tiny models the open competes for the cores themselves.

Nothing on the wire changes: a spare is an ordinary job stream whose QuoteRequest comes
later. Workers must allow for that (docs/protocol.md §8.7): ours wait
``WorkerConfig.request_timeout_s`` (10 s) for it, and a spare is closed unused after
``ttl_s`` (5 s by default), well before. A spare can still be dead when taken (the worker
restarted, or is another implementation with a shorter wait): the requester then opens a
fresh stream, so a spare can cost a job a few ms but never an attempt (``job_requester``).

Bounded: one spare (held or being opened) per peer, ``max_peers`` peers at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import trio
from lpnode.protocol.errors import NetworkError

from .network.base import ByteStream, Network, PeerId

log = logging.getLogger("lpnode.spare_streams")

DEFAULT_TTL_S = 5.0  # half our workers' request_timeout_s: a spare is closed before the worker gives up on it
DEFAULT_MAX_PEERS = 32  # workers with a spare at once; each costs both sides one idle stream
OPEN_TIMEOUT_S = 5.0  # a spare that takes longer to open is not worth having
CLOSE_DELAY_S = 0.01  # a used job stream is closed this long after its answer left (close_soon)


@dataclass
class _Spare:
    peer: PeerId
    stream: ByteStream | None = None  # None while it is being opened
    ready: trio.Event = field(default_factory=trio.Event)  # the open finished, either way
    taken: trio.Event = field(default_factory=trio.Event)


class SpareStreams:
    """Idle job streams, one per recently used worker; built by :func:`open_spare_streams`."""

    def __init__(
        self, network: Network, protocol_id: str, nursery: trio.Nursery, *, ttl_s: float, max_peers: int
    ) -> None:
        self._network = network
        self._protocol_id = protocol_id
        self._nursery = nursery
        self._ttl_s = ttl_s
        self._max_peers = max_peers
        self._spares: dict[PeerId, _Spare] = {}  # opening or held, one per peer
        self._closed = False
        self._changed = trio.Event()
        # opened, taken, expired (closed unused), open_failed, stale (taken, but dead: see note_stale), full
        self.counts: Counter[str] = Counter()

    async def take(self, peer: PeerId) -> ByteStream | None:
        """The idle stream to ``peer``, now the caller's to use and close; None if there is none.

        A spare still being opened is waited for (at most ``OPEN_TIMEOUT_S``): it is further along
        than a stream the caller would open now.
        """
        spare = self._spares.get(peer)
        if spare is None:
            return None
        await spare.ready.wait()
        if spare.stream is None or self._spares.get(peer) is not spare:
            return None  # the open failed, or another job took it meanwhile
        del self._spares[peer]
        spare.taken.set()
        self.counts["taken"] += 1
        return spare.stream

    def replenish(self, peer: PeerId, addrs: Sequence[str] = ()) -> None:
        """Open a spare stream to ``peer`` in the background, unless one is held or being opened."""
        if self._closed or peer in self._spares:
            return
        if len(self._spares) >= self._max_peers:
            self.counts["full"] += 1
            return
        spare = _Spare(peer)
        self._spares[peer] = spare
        self._nursery.start_soon(self._keep, spare, tuple(addrs))

    def close_soon(self, stream: ByteStream) -> None:
        """Close a finished job stream in the background, :data:`CLOSE_DELAY_S` later: its end tells the
        worker the outputs arrived, and the job's answer need not wait for that write and py-libp2p's
        bookkeeping behind it. Closed at once, it ran while the answer's last steps did, and took the
        event loop and the GIL from them (the final record's hop: 0.9 -> 1.5 ms on the H100 host)."""
        self._nursery.start_soon(_close_later, stream)

    async def wait_changed(self) -> None:
        """Return once a spare has been opened, failed to open, or closed unused."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def note_stale(self) -> None:
        """A taken spare turned out dead before the worker said anything (counted, for the bench and tests)."""
        self.counts["stale"] += 1

    def held(self) -> frozenset[PeerId]:
        """Peers with a spare ready to take."""
        return frozenset(peer for peer, spare in self._spares.items() if spare.stream is not None)

    async def _keep(self, spare: _Spare, addrs: tuple[str, ...]) -> None:
        """Open the spare, hold it until taken or ``ttl_s`` passes, then close it if unused."""
        try:
            with trio.fail_after(OPEN_TIMEOUT_S):
                stream = await self._network.open_stream(spare.peer, self._protocol_id, addrs)
        except (NetworkError, trio.TooSlowError) as exc:
            # not an error: the job that wanted it opens its own stream, and reports a dead peer itself
            log.debug("no spare stream to %s: %s", spare.peer, exc)
            self.counts["open_failed"] += 1
            self._forget(spare)
            return
        else:
            spare.stream = stream
            self.counts["opened"] += 1
        finally:
            spare.ready.set()  # whatever happened (a cancelled open too): no take() waits forever
            self._notify()
        try:
            with trio.move_on_after(self._ttl_s):
                await spare.taken.wait()
        finally:
            # Unless take() handed it out (synchronously after its wait, so there is no race with this
            # check), it is ours to close: at the ttl, or when the node shuts down (aclose is shielded).
            if not spare.taken.is_set():
                self._forget(spare)
                self.counts["expired"] += 1
                self._notify()
                with contextlib.suppress(NetworkError):
                    await stream.aclose()

    def stop(self) -> None:
        """Open no more spares (the held ones are closed as the owning block exits)."""
        self._closed = True

    def _forget(self, spare: _Spare) -> None:
        if self._spares.get(spare.peer) is spare:
            del self._spares[spare.peer]


async def _close_later(stream: ByteStream) -> None:
    try:
        await trio.sleep(CLOSE_DELAY_S)
    finally:  # a node that stops closes it at once
        with trio.CancelScope(shield=True), contextlib.suppress(NetworkError):
            await stream.aclose()


@contextlib.asynccontextmanager
async def open_spare_streams(
    network: Network, protocol_id: str, *, ttl_s: float = DEFAULT_TTL_S, max_peers: int = DEFAULT_MAX_PEERS
) -> AsyncIterator[SpareStreams]:
    """Spare streams for ``protocol_id``; every spare still held is closed when the block exits."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive (leave spares out to open every stream on demand)")
    if max_peers < 1:
        raise ValueError("max_peers must be at least 1")
    async with trio.open_nursery() as nursery:
        spares = SpareStreams(network, protocol_id, nursery, ttl_s=ttl_s, max_peers=max_peers)
        try:
            yield spares
        finally:
            spares.stop()
            nursery.cancel_scope.cancel()


__all__ = ["DEFAULT_TTL_S", "SpareStreams", "open_spare_streams"]
