"""``lpnode run``: one node process — libp2p host, node logic and RPC API in one trio nursery.

Startup order matters for users and for the scripts that drive them: the
identity key and RPC token exist before anything listens; ``rpc.json`` is
written only once the API is bound (so a client that finds it can call it);
the banner is printed last, when everything is up. SIGINT and SIGTERM cancel
the nursery, which closes the RPC server (removing ``rpc.json``), the node and
the libp2p host in that order.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TextIO

import trio
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import Node, serve_node
from lpnode.node.gossip import WallClock
from lpnode.node.identity import load_or_create_key
from lpnode.node.job_manager import JobManager, open_job_manager
from lpnode.node.job_runner import requester_runner
from lpnode.node.job_storage import open_job_storage
from lpnode.node.network.libp2p import Libp2pConfig, open_libp2p_network
from lpnode.node.offer import OfferSource, serve_device_monitor
from lpnode.node.rpc import create_app, serve_rpc, status_for
from lpnode.node.rpc_info import check_not_running
from lpnode.node.rpc_token import TOKEN_FILE, load_or_create_token
from lpnode.node.served_jobs import SERVED_MIGRATIONS, ServedBook, serve_served_book
from lpnode.node.spare_streams import SpareStreams, open_spare_streams
from lpnode.protocol.errors import ConfigError, NetworkError
from lpnode.protocol.names import JOB_PROTOCOL, SOFTWARE_VERSION
from lpnode.reputation.spot_check import SpotChecker, open_spot_checker
from lpnode.reputation.store import REPUTATION_MIGRATIONS, ReputationStore, open_reputation

if TYPE_CHECKING:
    from lpnode.models.pool import ModelPool, ModelStatus
    from lpnode.node.inference import InferencePool
    from lpnode.node.local_jobs import LocalWorker

STOP_NOTICE_S = 1.0  # on SIGINT/SIGTERM, how long the worker may take to tell its requesters it is going
YOUNG_COLLECTION_THRESHOLD = 50_000  # allocations between collections of the youngest generation (CPython: 700)

log = logging.getLogger(__name__)


_LIBP2P_CHURN_LOGGERS = (
    "libp2p.transport.tcp.tcp",
    "libp2p.protocol_muxer.multiselect_client",
    "libp2p.network.health.monitor",
)


class _ReraisedByLibp2p(logging.Filter):
    """Drops py-libp2p's ERROR lines for failures it also raises to its caller, who handles them.

    A dial that fails its handshake (a peer shutting down) and a stream that cannot be opened (a peer
    gone or stopped) reach the node as exceptions, and the node says what they mean for its jobs and
    peers; py-libp2p's own ERROR line beside each was noise an operator took for a fault (QA).
    """

    PREFIXES = ("failed to upgrade security for peer", "Failed to open stream to peer")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES))


_RERAISED = _ReraisedByLibp2p()
_RERAISING_LOGGERS = ("libp2p.network.swarm", "libp2p.host.basic_host")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    import libp2p  # noqa: F401  (its import configures its logger: that must come first, to be undone here)

    libp2p_log = logging.getLogger("libp2p")
    if not libp2p_log.handlers:
        # Without LIBP2P_DEBUG, py-libp2p's import leaves its logger with no handler and propagate off,
        # so its warnings reached Python's last-resort handler as bare lines (no time, level or logger):
        # they go through the node's handler, in the node's format. (With LIBP2P_DEBUG set, it has its own.)
        libp2p_log.propagate = True
    # py-libp2p logs ordinary churn at ERROR/WARNING: a peer that is down (each dial attempt, beside the node's
    # own "bootstrap ... unreachable" warning), a peer that closed (a failed handshake write, a failed health
    # ping). Left to log_level = "debug".
    for churn in _LIBP2P_CHURN_LOGGERS:
        logging.getLogger(churn).setLevel(logging.NOTSET if level == "debug" else logging.CRITICAL)
    for name in _RERAISING_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_RERAISED)
        if level != "debug":
            logger.addFilter(_RERAISED)
    if level != "debug":
        # py-libp2p logs every dial retry and stream reset at INFO; that is its business, not the user's
        libp2p_log.setLevel(logging.WARNING)
        # diffusers/transformers warn about optional backends (torchvision) and dtype casts
        # on every model load; harmless for our presets and alarming to an operator
        # (they configure their own loggers on first import, so a level set here would be
        # reset: their documented environment switches are read at that moment instead)
        for library in ("DIFFUSERS", "TRANSFORMERS"):
            os.environ.setdefault(f"{library}_VERBOSITY", "error")


def libp2p_config(config: NodeConfig) -> Libp2pConfig:
    try:
        return Libp2pConfig(listen_addrs=config.listen, enable_mdns=config.mdns)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def run_node(
    config: NodeConfig, *, out: TextIO = sys.stdout, wall_clock: WallClock = time.time, cheat: str | None = None
) -> None:
    """Run a node until SIGINT or SIGTERM; return after a clean shutdown.

    ``cheat`` (``MODE[:RATE]``, tests only): the worker cheats (``lpnode.reputation.cheat_pool``).
    """
    setup_logging(config.log_level)
    before_stop: list[Callable[[], Awaitable[None]]] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope, before_stop)
            await _serve(config, out, wall_clock, cheat, before_stop)
    log.info("node stopped")


async def _cancel_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, before_stop: Sequence[Callable[[], Awaitable[None]]]
) -> None:
    async for signum in signals:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        # What must happen while the network is still up (the worker telling its requesters),
        # briefly: cancelling the host closes every connection at once.
        # Each hook its own bound: one cut short (a worker whose requester stopped reading) must not
        # cost the next its turn (the served rows' flush).
        for hook in before_stop:
            with trio.move_on_after(STOP_NOTICE_S):
                await hook()
        scope.cancel()
        return


async def _serve(
    config: NodeConfig,
    out: TextIO,
    wall_clock: WallClock,
    cheat: str | None = None,
    before_stop: list[Callable[[], Awaitable[None]]] | None = None,
) -> None:
    check_not_running(config.data_dir)
    key = load_or_create_key(config.data_dir)
    token = load_or_create_token(config.data_dir)
    offer = OfferSource(queue_capacity=config.queue_capacity)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(serve_device_monitor, offer)
        pool = None if config.requester_only else await stack.enter_async_context(_open_pool(config, offer))
        network = await stack.enter_async_context(open_libp2p_network(key, libp2p_config(config)))
        if not network.listen_addrs():
            # py-libp2p logs a listener that failed to bind (port taken) and carries on deaf
            raise NetworkError(f"cannot listen on {', '.join(config.listen)} (address in use?); see the log above")
        # the node runs in its own nursery, inside the network's context: it stops before the host closes
        node_nursery = await stack.enter_async_context(trio.open_nursery())
        node: Node = await node_nursery.start(
            functools.partial(serve_node, config, key, network, offer, wall_clock=wall_clock)
        )
        local = None  # this node's own worker, for jobs that allow_local
        served = None if pool is None else ServedBook()  # written once the database opens (_open_jobs)
        if pool is not None:
            from lpnode.node.job_worker import WorkerConfig, serve_job_worker
            from lpnode.node.local_jobs import LocalWorker
            from lpnode.node.serving import serve_model_offers

            worker = await node_nursery.start(
                functools.partial(
                    serve_job_worker,
                    network,
                    key,
                    pool if cheat is None else _cheating(pool, cheat),
                    WorkerConfig(max_jobs=config.queue_capacity, price_per_mpx_step=config.price_per_mpx_step),
                    wall_clock=wall_clock,
                    # receipt numbers must keep increasing across restarts (job_proof.ReceiptSequence)
                    sequence_path=config.data_dir / "receipt-seq",
                    served=served,
                    on_capacity_change=node.publisher.poke,
                )
            )
            await node_nursery.start(
                functools.partial(
                    serve_model_offers,
                    pool,
                    offer,
                    config.price_per_mpx_step,
                    node.publisher.poke,
                    reserved=lambda: len(worker.reservations),
                )
            )
            local = LocalWorker(worker)
            if before_stop is not None and served is not None:
                # on SIGINT/SIGTERM: its jobs told and ended, then their rows written, then the rest stops
                before_stop += [worker.stop, served.flush]
        jobs, reputation, checker = await stack.enter_async_context(_open_jobs(config, node, local, wall_clock, served))
        app = create_app(
            node,
            token,
            pool=pool,
            jobs=jobs,
            max_input_bytes=config.max_input_bytes,
            reputation=reputation,
            served=served,
            checks=checker,
        )
        urls = await node_nursery.start(serve_rpc, app, config.rpc_host, config.rpc_port, config.data_dir)
        freeze_startup_heap()
        _print_banner(out, node, urls, config, pool)
        await trio.sleep_forever()


def freeze_startup_heap() -> None:
    """Tune the cyclic garbage collector for a long-running node, once everything is up.

    - Freeze what startup built. torch, diffusers, the models and py-libp2p leave millions of
      long-lived objects, and every full collection walked them all with the event loop (and the
      model's thread) stopped: 10-230 ms each on the dev box (bench/e2e.py with gc callbacks in
      both node processes). Frozen, they are never traversed again; reference counting still frees
      anything frozen that is dropped.
    - Collect the young generation every 50,000 allocations instead of 700. A job allocates
      thousands of containers (messages, records, trio's bookkeeping), so a collection stopped
      the requester in the middle of ~every job: 0.38 ms of GC per job (median), 0.75 ms per
      second-generation pass. Most of those objects die by reference count before any collection
      sees them, so fewer, larger passes cost less in all; cyclic garbage waits a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 20, 20)


