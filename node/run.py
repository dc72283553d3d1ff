"""``lpnode run``: one node process — libp2p host, node logic and RPC API in one trio nursery.

Startup order matters for users and for the scripts that drive them: the
identity key and RPC token exist before anything listens; ``rpc.json`` is
written only once the API is bound (so a client that finds it can call it);
the banner is printed last, when everything is up. SIGINT and SIGTERM cancel
the nursery, which closes the RPC server (removing ``rpc.json``), the node and
the libp2p host in that order.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import WallClock
from lpnode.node.identity import load_or_create_key
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.offer import OfferSource, serve_device_monitor
from lpnode.node.rpc import create_app, serve_rpc
from lpnode.node.rpc_info import check_not_running
from lpnode.node.rpc_token import TOKEN_FILE, load_or_create_token
from lpnode.protocol.advert import ModelOffer
from lpnode.protocol.errors import ConfigError, NetworkError
from lpnode.protocol.names import SOFTWARE_VERSION

log = logging.getLogger(__name__)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if level != "debug":
        # py-libp2p logs every dial retry and stream reset at INFO; that is its business, not the user's
        logging.getLogger("libp2p").setLevel(logging.WARNING)


def libp2p_config(config: NodeConfig) -> Libp2pConfig:
    try:
        return Libp2pConfig(listen_addrs=config.listen, enable_mdns=config.mdns)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def advertised_models(config: NodeConfig) -> tuple[ModelOffer, ...]:
    """The models this node offers at start.

    Seam for the model pool: it will resolve ``config.serve`` (empty = the
    defaults for this machine, ``none`` = requester-only) to presets, load
    them, and keep ``OfferSource.models`` current as they warm and cool. Until
    then a node advertises no models.
    """
    return ()


async def run_node(config: NodeConfig, *, out: TextIO = sys.stdout, wall_clock: WallClock = time.time) -> None:
    """Run a node until SIGINT or SIGTERM; return after a clean shutdown."""
    setup_logging(config.log_level)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            await _serve(config, out, wall_clock)
    log.info("node stopped")


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        scope.cancel()
        return


async def _serve(config: NodeConfig, out: TextIO, wall_clock: WallClock) -> None:
    check_not_running(config.data_dir)
    key = load_or_create_key(config.data_dir)
    token = load_or_create_token(config.data_dir)
    offer = OfferSource(queue_capacity=config.queue_capacity, models=advertised_models(config))
    async with open_libp2p_network(key, libp2p_config(config)) as network, trio.open_nursery() as nursery:
        if not network.listen_addrs():
            # py-libp2p logs a listener that failed to bind (port taken) and carries on deaf
            raise NetworkError(f"cannot listen on {', '.join(config.listen)} (address in use?); see the log above")
        await nursery.start(serve_device_monitor, offer)
        node: Node = await nursery.start(
            functools.partial(serve_node, config, key, network, offer, wall_clock=wall_clock)
        )
        app = create_app(node, token)
        urls = await nursery.start(serve_rpc, app, config.rpc_host, config.rpc_port, config.data_dir)
        _print_banner(out, node, urls, config)


def _print_banner(out: TextIO, node: Node, urls: Sequence[str], config: NodeConfig) -> None:
    addrs = node.network.listen_addrs() or ["(none)"]
    lines = [
        f"lpnode {SOFTWARE_VERSION} running",
        f"  peer id    {node.peer_id}",
        f"  listening  {addrs[0]}",
        *(f"             {addr}" for addr in addrs[1:]),
        f"  rpc        {urls[0]}  (API docs: {urls[0]}/docs, token: {config.data_dir / TOKEN_FILE})",
        f"  data dir   {config.data_dir}",
    ]
    print("\n".join(lines), file=out, flush=True)
