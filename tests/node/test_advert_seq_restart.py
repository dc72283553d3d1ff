"""A restarted node's adverts go on above every seq it issued before, whatever its clock did meanwhile.

Review s10, item 3: seqs were seeded from the wall clock alone, so a node restarted after its
clock was stepped back had its new adverts dropped as replays until the clock passed its old
seqs (590 s for a clock 600 s ahead under a 3600 s skew allowance). The publisher is pure logic
here; the restart runs whole nodes on the in-memory network in virtual time.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import ADVERT_SEQ_FILE, SEQ_HEADROOM_MS, AdvertPublisher, AdvertSeqFile
from lpnode.node.identity import KEY_FILE
from lpnode.node.network.base import Network
from lpnode.node.network.memory import MemoryHub, open_memory_hub

from .test_gossip import EPOCH_S, config, key_for, static_offer, virtual_wall_clock

SKEW_S = 30.0  # the default max_clock_skew_s


class _NoAddrs:
    def listen_addrs(self) -> list[str]:
        return []


class _Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class _CountingSeqFile(AdvertSeqFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes = 0

    def store(self, value: int) -> None:
        self.writes += 1
        super().store(value)


def publisher(clock: _Clock, seq_file: AdvertSeqFile | None) -> AdvertPublisher:
    return AdvertPublisher(
        key=key_for(2),
        network=cast(Network, _NoAddrs()),
        offer=static_offer(),
        config=config(max_clock_skew_s=SKEW_S),
        wall_clock=clock,
        seq_file=seq_file,
    )


def test_seqs_stay_above_a_crashed_run_after_the_clock_stepped_back(tmp_path: Path) -> None:
    seq_file = _CountingSeqFile(tmp_path / ADVERT_SEQ_FILE)
    clock = _Clock(EPOCH_S + 600)  # 600 s ahead
    before = publisher(clock, seq_file)
    last = 0
    for _ in range(1000):  # 5000 s of adverts every 5 s
        last = before.build().seq
        clock.now_s += 5
    assert seq_file.writes <= 5000 * 1000 // SEQ_HEADROOM_MS + 1  # rarely written: once per headroom
    # killed (no clean stop), the clock corrected by 600 s, restarted
    after = publisher(_Clock(EPOCH_S + 5000), AdvertSeqFile(tmp_path / ADVERT_SEQ_FILE))
    assert after.build().seq > last


def test_without_a_seq_file_a_restart_stays_above_seqs_that_followed_the_clock() -> None:
    # Say the first start of a version that keeps the file. Peers refused adverts issued further
    # than the skew allowance ahead of their clocks, so starting that far ahead beats the seqs
    # of a previous run that followed a clock they accepted.
    clock = _Clock(EPOCH_S + SKEW_S - 1)  # as far ahead as peers allow
    before = publisher(clock, None)
    last = 0
    for _ in range(60 // 5):
        last = before.build().seq
        clock.now_s += 5
    assert last == int((clock.now_s - 5) * 1000)  # by now its seqs follow its clock
    after = publisher(_Clock(clock.now_s - SKEW_S + 1), None)  # the clock corrected
    assert after.build().seq > last


@pytest.mark.parametrize("content", [b"not a number\n", b"-5\n", b"\xff\xfe", str(2**70).encode()])
def test_a_damaged_seq_file_is_named_and_seqs_start_from_the_clock(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ADVERT_SEQ_FILE
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        seq = publisher(_Clock(EPOCH_S), AdvertSeqFile(path)).build().seq
    assert str(path) in caplog.text
    assert seq == int(EPOCH_S * 1000) + int(SKEW_S * 1000) + 1
    assert int(path.read_text()) >= seq  # replaced by a sound one before that seq went out


async def _run_b(
    hub: MemoryHub,
    a: Node,
    data_dir: Path,
    clock_ahead_s: float,
    *,
    task_status: trio.TaskStatus[tuple[Node, trio.CancelScope]],
) -> None:
    with trio.CancelScope() as scope:
        async with hub.open_network(key_for(2)) as net, trio.open_nursery() as own:
            await net.connect(a.network.listen_addrs()[0])
            node = await own.start(
                functools.partial(
                    serve_node,
                    config(data_dir=data_dir),
                    key_for(2),
                    net,
                    static_offer(),
                    wall_clock=lambda: virtual_wall_clock() + clock_ahead_s,
                )
            )
            task_status.started((node, scope))
            await trio.sleep_forever()


async def test_a_node_restarted_after_its_clock_stepped_back_is_seen_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    (tmp_path / KEY_FILE).write_bytes(key_for(2).seed)  # B's data dir, as run_node leaves it
    # A's holds another node's key, as when tests run with the default data dir of a real node:
    # A must not write that node's seq file (nor would test nodes share one among themselves)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / KEY_FILE).write_bytes(key_for(7).seed)
    async with (
        open_memory_hub(seed=0) as hub,
        hub.open_network(key_for(1)) as a_net,
        trio.open_nursery() as nursery,
    ):
        a_config = config(max_clock_skew_s=3600.0, data_dir=foreign)  # allows B's clock 600 s ahead
        a = await nursery.start(
            functools.partial(serve_node, a_config, key_for(1), a_net, static_offer(), wall_clock=virtual_wall_clock)
        )
        b, stop_b = await nursery.start(_run_b, hub, a, tmp_path, 600.0)
        await trio.sleep(30)
        old = a.directory.get(b.peer_id)
        assert old is not None
        stop_b.cancel()
        await trio.sleep(8)
        assert b.publisher.last is not None
        # a clean stop keeps the last seq built (maybe cut off while publishing), not the headroom
        stored = int((tmp_path / ADVERT_SEQ_FILE).read_text())
        assert b.publisher.last.seq <= stored <= b.publisher.last.seq + 1
        b2, _ = await nursery.start(_run_b, hub, a, tmp_path, 0.0)  # the clock corrected by 600 s
        new_addr = b2.network.listen_addrs()[0]

        def b_is_new() -> bool:
            record = a.directory.get(b2.peer_id)
            return record is not None and new_addr in record.advert.listen_addrs

        with trio.fail_after(a_config.advert_interval_s):  # the old seqs were refused for 590 s
            while not b_is_new():
                await a.directory.wait_changed()
        assert a.gossip_stats.dropped["replayed"] == 0
        nursery.cancel_scope.cancel()
    assert not (foreign / ADVERT_SEQ_FILE).exists()
