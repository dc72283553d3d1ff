"""Fixtures for node tests: the network backends of ``tests/network`` (memory and libp2p), and the model pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lpnode.models.pool import ModelPool, PoolConfig, open_model_pool

from tests.network.conftest import backend_name, open_group

__all__ = ["backend_name", "open_group"]


@pytest.fixture
async def pool() -> AsyncIterator[ModelPool]:
    async with open_model_pool(PoolConfig(serve=("tiny-sdxl",), pinned=("tiny-sdxl",), device="cpu")) as pool:
        yield pool
