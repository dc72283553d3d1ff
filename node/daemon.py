"""The node: gossip, directory and peering over any Network.

``serve_node`` is the whole node logic and knows nothing about libp2p or RPC,
so the same code runs in production, in tests on the in-memory network and
in simnet. ``run_node`` (in ``lpnode.node.run``) wraps it with a real libp2p
host and the local RPC API.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.directory import PeerDirectory
from lpnode.node.gossip import (
    ADVERT_SEQ_FILE,
    AdvertPublisher,
    AdvertSeqFile,
    GossipStats,
    Offer,
    WallClock,
    serve_gossip,
)
from lpnode.node.identity import KEY_FILE
from lpnode.node.network.base import Network
from lpnode.node.peering import serve_bootstrap, serve_dialer
from lpnode.protocol.signing import NodeKey


@dataclass
class Node:
    """A running node's state, as the RPC API and tests see it."""

    config: NodeConfig
    key: NodeKey
    network: Network
    directory: PeerDirectory
    publisher: AdvertPublisher
    gossip_stats: GossipStats
    wall_clock: WallClock
    started_at: float = field(default=0.0)  # wall-clock unix seconds

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)


async def serve_node(
    config: NodeConfig,
    key: NodeKey,
    network: Network,
    offer: Callable[[], Offer],
    *,
    wall_clock: WallClock = time.time,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node until cancelled; ``task_status.started`` hands back the :class:`Node`."""
    directory = PeerDirectory(
        local_peer=key.peer_id,
        max_peers=config.max_peers,
        disconnect_grace_ms=int(config.peer_disconnect_grace_s * 1000),
    )
    stats = GossipStats()
    publisher = AdvertPublisher(
        key=key,
        network=network,
        offer=offer,
        config=config,
        wall_clock=wall_clock,
        seq_file=_advert_seq_file(config.data_dir, key),
    )
    node = Node(
        config=config,
        key=key,
        network=network,
        directory=directory,
        publisher=publisher,
        gossip_stats=stats,
        wall_clock=wall_clock,
        started_at=wall_clock(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_gossip(
                network=network,
                directory=directory,
                publisher=publisher,
                stats=stats,
                config=config,
                wall_clock=wall_clock,
                task_status=task_status,
            )
        )
        await nursery.start(serve_bootstrap, network, config.bootstrap)
        await nursery.start(serve_dialer, network, directory, config.max_connections)
        task_status.started(node)


def _advert_seq_file(data_dir: Path, key: NodeKey) -> AdvertSeqFile | None:
    """The advert seq file next to the identity key, if ``data_dir`` holds this node's key.

    A node run by ``run_node`` loads its key from its data dir. Tests and simulations run
    nodes with keys of their own and the default data dir: those must not share (or clobber)
    a real node's seqs, nor each other's.
    """
    try:
        ours = (data_dir / KEY_FILE).read_bytes() == key.seed
    except OSError:
        return None
    return AdvertSeqFile(data_dir / ADVERT_SEQ_FILE) if ours else None
