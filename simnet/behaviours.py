"""How simulated nodes misbehave, without the node code knowing.

Every behaviour is applied from outside the production node: through the
objects it is handed (a pool, an offer source, a network), never by a flag
inside ``node/``.

* **honest** — the node as shipped.
* **slow** — its simulated pool runs ``slowdown`` times longer (``SimPoolConfig.slowdown``).
* **flaky** — :class:`FlakyNetwork` abandons a share of inbound job streams
  part-way (the handler is cancelled and the stream closed), as a crashing or
  rebooting worker would: the requester sees the stream end with no result.
* **churn** — :func:`churn_schedule` draws when the node leaves and comes back;
  the runner cancels the node's whole stack (network included) and restarts it
  with the same key.
* **liar** — :func:`lying_offer` wraps what the advert publishes: every model
  claimed warm, a price a tenth of what the worker quotes, or a model it does
  not serve.
* **cheater** — the simulated pool returns cheated outputs
  (``reputation.cheats.CheatMode`` values; ``SimPoolConfig.cheat``). Detecting them
  needs the requester's spot checks (``reputation.spot_check``), which simnet does not
  run yet; until it does, the oracle (``jobs.oracle``) counts the bad outputs accepted.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import trio
from lpnode.node.gossip import Offer
from lpnode.node.network.base import (
    ByteStream,
    ConnectionEvent,
    GossipMessage,
    GossipValidator,
    Network,
    StreamHandler,
)
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.names import JOB_PROTOCOL

EXTRA_MODEL = ModelOffer(
    pipeline="image-to-video",
    model_id="stabilityai/stable-video-diffusion-img2vid-xt",
    weights_sha256="e" * 64,
    warm=True,
    speed_mpx_steps_per_s=50.0,
    price_per_mpx_step=1,
)


def lying_offer(honest: Callable[[], Offer], lie: str) -> Callable[[], Offer]:
    """An advert source that lies about ``honest``'s offer: ``warm``, ``price`` or ``models``."""

    def offer() -> Offer:
        real = honest()
        if lie == "warm":
            models = tuple(dataclasses.replace(m, warm=True) for m in real.models)
        elif lie == "price":
            models = tuple(
                dataclasses.replace(m, price_per_mpx_step=max(1, m.price_per_mpx_step // 10)) for m in real.models
            )
        elif lie == "models":
            models = (*real.models, EXTRA_MODEL)
        else:
            raise ValueError(f"unknown lie {lie!r}")
        return dataclasses.replace(real, models=models)

    return offer


class FlakyNetwork:
    """A :class:`Network` whose job handler abandons ``drop_share`` of the jobs part-way.

    A dropped job's handler is cancelled ``after_s`` (drawn uniformly from the
    range) after its stream opened, which usually falls mid-run, and the
    stream is closed: what a worker that crashes or loses power looks like from
    the requester's side. ``dropped`` counts them.
    """

    def __init__(
        self, inner: Network, drop_share: float, rng: random.Random, after_s: tuple[float, float] = (0.2, 2.0)
    ) -> None:
        self._inner = inner
        self._share = drop_share
        self._rng = rng
        self._after = after_s
        self.dropped = 0

    @property
    def local_peer(self) -> str:
        return self._inner.local_peer

    def listen_addrs(self) -> list[str]:
        return self._inner.listen_addrs()

    def connected_peers(self) -> frozenset[str]:
        return self._inner.connected_peers()

    async def connect(self, addr: str) -> str:
        return await self._inner.connect(addr)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._inner.publish(topic, data)

    def subscribe(
        self, topic: str, validator: GossipValidator | None = None, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        return self._inner.subscribe(topic, validator, buffer=buffer)

    def topic_peers(self, topic: str) -> frozenset[str]:
        return self._inner.topic_peers(topic)

    def connection_events(
        self, *, buffer: int = 256
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[ConnectionEvent]]:
        return self._inner.connection_events(buffer=buffer)

    async def open_stream(self, peer: str, protocol_id: str, addrs: Sequence[str] = ()) -> ByteStream:
        return await self._inner.open_stream(peer, protocol_id, addrs)

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        if protocol_id != JOB_PROTOCOL:
            self._inner.set_stream_handler(protocol_id, handler)
            return

        async def flaky(stream: ByteStream) -> None:
            if self._rng.random() >= self._share:
                await handler(stream)
                return
            with trio.move_on_after(self._rng.uniform(*self._after)) as scope:
                await handler(stream)
            if scope.cancelled_caught:
                self.dropped += 1
                await stream.aclose()

        self._inner.set_stream_handler(protocol_id, flaky)


def churn_schedule(rng: random.Random, *, up_s: float, down_s: float, until_s: float) -> list[tuple[float, float]]:
    """(leave, return) times from 0 to ``until_s``: exponential online and offline spells with these means.

    The first spell starts at a uniformly random phase of an online period, so
    churners do not all leave together.
    """
    spells: list[tuple[float, float]] = []
    t = rng.uniform(0, up_s)
    while t < until_s:
        back = t + rng.expovariate(1 / down_s)
        spells.append((t, back))
        t = back + rng.expovariate(1 / up_s)
    return spells


def cheat_modes() -> tuple[str, ...]:
    """The cheats the simulated pool can play: ``reputation.cheats.CheatMode`` when present."""
    try:
        from lpnode.reputation.cheats import CheatMode
    except ImportError:  # the reputation package is optional to simnet
        return ("other_seed", "half_steps", "other_model", "blank", "copied")
    return tuple(mode.value for mode in CheatMode)


__all__ = ["FlakyNetwork", "cheat_modes", "churn_schedule", "lying_offer"]
