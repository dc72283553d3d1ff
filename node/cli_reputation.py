"""``lpnode reputation [PEER]`` and ``lpnode reputation export -o FILE``: a running node's view of its peers.

Without PEER: one line per peer with evidence (score per model family, checks,
blames, ban), every page of ``/v1/reputation``; with PEER: that peer's families
and recent verdicts. ``export``
pages through ``/v1/reputation/evidence`` and writes every row with its signed
receipts (:mod:`lpnode.reputation.export`), for anyone to check offline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio
from lpnode.protocol.errors import ConfigError

EXPORT = "export"
MAX_EXPORT_PAGES = 10_000  # pages of 500 rows: a bound, not a limit anyone should reach
SUMMARY_PAGE = 500  # peers per page of /v1/reputation: the RPC's MAX_PEER_PAGE (not imported: the CLI starts light)
MAX_SUMMARY_PAGES = 10_000  # 5 million peers: a bound, not a limit anyone should reach


def add_reputation_command(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = commands.add_parser(
        "reputation", parents=[common], help="show peers' scores, evidence and bans, or export the evidence"
    )
    sub.add_argument("peer", nargs="?", metavar="PEER | export", help="one peer's detail, or 'export'")
    sub.add_argument("-o", "--output", type=Path, help="with export: the JSON file to write ('-': standard output)")
    sub.add_argument("--json", action="store_true", help="print the RPC API's JSON instead of a table")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ban(peer: dict[str, Any]) -> str:
    ban = peer.get("ban")
    if not peer.get("banned") or ban is None:
        return "-"
    return f"banned until {_when(ban['until'])} ({ban['reason']})"


def summary_table(answer: dict[str, Any]) -> str:
    lines = [f"{'PEER':<54} {'MODEL FAMILY':<24} {'SCORE':>5} {'CHECKS':>6} {'BLAMES':>6}  BAN"]
    for peer in answer["peers"]:
        families = peer["families"] or [{"model_family": "-", "score": 0.0, "checks": 0, "blames": 0}]
        for family in families:
            lines.append(
                f"{peer['peer_id']:<54} {family['model_family'][:24]:<24} {family['score']:>5.2f}"
                f" {family['checks']:>6} {family['blames']:>6}  {_ban(peer)}"
            )
    counters = answer.get("counters", {})
    lines.append(
        f"jobs {int(counters.get('jobs', 0))}, checks {int(counters.get('checks', 0))},"
        f" check overhead {100 * answer.get('check_overhead', 0.0):.1f}% of compute"
    )
    return "\n".join(lines)


def peer_table(peer: dict[str, Any]) -> str:
    lines = [f"peer      {peer['peer_id']}", f"ban       {_ban(peer)}", f"evidence  {peer['evidence_count']} checks"]
    for family in peer["families"]:
        lines.append(
            f"  {family['model_family']}: score {family['score']:.2f} (mean {family['expected_trust']:.2f}),"
            f" {family['jobs']} jobs, {family['checks']} checks, {family['blames']} blames,"
            f" {family.get('failed_tries', 0)} failed tries ({family.get('cheats', 0)} signed wrong results)"
        )
    for item in peer.get("recent", []):
        lines.append(f"  #{item['id']:<6} {_when(item['at'])}  {item['kind']:<12} {item['verdict']:<12} {item['role']}")
    for item in peer.get("recent_failures", []):
        lines.append(f"  try #{item['id']:<6} {_when(item['at'])}  {item['fault']:<9} {item['outcome']}")
    return "\n".join(lines)


async def _export(client: Any) -> dict[str, Any]:
    from lpnode.reputation.export import export_document

    rows: list[dict[str, Any]] = []
    after = 0
    for _ in range(MAX_EXPORT_PAGES):
        page = await client._get("/v1/reputation/evidence", params={"after": after, "limit": 500})
        rows.extend(page["evidence"])
        if page["next_after"] is None:
            break
        after = int(page["next_after"])
    return export_document(rows, time.time())


async def _summary(client: Any) -> dict[str, Any]:
    """Every page of ``GET /v1/reputation`` as one answer: all the peers, the last page's counters."""
    peers: list[dict[str, Any]] = []
    params: dict[str, str | float] = {"limit": SUMMARY_PAGE}
    for _ in range(MAX_SUMMARY_PAGES):
        page: dict[str, Any] = await client._get("/v1/reputation", params=params)
        peers.extend(page["peers"])
        if page.get("next_after") is None:  # the last page (or a node from before paging: one page of all)
            break
        params = {"limit": SUMMARY_PAGE, "after": page["next_after"]}
    return {**page, "peers": peers, "next_after": None}


def cmd_reputation(args: argparse.Namespace, data_dir: Path) -> int:
    from lpnode.node.cli_follow import check_output, write_file
    from lpnode.node.client import LpnodeClient

    if args.peer == EXPORT and args.output is None:
        raise ConfigError("reputation export needs -o FILE (or -o - for standard output)")
    if args.peer != EXPORT and args.output is not None:
        raise ConfigError("-o is for `lpnode reputation export -o FILE`; a table or --json goes to standard output")
    to_stdout = args.peer == EXPORT and str(args.output) == "-"  # as every Unix tool takes it, not a file named "-"
    if args.peer == EXPORT and not to_stdout:
        check_output(args.output)  # before asking the node for every evidence row

    async def ask() -> dict[str, Any]:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            if args.peer == EXPORT:
                return await _export(client)
            if args.peer:
                answer: dict[str, Any] = await client._get(f"/v1/reputation/{args.peer}")
                return answer
            return await _summary(client)

    answer = trio.run(ask)
    if to_stdout:
        print(json.dumps(answer, indent=1))
        print(f"{len(answer['evidence'])} evidence rows written to standard output", file=sys.stderr)
    elif args.peer == EXPORT:
        write_file(args.output, json.dumps(answer, indent=1).encode())
        print(f"{len(answer['evidence'])} evidence rows written to {args.output}")
    elif args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(peer_table(answer) if args.peer else summary_table(answer))
    return 0
