"""The ``lpnode`` command: ``run`` a node, or ask a running one (``peers``, ``node``, ``id``, ``models``).

Jobs: ``txt2img``, ``img2img``, ``img2vid``, ``upscale``, ``interpolate``
(``cli_jobs``), ``jobs`` / ``job`` / ``cancel``, ``workflow run``
(``cli_workflow``); ``receipt verify`` needs no node (``cli_receipt``).

Every command takes ``--data-dir`` (and ``--config``): the data directory
holds the node's identity key, its RPC token and ``rpc.json`` (where its API
listens), so several nodes on one machine are told apart by it alone.

Errors the user can fix are one line on stderr, never a traceback: exit code
2 for configuration errors (as argparse does for bad flags), 1 for the rest.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from lpnode.node.config import LOG_LEVELS, SERVE_NONE, NodeConfig, load_config
from lpnode.node.network.ports import multiaddr_port_in_use, port_in_use
from lpnode.protocol.errors import ConfigError, LpnodeError
from lpnode.protocol.names import SOFTWARE_VERSION

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a C tool's exit looks like when its reader went away
SIM_HELP = "many-node simulations in virtual time (simnet)"


def build_parser(*, simulator: bool = True) -> argparse.ArgumentParser:
    """The ``lpnode`` parser; ``simulator=False`` registers ``sim`` without its flags.

    Registering ``sim`` fully imports the simulator package (it pulls in the model
    stack: torch, diffusers), seconds that every other command would pay for nothing.
    """
    parser = argparse.ArgumentParser(
        prog="lpnode", description="A peer-to-peer network of home GPUs selling AI inference."
    )
    parser.add_argument("--version", action="version", version=f"lpnode {SOFTWARE_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="node data directory (identity key, RPC token, rpc.json)")
    common.add_argument("--config", type=Path, help="TOML config file (keys as in NodeConfig)")

    run = commands.add_parser("run", parents=[common], help="run a node until Ctrl-C / SIGTERM")
    run.add_argument("--listen", action="append", metavar="MULTIADDR", help="libp2p listen address (repeatable)")
    run.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="peer to dial at start (repeatable)")
    run.add_argument("--no-mdns", action="store_true", help="do not look for peers on the local network")
    run.add_argument("--rpc", metavar="HOST:PORT", help="where the local RPC API listens (port 0: any free port)")
    run.add_argument("--rpc-allow-remote", action="store_true", help="allow a non-loopback --rpc address")
    run.add_argument("--log-level", choices=LOG_LEVELS)
    run.add_argument("--serve", metavar="MODEL[,MODEL...]", help=f"models to serve; '{SERVE_NONE}': requester only")
    run.add_argument("--warm", metavar="MODEL[,MODEL...]", help="served models to load at start and keep loaded")
    run.add_argument("--weights-dir", type=Path, help="where real presets' weights are (default: <data-dir>/weights)")
    run.add_argument("--device", help="'auto' (default), 'cpu', 'cuda', 'cuda:N'")
    run.add_argument("--cheat", help=argparse.SUPPRESS)  # tests only; see tests/e2e/test_reputation_e2e.py

    commands.add_parser("id", parents=[common], help="print this node's peer id (creating its key if needed)")
    for name, what in (("peers", "the peers a running node knows"), ("node", "a running node's own state")):
        sub = commands.add_parser(name, parents=[common], help=f"show {what}")
        sub.add_argument("--json", action="store_true", help="print the RPC API's JSON instead of a table")
    models = commands.add_parser("models", parents=[common], help="show the models a running node serves")
    models.add_argument("--json", action="store_true", help="print the RPC API's JSON instead of a table")
    models.add_argument(
        "--available",
        action="store_true",
        help="list every preset this installation knows and whether its weights are present (no node needed)",
    )
    models.add_argument("--weights-dir", type=Path, help="with --available: where to look for weights")

    # job commands import only argparse-light modules here; httpx and trio load when one runs
    from lpnode.node.cli_jobs import add_job_commands
    from lpnode.node.cli_receipt import add_receipt_command
    from lpnode.node.cli_reputation import add_reputation_command
    from lpnode.node.cli_served import add_served_command
    from lpnode.node.cli_workflow import add_workflow_command

    add_job_commands(commands, common)
    add_workflow_command(commands, common)
    add_receipt_command(commands)
    add_reputation_command(commands, common)
    add_served_command(commands, common)
    if simulator:
        from lpnode.simnet.cli import add_sim_commands  # imports lpnode.simnet, hence torch: only for `sim`

        add_sim_commands(commands)
    else:  # listed in `lpnode --help` all the same; main() builds the full parser when `sim` is asked for
        commands.add_parser("sim", help=SIM_HELP, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if not _asks_for_debug(given):
        # diffusers and transformers warn about optional backends (torchvision) and dtype casts on
        # every model load, harmless for our presets and alarming to a user; they read these
        # switches once, when first imported, so they are set before anything imports them
        for library in ("DIFFUSERS", "TRANSFORMERS"):
            os.environ.setdefault(f"{library}_VERBOSITY", "error")
    args = build_parser(simulator=_asks_for_sim(given)).parse_args(given)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a reader that went away is noticed here, where it is handled, not at exit
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`lpnode jobs | head`): nothing left to tell it, and Python's
        # flush of stdout at exit would raise again; point stdout at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except BaseExceptionGroup as group:
        error = _only_lpnode_error(group)
        if error is None:
            raise
        return _report(error)
    except LpnodeError as error:
        return _report(error)


def _asks_for_sim(argv: Sequence[str]) -> bool:
    """Whether the command is ``sim`` (the first word that is not a flag; only ``-h`` may come before it)."""
    return next((word for word in argv if not word.startswith("-")), None) == "sim"


def _asks_for_debug(argv: Sequence[str]) -> bool:
    """Whether ``--log-level debug`` is given (or LPNODE_LOG_LEVEL says debug): then the libraries speak too."""
    pairs = itertools.pairwise(argv)  # each word with the next (a trailing --log-level has no value)
    flagged = "--log-level=debug" in argv or any(a == "--log-level" and b == "debug" for a, b in pairs)
    return flagged or os.environ.get("LPNODE_LOG_LEVEL", "").lower() == "debug"


def _report(error: LpnodeError) -> int:
    print(f"lpnode: {error}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_ERROR


def _only_lpnode_error(group: BaseExceptionGroup[Any]) -> LpnodeError | None:
    """The first LpnodeError of a (nested) group from a nursery, if that is all it holds."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [e for e in leaves if isinstance(e, LpnodeError)]
    return errors[0] if errors and len(errors) == len(leaves) else None


