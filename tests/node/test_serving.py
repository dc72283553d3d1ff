"""What a node serves: preset choice from the config, and the pool mirrored into adverts and the RPC API."""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from lpnode.models.pool import model_offers, open_model_pool
from lpnode.node.config import NodeConfig
from lpnode.node.daemon import serve_node
from lpnode.node.network.memory import open_memory_hub
from lpnode.node.offer import OfferSource
from lpnode.node.rpc import create_app
from lpnode.node.serving import choose_models, pool_config, serve_model_offers
from lpnode.protocol import NodeKey
from lpnode.protocol.advert import GpuInfo
from lpnode.protocol.errors import ConfigError

CPU = (GpuInfo(name="cpu: test", kind="cpu", vram_total_bytes=0, vram_free_bytes=0),)
GPU = (GpuInfo(name="NVIDIA H100", kind="cuda", vram_total_bytes=80 << 30, vram_free_bytes=79 << 30),)
TINY = ("tiny-realesrgan", "tiny-rife", "tiny-sdxl", "tiny-svd")


def config(tmp_path: Path, **changes: object) -> NodeConfig:
    return NodeConfig(data_dir=tmp_path, listen=("/memory/0",), mdns=False, **changes).validate()  # type: ignore[arg-type]


def test_a_machine_without_gpu_serves_the_tiny_presets_all_warm(tmp_path: Path) -> None:
    choice = choose_models(config(tmp_path), CPU)
    assert choice.serve == TINY
    assert choice.warm == TINY
    assert "no GPU" in choice.reason


def test_a_gpu_without_weights_falls_back_to_tiny_and_says_why(tmp_path: Path) -> None:
    choice = choose_models(config(tmp_path), GPU)
    assert choice.serve == TINY
    assert str(tmp_path / "weights") in choice.reason


def test_a_gpu_with_weights_serves_those_real_presets_warming_one(tmp_path: Path) -> None:
    (tmp_path / "weights" / "sdxl-turbo").mkdir(parents=True)
    (tmp_path / "weights" / "realesrgan").mkdir(parents=True)
    choice = choose_models(config(tmp_path), GPU)
    assert set(choice.serve) == {"sdxl-turbo", "realesrgan-x2", "realesrgan-x4"}
    assert len(choice.warm) == 1  # real models load on demand, so start-up never overfills VRAM


def test_configured_models_and_warm_set_are_checked(tmp_path: Path) -> None:
    choice = choose_models(config(tmp_path, serve=("tiny-sdxl", "tiny-rife"), warm=("tiny-rife",)), CPU)
    assert (choice.serve, choice.warm) == (("tiny-sdxl", "tiny-rife"), ("tiny-rife",))
    with pytest.raises(ConfigError, match=r"unknown model\(s\) \['sdxl-lightning'\].*known: .*tiny-sdxl"):
        choose_models(config(tmp_path, serve=("sdxl-lightning",)), CPU)
    with pytest.raises(ConfigError, match="must also be in serve"):
        config(tmp_path, serve=("tiny-sdxl",), warm=("tiny-svd",))
    with pytest.raises(ConfigError, match="not served"):
        choose_models(config(tmp_path, warm=("sdxl-turbo",)), CPU)


async def test_pool_state_reaches_the_advert_and_the_rpc_api(tmp_path: Path) -> None:
    cfg = config(tmp_path, serve=("tiny-realesrgan", "tiny-rife"), warm=("tiny-realesrgan",))
    choice = choose_models(cfg, CPU)
    offer = OfferSource(queue_capacity=cfg.queue_capacity, devices=CPU)
    key = NodeKey(b"\x05" * 32)
    async with (
        open_model_pool(pool_config(cfg, choice)) as pool,
        open_memory_hub() as hub,
        hub.open_network(key) as net,
        trio.open_nursery() as nursery,
    ):
        node = await nursery.start(functools.partial(serve_node, cfg, key, net, offer))
        await nursery.start(serve_model_offers, pool, offer, cfg.price_per_mpx_step, node.publisher.poke)
        # a cold model is offered once its weights are hashed (in the background): a receipt binds the hash
        with trio.fail_after(60):
            version = pool.state_version  # taken before the check: a change after it wakes the wait
            while "lpnode/tiny-rife" not in {m.model_id for m in offer().models}:
                version = await pool.wait_changed(version)
        by_model = {m.model_id: m for m in offer.models}
        assert len(by_model["lpnode/tiny-rife"].weights_sha256) == 64
        assert by_model["lpnode/tiny-realesrgan"].warm and by_model["lpnode/tiny-realesrgan"].pipeline == "upscale"
        assert not by_model["lpnode/tiny-rife"].warm
        assert all(m.price_per_mpx_step == cfg.price_per_mpx_step for m in offer.models)
        assert len(by_model["lpnode/tiny-realesrgan"].weights_sha256) == 64

        # loading the cold model changes the offer (and pokes the publisher)
        with trio.fail_after(60):
            await pool.warm("tiny-rife")
            version = pool.state_version
            while not all(m.warm for m in offer().models):  # the snapshot an advert takes
                version = await pool.wait_changed(version)
        built = node.publisher.build()
        assert all(len(m.weights_sha256) == 64 for m in built.models)
        assert {m.model_id for m in built.models if m.warm} == {"lpnode/tiny-realesrgan", "lpnode/tiny-rife"}

        app = create_app(node, "t", pool=pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            answer = (await client.get("/v1/models", headers={"Authorization": "Bearer t"})).json()
        assert answer["requester_only"] is False
        assert [m["name"] for m in answer["models"]] == ["tiny-realesrgan", "tiny-rife"]
        assert answer["models"][0]["pinned"] and not answer["models"][1]["pinned"]
        nursery.cancel_scope.cancel()


async def test_a_model_whose_weights_are_missing_is_not_offered(tmp_path: Path) -> None:
    # it was advertised (cold) and every requester routed to it got a refusal, as long as the node ran (QA)
    cfg = config(tmp_path, serve=("tiny-rife", "sdxl-turbo"), warm=("tiny-rife", "sdxl-turbo"))
    async with open_model_pool(pool_config(cfg, choose_models(cfg, CPU))) as pool:
        with trio.fail_after(60):
            while not all(row.weights_sha256 or row.problem for row in pool.status()):
                await pool.wait_changed(pool.state_version)
        rows = {row.name: row for row in pool.status()}
        assert "missing" in rows["sdxl-turbo"].problem and not rows["sdxl-turbo"].warm
        assert {m.model_id for m in model_offers(pool.status(), 100)} == {"lpnode/tiny-rife"}
