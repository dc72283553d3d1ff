"""Bootstrap redials on the in-memory network in virtual time (QA N5: a restarted bootstrap node was alone ~1 min)."""

from __future__ import annotations

import trio
import trio.testing
from lpnode.node.network._memory_model import format_address, parse_address
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.peering import MAX_BOOTSTRAP_BACKOFF_S, serve_bootstrap

from .test_gossip import key_for

DOWN_S = 250.0  # long enough for a 60 s cap to be reached: the old backoff waited up to 53 s more from here


async def test_a_bootstrap_peer_that_comes_back_is_redialed_within_the_short_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bootstrap = key_for(1)
    async with open_memory_hub() as hub, hub.open_network(key_for(2)) as node, trio.open_nursery() as nursery:
        # the bootstrap node will listen on the hub's next port: dialled before it is up, refused each time
        port, _ = parse_address(node.listen_addrs()[0])
        addr = format_address(port + 1, bootstrap.peer_id)
        await nursery.start(serve_bootstrap, node, (addr,))
        await trio.sleep(DOWN_S)
        async with node.connection_events() as events, hub.open_network(bootstrap) as back:
            assert back.listen_addrs()[0] == addr
            up_at = trio.current_time()
            async for event in events:
                if event.peer == bootstrap.peer_id and bootstrap.peer_id in node.connected_peers():
                    break
            waited = trio.current_time() - up_at
            nursery.cancel_scope.cancel()
    assert 0 < waited <= MAX_BOOTSTRAP_BACKOFF_S + 1  # + the dial's own round trips