@contextlib.asynccontextmanager
async def _open_jobs(
    config: NodeConfig, node: Node, local: LocalWorker | None, wall_clock: WallClock, served: ServedBook | None
) -> AsyncIterator[tuple[JobManager, ReputationStore, SpotChecker]]:
    """The RPC job manager: records and outputs kept for the API, jobs sent through this node's requester,
    steered by the reputation store (same database) and spot-checked (``lpnode.reputation.spot_check``).
    ``served``, the worker's book of jobs served, is written to the same database while this is open."""
    async with (
        open_job_storage(
            config.data_dir,
            config.outputs_max_bytes,
            wall_clock(),
            extra_migrations=[*REPUTATION_MIGRATIONS, *SERVED_MIGRATIONS],
        ) as (book, outputs),
        _open_spares(config, node) as spares,
        trio.open_nursery() as writers,
    ):
        assert book.store is not None
        if served is not None:
            await writers.start(serve_served_book, served, book.store)
        reputation = await open_reputation(book.store, clock=wall_clock)
        runner = requester_runner(node, local, reputation=reputation, spares=spares, explore_share=config.explore_share)
        async with (
            open_spot_checker(node, runner, reputation) as checker,
            open_job_manager(
                book,
                outputs,
                checker,
                max_jobs=config.max_rpc_jobs,
                status_for=status_for,
                wall_clock=wall_clock,
            ) as jobs,
        ):
            try:
                yield jobs, reputation, checker
            finally:
                writers.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _open_spares(config: NodeConfig, node: Node) -> AsyncIterator[SpareStreams | None]:
    """The requester's spare job streams (``spare_streams``); None when ``spare_stream_ttl_s`` is 0."""
    if config.spare_stream_ttl_s <= 0:
        yield None
        return
    async with open_spare_streams(node.network, JOB_PROTOCOL, ttl_s=config.spare_stream_ttl_s) as spares:
        yield spares


