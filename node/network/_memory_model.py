"""Knobs and counters of the in-memory network: latency model, hub config, stats, addresses.

Every duration here is in seconds of trio time (virtual under ``MockClock``),
every size in bytes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from lpnode.protocol.errors import PeerUnreachable

from .base import PeerId


@dataclass(frozen=True)
class LatencyModel:
    """One-way delay of every link, and the bandwidth of streams.

    A link (one per connected pair, both directions alike) draws its base
    delay once when it forms: ``median_s * exp(sigma * N(0, 1))``, a
    log-normal, which is how measured internet RTTs are spread: most peers
    are near the median, a long tail is far away. The draw is seeded by the
    hub seed and the two peer ids, so a link's delay does not depend on the
    order links were made in. Each message then adds uniform jitter in
    ``[0, jitter_s)``; stream bytes stay in order despite jitter.

    ``bandwidth_bytes_per_s`` limits each direction of each link for stream
    data (``None``: unlimited). Gossip ignores it: adverts are small.
    """

    median_s: float = 0.0  # seconds, one way
    sigma: float = 0.0  # log-normal shape; 0 makes every link exactly median_s
    jitter_s: float = 0.0  # seconds, per message, uniform
    bandwidth_bytes_per_s: float | None = None  # bytes/s per direction per link, streams only

    def __post_init__(self) -> None:
        if self.median_s < 0 or self.sigma < 0 or self.jitter_s < 0:
            raise ValueError("latency figures must not be negative")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth must be positive (or None for unlimited)")

    @classmethod
    def constant(cls, delay_s: float) -> LatencyModel:
        """Every link exactly ``delay_s`` one way, no jitter: for asserting exact arrival times."""
        return cls(median_s=delay_s)

    @classmethod
    def home_internet(cls) -> LatencyModel:
        """Home broadband peers spread over a continent.

        Median one-way 30 ms (RTT ~60 ms), sigma 0.5 puts the 90th percentile
        near 57 ms and a few percent past 100 ms; 2 ms jitter; 2.5 MB/s
        (20 Mbit/s), a typical cable/DSL *upload*, which is what limits a
        home worker sending results.
        """
        return cls(median_s=0.030, sigma=0.5, jitter_s=0.002, bandwidth_bytes_per_s=2.5e6)

    def link_delay(self, rng: random.Random) -> float:
        if self.sigma == 0.0:
            return self.median_s
        return self.median_s * math.exp(rng.gauss(0.0, self.sigma))


ZERO_LATENCY = LatencyModel()


@dataclass(frozen=True)
class MemoryHubConfig:
    """Limits and timeouts that rarely change between runs."""

    # bytes in flight per stream direction before send_all waits: yamux's
    # initial window. Throughput is then about window / delay, as with TCP.
    stream_window_bytes: int = 256 * 1024
    # concurrently running inbound stream handlers per node; past it,
    # open_stream fails with PeerUnreachable (py-libp2p would hang instead)
    max_inbound_streams: int = 256
    # a connection a partition has stalled this long is closed on both sides,
    # as libp2p's ping-based health monitor does (~3.4 s when configured)
    partition_timeout_s: float = 5.0
    # a dial into a partition gives up after this long, like a SYN into a black hole
    dial_timeout_s: float = 10.0
    # gossip dedup: gossipsub keeps ids 120 s. The entry cap bounds memory in
    # big simulations (1000 nodes x 4096 ids); duplicates arrive within a few
    # network diameters, far sooner than the cap is reached.
    seen_ttl_s: float = 120.0
    seen_max_entries: int = 4096
    # gossip and announcements are delivered on a grid of this step (rounded
    # up, never early). Each distinct delivery instant costs the scheduler a
    # trio wake-up (~100 us under MockClock); with jitter or log-normal links
    # every hop is its own instant, and a 1 ms grid halves the wall time of a
    # 1000-node run. Each hop may then arrive up to one step late. None: 1 ms
    # for models with sigma or jitter, exact (0) for constant ones, whose
    # instants coincide anyway and whose tests assert exact times.
    time_quantum_s: float | None = None

    def quantum_for(self, latency: LatencyModel) -> float:
        if self.time_quantum_s is not None:
            return self.time_quantum_s
        return 1e-3 if latency.sigma or latency.jitter_s else 0.0

    def __post_init__(self) -> None:
        if min(self.stream_window_bytes, self.max_inbound_streams, self.seen_max_entries) < 1:
            raise ValueError("window, inbound limit and seen-cache size must be at least 1")
        if min(self.partition_timeout_s, self.dial_timeout_s, self.seen_ttl_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.time_quantum_s is not None and self.time_quantum_s < 0:
            raise ValueError("time quantum must not be negative")


@dataclass
class HubStats:
    """Counters over the whole hub since it opened (a snapshot when read from ``MemoryHub.stats``)."""

    published: int = 0  # publish() calls that went out
    sent: int = 0  # gossip copies put on a link (one per hop per neighbour)
    delivered: int = 0  # messages handed to a subscriber's channel
    duplicates: int = 0  # copies dropped by a seen cache (normal in a mesh)
    rejected: int = 0  # refused by a topic validator (not delivered, not forwarded)
    dropped_loss: int = 0  # copies lost to the injected loss rate
    dropped_partition: int = 0  # copies not sent because a partition cut the link
    dropped_full: int = 0  # a subscriber's buffer was full (gossipsub drops too)
    dropped_unsubscribed: int = 0  # arrived at a node no longer subscribed
    dropped_disconnected: int = 0  # in flight when its connection closed
    events_dropped: int = 0  # connection events lost to a full events buffer
    streams_opened: int = 0
    handler_crashes: int = 0  # inbound handlers that raised; each stream was reset


def format_address(port: int, peer: PeerId) -> str:
    # rust-libp2p's memory transport spells its addresses /memory/<u64>
    return f"/memory/{port}/p2p/{peer}"


def parse_address(addr: str) -> tuple[int, PeerId]:
    """``/memory/<port>/p2p/<peer>`` → (port, peer); anything else is unreachable."""
    parts = addr.split("/")
    if len(parts) != 5 or parts[0] or parts[1] != "memory" or parts[3] != "p2p" or not parts[4]:
        raise PeerUnreachable(f"not a memory-network address: {addr!r}")
    if not parts[2].isdecimal():
        raise PeerUnreachable(f"memory port must be a number: {addr!r}")
    return int(parts[2]), parts[4]
