"""Preset registry: names resolve to unloaded adapters; listing reports hashes or problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from lpnode.models import registry
from lpnode.models.base import PipelineKind
from lpnode.models.errors import UnknownModel
from lpnode.models.sd import StableDiffusionXLAdapter


def test_presets_cover_the_diffusion_pipelines() -> None:
    names = set(registry.presets())
    assert {"tiny-sdxl", "sdxl-turbo", "tiny-svd", "svd-xt"} <= names
    served = {k for p in registry.presets().values() for k in p.spec.pipelines}
    assert {PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE, PipelineKind.IMAGE_TO_VIDEO} <= served


def test_resolve_returns_an_unloaded_adapter(tmp_path: Path) -> None:
    adapter = registry.resolve("sdxl-turbo", tmp_path)
    assert isinstance(adapter, StableDiffusionXLAdapter)
    assert not adapter.loaded and adapter.weights_dir == tmp_path
    assert registry.spec("tiny-svd").family == "svd"


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownModel, match="tiny-sdxl"):
        registry.resolve("sdxl-tubro")
    with pytest.raises(UnknownModel):
        registry.spec("nope")


def test_listing_has_hashes_for_tiny_presets_and_reasons_for_absent_weights(tmp_path: Path) -> None:
    rows = {r.name: r for r in registry.list_models(tmp_path)}
    assert rows["tiny-sdxl"].weights_sha256 is not None and rows["tiny-sdxl"].tiny
    turbo = rows["sdxl-turbo"]
    assert turbo.weights_sha256 is None and "sdxl-turbo" in turbo.problem
    assert turbo.vram_bytes > 2**30 and turbo.pipelines == (PipelineKind.IMAGE_TO_IMAGE, PipelineKind.TEXT_TO_IMAGE)
    assert all(not r.tiny for r in registry.list_models(tmp_path, include_tiny=False))
