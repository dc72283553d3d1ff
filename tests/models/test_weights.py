"""Weight hashing: file hashes with a sidecar cache, only the files diffusers would load."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lpnode.models.sd import SDXL_TURBO
from lpnode.models.weights import SIDECAR_NAME, diffusers_weight_files, hash_weight_files, locate_diffusers_weights


def _fake_repo(root: Path) -> Path:
    folder = root / "sdxl-turbo"
    index: dict[str, object] = {
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    index["vae"] = ["diffusers", "AutoencoderKL"]
    index["image_encoder"] = [None, None]
    for component in ("unet", "vae"):
        (folder / component).mkdir(parents=True)
        (folder / component / "config.json").write_text("{}")
        (folder / component / "diffusion_pytorch_model.safetensors").write_bytes(component.encode() * 100)
        (folder / component / "diffusion_pytorch_model.fp16.safetensors").write_bytes(component.encode() * 50)
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "sd_xl_turbo_1.0.safetensors").write_bytes(b"single-file checkpoint, not loaded")
    return folder


def test_only_loaded_files_count(tmp_path: Path) -> None:
    folder = _fake_repo(tmp_path)
    full = [p.relative_to(folder).as_posix() for p in diffusers_weight_files(folder, None)]
    assert full == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    half = [p.name for p in diffusers_weight_files(folder, "fp16")]
    assert "diffusion_pytorch_model.fp16.safetensors" in half
    assert "diffusion_pytorch_model.safetensors" not in half


def test_hash_is_cached_and_invalidated_by_changes(tmp_path: Path) -> None:
    folder = _fake_repo(tmp_path)
    files = diffusers_weight_files(folder, None)
    first = hash_weight_files(folder, files)
    assert (folder / SIDECAR_NAME).is_file()
    assert hash_weight_files(folder, files) == first
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(b"other weights")
    assert hash_weight_files(folder, files) != first


def test_a_stale_sidecar_entry_is_not_trusted(tmp_path: Path) -> None:
    folder = _fake_repo(tmp_path)
    files = diffusers_weight_files(folder, None)
    first = hash_weight_files(folder, files)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    st = unet.stat()
    unet.write_bytes(b"u" * st.st_size)  # same size; mtime restored below would fool a size-only cache
    os.utime(unet, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert hash_weight_files(folder, files) != first


def test_full_precision_is_preferred_when_both_variants_are_present(tmp_path: Path) -> None:
    _fake_repo(tmp_path)
    required = ("model_index.json", "unet/", "vae/")
    assert locate_diffusers_weights(SDXL_TURBO, tmp_path, required)[1] is None
    for p in (tmp_path / "sdxl-turbo").rglob("diffusion_pytorch_model.safetensors"):
        p.unlink()
    assert locate_diffusers_weights(SDXL_TURBO, tmp_path, required)[1] == "fp16"
