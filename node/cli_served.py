"""``lpnode served``: the jobs this node's worker served for other peers, and what they earned."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from lpnode.node.cli_follow import write_file
from lpnode.node.cli_format import short_peer_id, table
from lpnode.node.cli_jobs import next_page_hint
from lpnode.protocol.errors import LpnodeError

OUTCOMES = ("delivered", "cancelled", "failed", "abandoned")


def add_served_command(commands: Any, common: argparse.ArgumentParser) -> None:
    served = commands.add_parser(
        "served", parents=[common], help="list the jobs this node's worker served for others, and what they earned"
    )
    served.add_argument("--outcome", choices=OUTCOMES)
    served.add_argument("--limit", type=int, default=50, help="rows per page (at most 500)")
    served.add_argument("--before", type=int, metavar="SEQ", help="the page of rows older than SEQ")
    served.add_argument("--receipt", type=int, metavar="SEQ", help="save job SEQ's signed receipt (see -o)")
    served.add_argument("-o", "--output", type=Path, help="with --receipt: where (default: served-SEQ.receipt)")
    served.add_argument("--json", action="store_true", help="print the RPC API's JSON instead of a table")


def cmd_served(args: argparse.Namespace, data_dir: Path) -> int:
    from lpnode.node.client import LpnodeClient, RpcError

    async def main() -> Any:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            try:
                if args.receipt is not None:
                    return await client.served_receipt(args.receipt)
                return await client.served(limit=args.limit, before=args.before, outcome=args.outcome)
            except RpcError as exc:
                if exc.status_code == 404 and exc.error == "not_found":  # the route itself: no worker here
                    raise LpnodeError(
                        "this node serves no models (it runs with --serve none): it served nothing"
                    ) from None
                raise

    answer = trio.run(main)
    if args.receipt is not None:
        path = args.output or Path(f"served-{args.receipt}.receipt")
        write_file(path, answer)
        print(f"saved {path}: check it with `lpnode receipt verify {path}`")
        return 0
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = answer["jobs"]
    print(served_table(rows, answer["totals"]))
    if rows and len(rows) == args.limit:
        print(next_page_hint("served", rows[-1]["seq"], args, {"--outcome": args.outcome}))
    return 0


def served_table(rows: Sequence[Mapping[str, Any]], totals: Mapping[str, int], now: float | None = None) -> str:
    now = time.time() if now is None else now
    body = (
        table(
            ("SEQ", "ENDED", "PIPELINE", "MODEL", "FOR", "OUTCOME", "EARNED", "RUN"),
            [
                (
                    [str(r["seq"])],
                    [_ago(now - float(r["ended_at"]))],
                    [str(r["pipeline"])],
                    [str(r["model_id"])],
                    [short_peer_id(str(r["requester_peer_id"]))],
                    [f"{r['outcome']} ({r['detail'][:40]})" if r["detail"] else str(r["outcome"])],
                    [str(r["earned"])],
                    ["-" if r["run_ms"] is None else f"{r['run_ms'] / 1000:.1f}s"],
                )
                for r in rows
            ],
        )
        if rows
        else "no jobs served yet"
    )
    others = ", ".join(f"{totals[o]} {o}" for o in OUTCOMES[1:] if totals.get(o))
    summary = f"{totals['delivered']} delivered, {totals['earned']} micro-credits earned" + (
        f"; {others}" if others else ""
    )
    if totals.get("not_kept"):
        summary += f"; {totals['not_kept']} not kept (the queue to the database was full: see the log)"
    return f"{body}\n\n{summary}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


__all__ = ["add_served_command", "cmd_served", "served_table"]
