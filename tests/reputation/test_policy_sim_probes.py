"""Suspect probes in the policy simulation: the per-peer and the network readings, with and without them."""

from __future__ import annotations

import random
from dataclasses import replace

from lpnode.reputation.policy import SpotCheckConfig
from lpnode.reputation.policy_sim import (
    NetConfig,
    SimConfig,
    SimPeer,
    simulate,
    simulate_network,
    simulate_peer,
    summarise,
    without_probes,
)

STARVED = SimPeer("starved cheater", cheat_rate=1.0, starved_after_blame=True)
SHORT = SimConfig(jobs_per_peer=2_000, established_after=500)


def test_a_starved_always_cheater_is_banned_through_probes_only() -> None:
    with_probes = simulate(SHORT, [STARVED] * 20)
    for outcome in with_probes:
        # blamed on its first job (checked: a newcomer's first 50 are), then given none: the probes ban it
        assert outcome.jobs == 1 and outcome.banned_at == 1
        assert outcome.probes >= 1 and outcome.probe_blames >= 1 and outcome.probe_passes == 0
        assert outcome.blames == 1 + outcome.probe_blames
        assert outcome.slots < 50  # ~0.95 opportunities a slot: a few minutes, not thousands
    for outcome in simulate(without_probes(SHORT), [STARVED] * 20):
        assert outcome.jobs == 1 and outcome.banned_at is None and outcome.blames == 1
        assert outcome.probes == 0 and outcome.slots == SHORT.jobs_per_peer  # starved to the end, never banned


def test_no_probe_opportunities_means_no_probes() -> None:
    quiet = replace(SHORT, other_check_rate=0.0)
    assert all(o.probes == 0 and o.banned_at is None for o in simulate(quiet, [STARVED] * 5))


def test_an_honest_peers_probes_are_bounded_per_blame() -> None:
    # a high off rate, so blames (and with them suspect spells) are many
    config = replace(SHORT, honest_off_rate=0.03, other_jobs_per_job=60.0)
    outcomes = simulate(config, [SimPeer("honest")] * 30)
    probes = config.spot.suspect_probes
    assert sum(o.probes for o in outcomes) > 0
    for o in outcomes:
        # a passed probe adds an agreement, and probing stops at `probes` agreements since the last blame
        assert o.probe_passes <= probes * o.blames
        assert o.probes >= o.probe_passes + o.probe_blames  # the rest had no majority of three
        assert o.probe_blames <= o.blames and o.probe_passes <= o.agreements


def test_probes_follow_suspect_probes() -> None:
    config = replace(SHORT, honest_off_rate=0.03, spot=SpotCheckConfig(suspect_probes=3))
    outcomes = simulate(config, [SimPeer("honest")] * 30)
    assert sum(o.probes for o in outcomes) > 0
    assert all(o.probe_passes <= 3 * o.blames for o in outcomes)


def test_the_per_peer_simulation_is_seeded() -> None:
    peers = [SimPeer("cheat", 0.1), SimPeer("honest", off_rate=0.02), STARVED]
    assert simulate(SHORT, peers) == simulate(SHORT, peers)
    assert simulate(SHORT, peers) != simulate(replace(SHORT, seed=1), peers)
    # the probe stream defaults to one derived from the main rng's state, without drawing from it
    a = simulate_peer(peers[0], SHORT, random.Random(7))
    assert a == simulate_peer(peers[0], SHORT, random.Random(7))


def test_without_probes_own_jobs_draw_as_before() -> None:
    """A peer never blamed is never a suspect: its outcome is the same with and without probes."""
    clean = replace(SHORT, honest_off_rate=0.0)
    peers = [SimPeer("honest")] * 5
    assert simulate(clean, peers) == simulate(without_probes(clean), peers)
    assert summarise("honest", simulate(clean, peers)).probes == 0


def test_a_network_probes_its_suspects_and_is_seeded() -> None:
    config = NetConfig(peers=8, jobs=1_500, honest_off_rate=0.03)
    outcome = simulate_network(config, run=0)
    assert outcome == simulate_network(config, run=0)
    assert outcome.probes > 0 and outcome.probe_blames <= outcome.probes
    # each probe is one more run in its check, and fills the third seat (no other peer asked)
    assert outcome.extra_runs >= outcome.checks + outcome.probes
    off = simulate_network(without_probes(config), run=0)
    assert off.probes == 0 and off.probe_blames == 0
    assert off != outcome


def test_without_probes_sets_only_suspect_probes() -> None:
    assert without_probes(SHORT).spot == replace(SHORT.spot, suspect_probes=0)
    assert without_probes(NetConfig()).spot.suspect_probes == 0
    assert SimConfig().spot.suspect_probes == SpotCheckConfig().suspect_probes  # default: as shipped