def _config(args: argparse.Namespace, *, for_run: bool = False, **flags: Any) -> NodeConfig:
    return load_config(
        config_file=args.config, env=os.environ, flags={"data_dir": args.data_dir, **flags}, for_run=for_run
    )


def _cmd_sim(args: argparse.Namespace) -> int:
    from lpnode.simnet.scenario import ScenarioError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.sim_handler(args, sys.stdout))
    except (ScenarioError, FileNotFoundError) as exc:  # a bad or missing scenario file: the user's to fix
        print(f"lpnode sim: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _cmd_run(args: argparse.Namespace) -> int:
    config = _config(
        args,
        for_run=True,  # the device is checked too, before anything loads
        listen=tuple(args.listen) if args.listen else None,
        bootstrap=tuple(args.bootstrap) if args.bootstrap else None,
        mdns=False if args.no_mdns else None,
        rpc=args.rpc,
        rpc_allow_remote=True if args.rpc_allow_remote else None,
        log_level=args.log_level,
        serve=args.serve,  # comma-separated; checked by NodeConfig.validate
        warm=args.warm,
        weights_dir=args.weights_dir,
        device=args.device,
    )
    _ready_data_dir(config.data_dir, writable=True)  # before seconds of model loading, not after
    _check_ports(config.listen, config.rpc)
    from lpnode.node.run import run_node  # libp2p, FastAPI and torch load only for `run`

    if args.cheat is not None:
        from lpnode.reputation.cheat_pool import parse_cheat

        parse_cheat(args.cheat)  # a bad value is a config error (exit 2) before anything starts
    trio.run(functools.partial(run_node, config, cheat=args.cheat))
    return 0


def _cmd_id(args: argparse.Namespace) -> int:
    from lpnode.node.identity import load_or_create_key

    print(load_or_create_key(_ready_data_dir(_config(args).data_dir, writable=False)).peer_id)
    return 0


def _check_ports(listen: Sequence[str], rpc: str) -> None:
    """A ConfigError for a fixed TCP port (libp2p listen address or RPC) that another process holds
    (``network.ports`` says why that matters); found here before the models load, not by the server after."""
    for addr in listen:
        if multiaddr_port_in_use(addr):
            raise ConfigError(f"listen: {addr} is in use by another process (another node?)")
    host, _, port = rpc.rpartition(":")
    if port.isdigit():
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        if port_in_use(family, host.strip("[]"), int(port)):
            raise ConfigError(f"rpc: {rpc} is in use by another process (another node?)")


def _ready_data_dir(path: Path, *, writable: bool) -> Path:
    """``path`` as a directory, created if missing; a ConfigError naming it (not a traceback) if it cannot be.

    A node writes its key, token, database and outputs there: a read-only one is refused at once.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data dir {path} is a file, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"data dir {path} cannot be created: {exc.strerror or exc}") from None
    if writable and not os.access(path, os.W_OK):
        raise ConfigError(f"data dir {path} is not writable (the node keeps its key, database and outputs there)")
    return path


def _cmd_peers(args: argparse.Namespace) -> int:
    from lpnode.node.cli_format import peers_table

    answer = _ask(_config(args).data_dir, lambda client: client.peers())
    print(json.dumps(answer, indent=2) if args.json else peers_table(answer["peers"]))
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from lpnode.node.cli_format import node_table

    data_dir = _config(args).data_dir
    answer = _ask(data_dir, lambda client: client.node())
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        from lpnode.node.rpc_info import read_info

        print(node_table(answer, read_info(data_dir).url))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from lpnode.node.cli_format import available_table, models_table

    if args.available:
        config = _config(args, weights_dir=args.weights_dir)
        from lpnode.models import registry

        rows = registry.list_models(config.resolved_weights_dir)
        if args.json:
            print(json.dumps([_listing_json(row) for row in rows], indent=2))
        else:
            print(available_table([_listing_json(row) for row in rows], config.resolved_weights_dir))
        return 0
    answer = _ask(_config(args).data_dir, lambda client: client.models())
    print(json.dumps(answer, indent=2) if args.json else models_table(answer))
    return 0


def _listing_json(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "model_id": row.model_id,
        "family": row.family,
        "pipelines": [str(kind) for kind in row.pipelines],
        "weights_sha256": row.weights_sha256,
        "vram_bytes": row.vram_bytes,
        "tiny": row.tiny,
        "problem": row.problem,
    }


def _ask(data_dir: Path, call: Callable[[Any], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    from lpnode.node.client import LpnodeClient

    async def ask() -> dict[str, Any]:
        async with LpnodeClient.from_data_dir(data_dir) as client:
            return await call(client)

    return trio.run(ask)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in _COMMANDS:
        return _COMMANDS[args.command](args)
    if args.command == "receipt":
        from lpnode.node.cli_receipt import cmd_receipt

        return cmd_receipt(args)
    if args.command == "reputation":
        from lpnode.node.cli_reputation import cmd_reputation

        return cmd_reputation(args, _config(args).data_dir)
    if args.command == "served":
        from lpnode.node.cli_served import cmd_served

        return cmd_served(args, _config(args).data_dir)
    if args.command == "sim":
        return _cmd_sim(args)
    if args.command == "workflow":
        from lpnode.node.cli_workflow import cmd_workflow

        return cmd_workflow(args, _config(args).data_dir)
    from lpnode.node.cli_jobs import commands_table

    return commands_table()[args.command](args, _config(args).data_dir)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "id": _cmd_id,
    "peers": _cmd_peers,
    "node": _cmd_node,
    "models": _cmd_models,
}
