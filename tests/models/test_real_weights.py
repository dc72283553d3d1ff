"""The real presets' loaders (``from_pretrained`` from a local folder) on folders we write ourselves.

No real weights can be downloaded here, so each folder holds the tiny preset's modules saved the way
a user's copy of the Hugging Face repository is laid out (``save_pretrained``, diffusers layout).
The real preset then loads them through its own path, the one a GPU node with the published
weights takes: the files are located, hashed as files, loaded and run. What this cannot show is
that the published checkpoints load; the layout, the hash and everything after the load it does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
from diffusers import StableDiffusionXLPipeline, StableVideoDiffusionPipeline
from lpnode.models import registry
from lpnode.models import tokenizer as tok
from lpnode.models.base import ModelAdapter, PipelineKind
from lpnode.models.errors import ModelLoadError, WeightsMissing
from lpnode.models.outputs import ImageOutput, VideoOutput, encode_png_array
from lpnode.models.pool import PoolConfig, open_model_pool
from lpnode.models.sd import build_tiny_sdxl_modules, turbo_scheduler
from lpnode.models.svd import build_tiny_svd_modules, svd_scheduler
from lpnode.models.weights import diffusers_weight_files, hash_weight_files
from transformers import CLIPImageProcessor


def save_sdxl(folder: Path, *, legacy_tokenizer: bool) -> None:
    tokenizer = tok.byte_level_clip_tokenizer()
    modules = build_tiny_sdxl_modules()
    pipe = StableDiffusionXLPipeline(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=turbo_scheduler())
    pipe.save_pretrained(folder)
    if legacy_tokenizer:
        # The published repository's format: vocab.json + merges.txt, no tokenizer.json.
        for name in ("tokenizer", "tokenizer_2"):
            (folder / name / "tokenizer.json").unlink()
            (folder / name / "vocab.json").write_text(json.dumps(tok.byte_level_vocab()))
            (folder / name / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    save_sdxl(root / "sdxl-turbo", legacy_tokenizer=False)
    svd = StableVideoDiffusionPipeline(
        **build_tiny_svd_modules(), scheduler=svd_scheduler(), feature_extractor=CLIPImageProcessor()
    )
    svd.save_pretrained(root / "svd-xt")
    return root


@pytest.fixture(scope="module")
def sdxl(weights_dir: Path) -> Iterator[ModelAdapter]:
    adapter = registry.resolve("sdxl-turbo", weights_dir)
    adapter.load("cpu")
    yield adapter
    adapter.unload()


def test_sdxl_turbo_loads_a_saved_folder_and_signs_the_hash_of_its_files(sdxl: ModelAdapter, weights_dir: Path) -> None:
    folder = weights_dir / "sdxl-turbo"
    assert sdxl.weights_sha256() == hash_weight_files(folder, diffusers_weight_files(folder, None))
    # the tokenizers are part of what the hash covers: another vocabulary is another model
    hashed = {p.relative_to(folder).as_posix() for p in diffusers_weight_files(folder, None)}
    assert {"unet/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"} <= hashed


def test_sdxl_turbo_runs_both_pipelines_at_its_own_defaults(sdxl: ModelAdapter) -> None:
    request = sdxl.spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a lighthouse at dusk", seed=3)
    first, again = sdxl.run(request), sdxl.run(request)
    assert isinstance(first, ImageOutput) and (first.width, first.height) == (512, 512)  # the preset's default
    assert first.sha256 == again.sha256
    source = encode_png_array(np.full((256, 192, 3), 90, dtype=np.uint8))
    i2i = sdxl.spec.build_request(
        PipelineKind.IMAGE_TO_IMAGE, prompt="at night", image=source, strength=0.5, num_inference_steps=2, seed=3
    )
    out = sdxl.run(i2i)
    assert isinstance(out, ImageOutput) and (out.width, out.height) == (192, 256)


def test_the_published_tokenizer_format_loads_and_hashes_apart(tmp_path: Path, sdxl: ModelAdapter) -> None:
    save_sdxl(tmp_path / "sdxl-turbo", legacy_tokenizer=True)
    adapter = registry.resolve("sdxl-turbo", tmp_path)
    adapter.load("cpu")
    try:
        request = adapter.spec.build_request(PipelineKind.TEXT_TO_IMAGE, prompt="a fox", seed=1, width=64, height=64)
        assert isinstance(adapter.run(request), ImageOutput)
        assert adapter.weights_sha256() != sdxl.weights_sha256()  # other tokenizer files, another hash
    finally:
        adapter.unload()


def test_a_folder_without_a_tokenizer_in_either_format_names_both(tmp_path: Path, weights_dir: Path) -> None:
    shutil.copytree(weights_dir / "sdxl-turbo", tmp_path / "sdxl-turbo")
    shutil.rmtree(tmp_path / "sdxl-turbo" / "tokenizer_2")
    with pytest.raises(WeightsMissing) as info:
        registry.resolve("sdxl-turbo", tmp_path).load("cpu")
    assert info.value.missing == ("tokenizer_2/vocab.json + tokenizer_2/merges.txt (or tokenizer_2/tokenizer.json)",)


def test_a_damaged_weights_file_is_a_load_error_naming_the_folder(tmp_path: Path, weights_dir: Path) -> None:
    shutil.copytree(weights_dir / "sdxl-turbo", tmp_path / "sdxl-turbo")
    (tmp_path / "sdxl-turbo" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=str(tmp_path / "sdxl-turbo")):
        registry.resolve("sdxl-turbo", tmp_path).load("cpu")


def test_svd_xt_loads_a_saved_folder_and_makes_a_video(weights_dir: Path) -> None:
    adapter = registry.resolve("svd-xt", weights_dir)
    adapter.load("cpu")
    try:
        folder = weights_dir / "svd-xt"
        assert adapter.weights_sha256() == hash_weight_files(folder, diffusers_weight_files(folder, None))
        image = encode_png_array(np.full((64, 64, 3), 128, dtype=np.uint8))
        request = adapter.spec.build_request(
            PipelineKind.IMAGE_TO_VIDEO, image=image, width=64, height=64, num_frames=4, num_inference_steps=2, seed=5
        )
        out = adapter.run(request)
        assert isinstance(out, VideoOutput) and (out.width, out.height, out.num_frames) == (64, 64, 4)
    finally:
        adapter.unload()


async def test_a_pool_serves_the_real_preset_from_its_weights_dir(weights_dir: Path) -> None:
    config = PoolConfig(serve=("sdxl-turbo",), pinned=("sdxl-turbo",), device="cpu", weights_dir=weights_dir)
    async with open_model_pool(config) as pool:
        (status,) = pool.status()
        assert status.warm and not status.problem and status.weights_sha256
        request = registry.resolve("sdxl-turbo", weights_dir).spec.build_request(
            PipelineKind.TEXT_TO_IMAGE, prompt="a fox", seed=2, width=64, height=64
        )
        with trio.fail_after(120):
            out = await pool.run("sdxl-turbo", request)
        assert isinstance(out, ImageOutput) and (out.width, out.height) == (64, 64)
