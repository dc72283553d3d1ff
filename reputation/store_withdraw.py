"""Withdrawn evidence: when a peer is banned, the blames its word decided are voided and bans they caused lifted.

The reputation store calls :func:`withdraw_blames` inside the transaction that bans; see its docstring for the
rule and the bound.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from lpnode.node.store import Transaction

from .policy import blame_stands
from .scoring import ScoringConfig, as_of, should_ban, withdraw_blame
from .store_rows import mark_void
from .store_types import Ban, PeerState, in_force

__all__ = ["MAX_VOID_ROWS", "withdraw_blames"]

# Disagreements a newly banned peer took part in that are looked at for voiding, newest first. Its bans come after a
# few blames, so its recent checks are the ones that count; older blames it decided have mostly faded anyway.
MAX_VOID_ROWS = 10_000


async def withdraw_blames(
    tx: Transaction,
    newly_banned: Sequence[str],
    peers: dict[tuple[str, str], PeerState],
    bans: dict[str, Ban],
    touched: set[tuple[str, str]],
    now: float,
    config: ScoringConfig,
) -> None:
    """Void the blames the newly banned peers' word decided, and lift the bans that rested on them.

    In the caller's transaction, on its copies of the mirror (``peers``, ``bans``; ``touched`` gains every key it
    changes). A blame is void when its majority, without the banned peers (all of them, not only the new ones),
    no longer outvotes the blamed (:func:`~lpnode.reputation.policy.blame_stands`). This is what colluders who
    return the same wrong output do: one checks an honest peer, the other breaks the tie, and the honest peer is
    the odd one out. Bounded: voiding bans nobody (it only removes blames) and lifting a ban voids nothing, so one
    ban costs one pass over the banned peers' recent disagreements.

    The blamed peer gets the check back as neutral, not as passed: its output was outvoted by a cheater, not
    confirmed by anyone, so it is evidence neither way (a pass would let a cheater earn credit from a colluder's
    ban). ``checks`` keeps counting it; the policy's history (consecutive agreements, jobs since the blame) is
    left as it is, which only means the peer is checked a little more for a while.
    """
    marks = ",".join("?" * len(newly_banned))
    rows = await tx.fetch_all(
        "SELECT id, at, model_family, blamed, credited FROM rep_evidence"
        " WHERE kind = 'check' AND voided_at IS NULL AND blamed != '[]'"
        f" AND id IN (SELECT evidence_id FROM rep_receipts WHERE worker_peer_id IN ({marks}))"
        " ORDER BY id DESC LIMIT ?",
        (*newly_banned, MAX_VOID_ROWS),
        max_rows=MAX_VOID_ROWS,
    )
    banned = {peer for peer, ban in bans.items() if in_force(ban, now)}
    unblamed: set[str] = set()
    for row in rows:
        credited, blamed = json.loads(row["credited"]), json.loads(row["blamed"])
        deciders = sorted(set(credited) & set(newly_banned))
        if not deciders or blame_stands(credited, blamed, banned):
            continue
        await mark_void(tx, int(row["id"]), now, f"decided by banned {', '.join(deciders)}")
        for peer in blamed:
            key = (peer, str(row["model_family"]))
            state = peers.get(key, PeerState())
            peers[key] = replace(
                state,
                evidence=withdraw_blame(state.evidence, float(row["at"]), now, config),
                blames=max(0, state.blames - 1),
                voided=state.voided + 1,
            )
            touched.add(key)
            unblamed.add(peer)
    for peer in sorted(unblamed):
        ban = bans.get(peer)
        # equivocation is proof on its own; a ban from checks stands if, without the voided blames, the test
        # would still have banned at the ban's time in any family
        if ban is None or not in_force(ban, now) or ban.reason == "equivocation":
            continue
        families = [state for (p, _), state in peers.items() if p == peer]
        if any(should_ban(as_of(state.evidence, ban.at, config), ban.at, config) for state in families):
            continue
        bans[peer] = replace(ban, until=now, lifted=ban.lifted + 1, lifted_at=now)
        await tx.execute(
            "UPDATE rep_bans SET until = ?, lifted = ?, lifted_at = ? WHERE peer_id = ?",
            (now, ban.lifted + 1, now, peer),
        )
