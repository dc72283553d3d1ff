"""Regressions of the outside QA pass (/tmp/qa/report.md, items N1, N3, N4, N6) on the RPC API.

Real tiny presets on the in-memory network; "no peer contacted" is the hub's stream counter unchanged
and no worker having quoted or run anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool
from lpnode.node.network.memory import open_memory_hub

from .test_jobs import BOUND_S, Peer, completed, peers, png, sees_models
from .test_rpc_jobs import AUTH, BODY, rpc

UPSCALER = "lpnode/tiny-realesrgan"  # advertises a 512-pixel side


@pytest.fixture
async def pool2() -> AsyncIterator[ModelPool]:
    presets = ("tiny-sdxl", "tiny-realesrgan")
    async with open_model_pool(PoolConfig(serve=presets, pinned=presets, device="cpu")) as pool:
        yield pool


async def test_sizes_no_model_takes_are_refused_before_any_peer_is_asked(pool2: ModelPool) -> None:
    """N3: a width off the 8-pixel grid, and an upscale whose output is over every model's side: 422, no stream."""
    async with open_memory_hub() as hub, peers(hub) as start:
        requester: Peer = await start(0)  # type: ignore[assignment]
        worker: Peer = await start(1, pool=pool2)  # type: ignore[assignment]
        await sees_models(requester.node, [worker])
        async with rpc(requester.node) as (client, _):
            streams = hub.stats.streams_opened
            with trio.fail_after(BOUND_S):
                off_grid = await client.post("/text-to-image", json=BODY | {"width": 65}, headers=AUTH)
                video = await client.post(
                    "/image-to-video", files={"image": ("image", png(8, 8))}, data={"height": "100"}, headers=AUTH
                )
                files = {"image": ("image", png(256, 144))}
                too_big = await client.post("/upscale", files=files, data={"scale": "4"}, headers=AUTH)
            assert hub.stats.streams_opened == streams and completed(worker) == [0]
    assert off_grid.status_code == 422 and video.status_code == 422
    assert off_grid.json()["message"] == (
        "body field width: 65 is not a multiple of 8 (diffusion models work in 8-pixel blocks): try 64 or 72"
    )
    assert "body field height: 100 is not a multiple of 8" in video.json()["message"]
    assert too_big.status_code == 422, too_big.text
    # in what the user sent (the input's size and the scale), not a derived width nobody typed
    message = too_big.json()["message"]
    assert "output 1024×576 (input 256×144 × scale 4) exceeds its 512-pixel side" in message
    assert "attempts" not in message and "width=" not in message


async def test_a_non_finite_number_is_refused_as_such() -> None:
    """N6: NaN is not 'more than 50'; infinity neither."""
    async with open_memory_hub() as hub, peers(hub) as start:
        lone: Peer = await start(0)  # type: ignore[assignment]
        async with rpc(lone.node) as (client, _):
            with trio.fail_after(BOUND_S):
                nan = await client.post(
                    "/text-to-image",
                    content=b'{"prompt": "x", "guidance_scale": NaN}',
                    headers=AUTH | {"content-type": "application/json"},
                )
                inf = await client.post(
                    "/image-to-image", files={"image": ("image", png(8, 8))}, data={"strength": "inf"}, headers=AUTH
                )
    assert (
        nan.status_code == 422 and nan.json()["message"] == "body field guidance_scale: Input should be a finite number"
    )
    assert inf.status_code == 422 and "body field strength: Input should be a finite number" in inf.json()["message"]
