"""What a node serves: choosing presets from the config, and keeping the advert in step with the pool.

``choose_models`` turns ``serve``/``warm`` (possibly empty: "this machine's
defaults") into a :class:`~lpnode.models.pool.PoolConfig`; ``serve_model_offers``
copies the pool's state into the advert source whenever it changes, so a
model that warms up or cools down is re-advertised within the publisher's
minimum gap rather than at the next periodic advert.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from lpnode.models import registry
from lpnode.models.errors import UnknownModel
from lpnode.models.pool import PoolConfig, model_offers
from lpnode.node.config import NodeConfig
from lpnode.node.inference import InferencePool
from lpnode.node.offer import OfferSource
from lpnode.protocol.advert import GpuInfo
from lpnode.protocol.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    serve: tuple[str, ...]
    warm: tuple[str, ...]
    reason: str  # one line for the log: why these


def choose_models(config: NodeConfig, devices: tuple[GpuInfo, ...]) -> ModelChoice:
    """The presets to serve and to keep warm. Raises ConfigError naming unknown presets."""
    known = registry.presets()
    if config.serve:
        unknown = [name for name in config.serve if name not in known]
        if unknown:
            raise ConfigError(f"serve: unknown model(s) {unknown}; known: {', '.join(known)}")
        serve = config.serve
        reason = "from the configuration"
    else:
        serve, reason = _defaults(config, devices)
    if config.warm:
        if extra := [name for name in config.warm if name not in serve]:
            raise ConfigError(f"warm: {extra} are not served (serving {list(serve)})")
        warm = config.warm
    else:
        # tiny presets cost a few MB: keep them all warm; of real ones, only the first
        # is loaded at start and the rest on demand, so start-up never overfills VRAM
        warm = serve if all(known[name].spec.tiny for name in serve) else serve[:1]
    return ModelChoice(serve=serve, warm=warm, reason=reason)


def _defaults(config: NodeConfig, devices: tuple[GpuInfo, ...]) -> tuple[tuple[str, ...], str]:
    presets = registry.presets()
    tiny = tuple(name for name, preset in presets.items() if preset.spec.tiny)
    if not any(device.kind == "cuda" for device in devices):
        return tiny, "no GPU: the built-in tiny presets"
    weights_dir = config.resolved_weights_dir
    real = tuple(
        name
        for name, preset in presets.items()
        if not preset.spec.tiny
        and preset.spec.weights_subdir is not None
        and (weights_dir / preset.spec.weights_subdir).exists()
    )
    if real:
        return real, f"real presets whose weights are in {weights_dir}"
    return tiny, f"GPU found but no weights in {weights_dir}: the tiny presets (see `lpnode models --available`)"


def pool_config(config: NodeConfig, choice: ModelChoice) -> PoolConfig:
    return PoolConfig(
        serve=choice.serve,
        pinned=choice.warm,
        weights_dir=config.resolved_weights_dir,
        device=config.device,
        budget_bytes=config.vram_budget_bytes or None,
        max_queue=config.queue_capacity,
        batch_window_s=config.batch_window_ms / 1000,
        compile="off" if config.compile == "off" else "auto",
        compile_cache_dir=config.data_dir / "compile-cache",
        speeds_path=config.data_dir / "model-speeds.json",
    )


async def serve_model_offers(
    pool: InferencePool,
    offer: OfferSource,
    price_per_mpx_step: int,
    on_change: Callable[[], None],
    *,
    reserved: Callable[[], int] = lambda: 0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mirror the pool's models and queue into ``offer`` (read when a snapshot is taken); call ``on_change``
    after each change of the pool. ``reserved``: the worker's reservations (quoted or running jobs)."""
    seen = pool.state_version
    sync_offer(pool, offer, price_per_mpx_step, reserved)
    offer.refresh = functools.partial(sync_offer, pool, offer, price_per_mpx_step, reserved)
    task_status.started()
    while True:
        seen = await pool.wait_changed(seen)
        on_change()


def sync_offer(
    pool: InferencePool, offer: OfferSource, price_per_mpx_step: int, reserved: Callable[[], int] = lambda: 0
) -> None:
    offer.models = model_offers(pool.status(), price_per_mpx_step)
    # A slot held by a quote or an upload is as taken as one on the device: a worker with every
    # reservation held advertised itself idle while refusing "busy", and was ranked first (review s11).
    offer.queue_depth = max(pool.queue_depth, reserved())


__all__ = ["ModelChoice", "UnknownModel", "choose_models", "pool_config", "serve_model_offers", "sync_offer"]
