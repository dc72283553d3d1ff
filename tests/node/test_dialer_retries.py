"""The directory dialer retries a failed dial when its backoff ends, not at the next directory change.

Review s10, item 1: a dial that failed after its pass had parked left the loop waiting for a
directory change; in a quiet network none came, and two nodes stayed split for good.
Virtual time (autojump MockClock) on a seeded in-memory hub.
"""

from __future__ import annotations

import trio
import trio.testing
from lpnode.node.directory import PeerDirectory
from lpnode.node.network._memory_model import MemoryHubConfig, format_address, parse_address
from lpnode.node.network.base import Network
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.peering import DIAL_PASS_MIN_INTERVAL_S, MIN_BACKOFF_S, serve_dialer
from lpnode.protocol.advert import CapabilityAdvert
from lpnode.protocol.codec import PROTOCOL_VERSION
from lpnode.protocol.names import SOFTWARE_VERSION

from .test_gossip import CPU, EPOCH_S, key_for, running_nodes

NOW_MS = int(EPOCH_S * 1000)


def advert_at(index: int, addr: str) -> CapabilityAdvert:
    return CapabilityAdvert(
        peer_id=key_for(index).peer_id,
        seq=NOW_MS,
        issued_at_ms=NOW_MS,
        expires_at_ms=NOW_MS + 600_000,
        listen_addrs=(addr,),
        software_version=SOFTWARE_VERSION,
        protocol_version=PROTOCOL_VERSION,
        gpus=CPU,
        models=(),
        queue_depth=0,
        queue_capacity=4,
    )


async def connected_within(network: Network, peer: str, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        async with network.connection_events() as events:
            while peer not in network.connected_peers():
                await events.receive()
    return peer in network.connected_peers()


async def test_a_refused_dial_is_retried_after_its_backoff_in_a_directory_that_never_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b_key = key_for(2)
    async with open_memory_hub(seed=0) as hub, hub.open_network(key_for(1)) as a, trio.open_nursery() as nursery:
        port, _ = parse_address(a.listen_addrs()[0])
        b_addr = format_address(port + 1, b_key.peer_id)  # B listens here once it is up: refused until then
        directory = PeerDirectory(local_peer=a.local_peer, max_peers=16, disconnect_grace_ms=5_000)
        directory.admit(advert_at(2, b_addr), now_ms=NOW_MS, received_from=b_key.peer_id)
        await nursery.start(serve_dialer, a, directory, 16)
        await trio.sleep(0.5)
        async with hub.open_network(b_key) as b:
            assert b.listen_addrs()[0] == b_addr
            # the old loop slept until the next directory change: here, never
            assert await connected_within(a, b_key.peer_id, MIN_BACKOFF_S + DIAL_PASS_MIN_INTERVAL_S + 1)
            nursery.cancel_scope.cancel()


async def test_two_nodes_split_by_a_short_partition_find_each_other_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Dials into the partition fail after 1 s, like a refused connect; it heals well inside the
    # 5 s disconnect grace, so each still has the other's advert to redial.
    hub_config = MemoryHubConfig(partition_timeout_s=2.0, dial_timeout_s=1.0)
    async with open_memory_hub(seed=0, config=hub_config) as hub, running_nodes(hub, 2) as (a, b):
        with trio.fail_after(10):
            while not (b.peer_id in a.directory.peer_ids() and a.peer_id in b.directory.peer_ids()):
                await a.directory.wait_changed()
        hub.partition([a.peer_id], [b.peer_id])
        with trio.fail_after(10):
            while a.network.connected_peers():
                await a.directory.wait_changed()
        await trio.sleep(2.5)  # both sides' first redials have failed by now
        hub.heal()
        assert await connected_within(a.network, b.peer_id, 30)