def _cheating(pool: ModelPool, cheat: str) -> InferencePool:
    """Tests only (``lpnode run --cheat``): the pool the worker runs jobs on cheats."""
    from lpnode.reputation.cheat_pool import CheatingPool, parse_cheat

    mode, rate = parse_cheat(cheat)
    log.warning("--cheat %s: this worker cheats on %.0f%% of its jobs (a test setting)", mode, 100 * rate)
    return CheatingPool(pool, mode, rate, rng=random.Random())


@contextlib.asynccontextmanager
async def _open_pool(config: NodeConfig, offer: OfferSource) -> AsyncIterator[ModelPool]:
    """The model pool for ``config.serve``, with its warm set loaded."""
    # imported here: a requester-only node never loads torch models or diffusers
    from lpnode.models.pool import open_model_pool
    from lpnode.node.serving import choose_models, pool_config, sync_offer

    # importing every pipeline module (diffusers) takes seconds: not on the event loop
    choice = await trio.to_thread.run_sync(choose_models, config, offer.devices)
    log.info("serving %s (%s); warm: %s", ", ".join(choice.serve), choice.reason, ", ".join(choice.warm) or "none")
    async with open_model_pool(pool_config(config, choice)) as pool:
        sync_offer(pool, offer, config.price_per_mpx_step)
        yield pool


def _first_sentence(text: str, limit: int = 100) -> str:
    """The first sentence of ``text`` (the rest is in the log), cut at a word if even that is long."""
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " …"


def _model_state(row: ModelStatus) -> str:
    # a model that cannot load is not "cold": it is not offered at all (QA)
    if row.problem and not row.warm:
        return f"{row.name} (not offered: {_first_sentence(row.problem)})"
    return f"{row.name} ({'warm' if row.warm else 'cold'})"


def _print_banner(out: TextIO, node: Node, urls: Sequence[str], config: NodeConfig, pool: ModelPool | None) -> None:
    addrs = node.network.listen_addrs() or ["(none)"]
    if pool is None:
        models = "none (requester only)"
    else:
        models = ", ".join(_model_state(row) for row in pool.status()) or "none"
    lines = [
        f"lpnode {SOFTWARE_VERSION} running",
        f"  peer id    {node.peer_id}",
        f"  listening  {addrs[0]}",
        *(f"             {addr}" for addr in addrs[1:]),
        f"  rpc        {urls[0]}  (API docs: {urls[0]}/docs, token: {config.data_dir / TOKEN_FILE})",
        f"  models     {models}",
        f"  data dir   {config.data_dir}",
    ]
    print("\n".join(lines), file=out, flush=True)
