"""``lpnode sim``: run a scenario and write its report.

    python -m lpnode.simnet run churn --out report/        # a bundled scenario by name
    python -m lpnode.simnet run my.toml --scale 0.25 --duration 30
    python -m lpnode.simnet list
    python -m lpnode.simnet table report-a/ report-b/           # a Markdown row per report

``add_sim_commands(subparsers)`` adds the same ``sim`` command to another
argparse tree (the node's CLI); ``main(argv)`` is the stand-alone entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import scenarios
from .scenario import Scenario, ScenarioError, load_scenario


def add_sim_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sim`` (with ``run`` and ``list``) to an argparse subparsers object; returns its parser."""
    sim = subparsers.add_parser("sim", help="many-node simulations in virtual time (simnet)")
    _fill(sim)
    return sim  # type: ignore[no-any-return]


def _fill(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", required=True)
    run = sub.add_parser("run", help="run a scenario and write a report folder")
    run.add_argument("scenario", help="a TOML file, or the name of a bundled scenario (see `list`)")
    run.add_argument("--out", type=Path, default=None, help="report folder (metrics.json, summary.md, plots)")
    run.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    run.add_argument("--scale", type=_positive(float), default=1.0, help="multiply node counts and job rates")
    run.add_argument("--duration", type=_positive(float), default=None, help="override duration_s (virtual seconds)")
    run.add_argument(
        "--backend", choices=("memory", "libp2p"), default="memory", help="in-memory in virtual time, or real libp2p"
    )
    run.add_argument("--processes", type=_positive(int), default=4, help="libp2p backend: worker processes")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(sim_handler=_run)
    listing = sub.add_parser("list", help="list the bundled scenarios")
    listing.set_defaults(sim_handler=_list)
    table = sub.add_parser("table", help="one Markdown table row per report folder")
    table.add_argument("reports", nargs="+", type=Path, help="report folders (their metrics.json)")
    table.set_defaults(sim_handler=_table)


def _positive(kind: type[float] | type[int]) -> Any:
    """An argparse type: a finite number above 0 (a scale of 0 or a negative duration is a mistake, not a run)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def check_out(out: Path | None) -> None:
    """Refuse a report folder that cannot be one before the run, not after minutes of simulation."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"--out {out}: a file is there, not a folder")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ScenarioError(f"--out {out}: cannot write under {parent}")


def resolve_scenario(arg: str) -> Path:
    path = Path(arg)
    if path.exists():
        return path
    if path.parent in (Path("."), Path("scenarios"), Path("simnet/scenarios")):
        return scenarios.path(path.name)  # "churn", "churn.toml" or "scenarios/churn.toml" from anywhere
    raise FileNotFoundError(f"{arg}: no such scenario file; bundled: {', '.join(scenarios.names())}")


def prepare(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(resolve_scenario(args.scenario))
    if args.scale != 1.0:
        scenario = scenario.scaled(args.scale)
    changes: dict[str, Any] = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.duration is not None:
        changes["duration_s"] = args.duration
    return dataclasses.replace(scenario, **changes) if changes else scenario


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from .report import summary_markdown, write_report
    from .runner import run_scenario

    scenario = prepare(args)
    check_out(args.out)
    bar = None if args.quiet else ProgressBar(sys.stderr)
    if args.backend == "libp2p":
        from .libp2p_backend import run_libp2p

        result = run_libp2p(scenario, processes=args.processes, progress=bar)
    else:
        result = run_scenario(scenario, progress=bar)
    if bar is not None:
        bar.close()

    out.write(summary_markdown(result.metrics))
    if args.out is not None:
        try:
            for path in write_report(args.out, result.metrics, result.recorder, plots=not args.no_plots):
                out.write(f"wrote {path}\n")
        except OSError as exc:  # the summary above is all that is left of the run: say why the folder is not
            raise ScenarioError(f"--out {args.out}: cannot write the report ({exc.strerror or exc})") from exc
    return 0


def _list(args: argparse.Namespace, out: TextIO) -> int:
    for name in scenarios.names():
        scenario = load_scenario(scenarios.path(name))
        out.write(f"{name:16} {scenario.description}\n")
    return 0


def _table(args: argparse.Namespace, out: TextIO) -> int:
    import json

    from .report import comparison_table, reputation_table

    runs = []
    for folder in args.reports:
        try:
            runs.append(json.loads((folder / "metrics.json").read_text()))
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"{folder}: no readable metrics.json ({exc})") from exc
    out.write(comparison_table(runs))
    if any(m.get("reputation") is not None for m in runs):
        out.write("\n" + reputation_table(runs))
    return 0


class ProgressBar:
    """One line on a terminal, redrawn at each progress sample."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last_tenth = -1

    def __call__(self, p: Any) -> None:
        share = min(1.0, max(0.0, p.virtual_s / p.total_s)) if p.total_s else 1.0
        if not self._tty:  # a log file gets a line per tenth, not a hundred carriage returns
            if int(share * 10) == self._last_tenth:
                return
            self._last_tenth = int(share * 10)
        filled = int(share * self.WIDTH)
        self._stream.write(
            f"{'' if self._tty else chr(10)}\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share * 100:5.1f}%  t={p.virtual_s:7.1f}s  "
            f"jobs {p.completed}/{p.submitted} ok, {p.failed} failed  workers online {p.online_workers}  "
            f"wall {p.wall_s:6.1f}s"
        )
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpnode.simnet", description=__doc__.split("\n\n")[0])
    _fill(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.sim_handler(args, out))
    except (ScenarioError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_sim_commands", "main"]
