"""Weight hashes and tiny random weights.

The weights hash is what an advert promises and a receipt signs, so two nodes
holding the same weights must compute the same value:

* real presets hash the weight *files* (``hash_weight_files``): sha256 over
  each file's relative path and contents, in sorted path order. Hashing ~7 GB
  takes tens of seconds, so results are cached in a sidecar JSON keyed by each
  file's size and mtime; a changed file invalidates the cache.
* tiny presets hash their *state dicts* (``hash_modules``): component name,
  tensor name, dtype, shape and raw bytes, in sorted order. Built from a fixed
  seed with ``tiny_init`` these are identical on every build with the same torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import ModelSpec
from .errors import WeightsMissing

SIDECAR_NAME = ".lpnode-weights-sha256.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json", ".txt", ".model")
_CHUNK = 8 * 1024 * 1024


_TINY_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def tiny_init(seed: int) -> Iterator[None]:
    """Seeded module construction that leaves the caller's global RNG untouched.

    The global RNG is process-wide, so two threads building tiny modules at once
    (the pool loads one model while hashing another) would interleave draws and
    change the weights; the lock makes each build see only its own seed.
    """
    with _TINY_INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def hash_modules(modules: Mapping[str, torch.nn.Module]) -> str:
    """sha256 over every state-dict tensor in canonical order (component, then tensor name)."""
    digest = hashlib.sha256()
    for component in sorted(modules):
        state = modules[component].state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            header = f"{component}.{name}|{tensor.dtype}|{tuple(tensor.shape)}\n"
            digest.update(header.encode())
            # view as bytes: numpy has no bfloat16, and this never copies more than once
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_files(folder: Path, suffixes: Sequence[str] = WEIGHT_SUFFIXES) -> list[Path]:
    """Files under ``folder`` that define the model, sorted by relative path.

    Only one serialization per component counts: when a ``.safetensors`` file sits
    beside a ``.bin`` of the same stem, diffusers loads the safetensors, so the
    ``.bin`` is ignored (a folder copied with both formats hashes like one without).
    """
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in suffixes
        and p.name != SIDECAR_NAME
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    present = {p.with_suffix("") for p in files if p.suffix == ".safetensors"}
    files = [p for p in files if not (p.suffix == ".bin" and p.with_suffix("") in present)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def hash_weight_files(folder: Path, files: Sequence[Path] | None = None) -> str:
    """sha256 over (relative path, sha256 of contents) of each weight file, with a sidecar cache."""
    chosen = weight_files(folder) if files is None else sorted(files)
    sidecar = folder / SIDECAR_NAME
    cache = _read_sidecar(sidecar)
    fresh: dict[str, dict[str, object]] = {}
    digest = hashlib.sha256()
    for path in chosen:
        rel = path.relative_to(folder).as_posix()
        st = path.stat()
        entry = cache.get(rel)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            file_hash = str(entry["sha256"])
        else:
            file_hash = _file_sha256(path)
        fresh[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_hash}
        digest.update(f"{rel}\0{file_hash}\n".encode())
    if fresh != cache:
        _write_sidecar(sidecar, fresh)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sidecar(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(path: Path, data: dict[str, dict[str, object]]) -> None:
    # A read-only weights folder (shared mount) is fine: we just hash again next time.
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def diffusers_component_dirs(folder: Path) -> list[str]:
    """Component folders named in a diffusers ``model_index.json`` (``unet``, ``vae``, ...)."""
    index = json.loads((folder / "model_index.json").read_text())
    return sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None)


def file_variant(path: Path) -> str | None:
    """``fp16`` for ``diffusion_pytorch_model.fp16.safetensors``, None without a variant."""
    parts = path.name.split(".")
    if len(parts) < 3 or parts[-1] not in ("safetensors", "bin"):
        return None
    return parts[-2].split("-")[0]  # sharded: "fp16-00001-of-00002"


def diffusers_weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The files ``from_pretrained(folder, variant=variant)`` reads.

    Repositories also carry single-file checkpoints at the top level and other
    variants beside the chosen one; hashing those would make the hash depend on
    what else happens to sit in the folder, so only loaded files count.
    """
    chosen = [folder / "model_index.json"]
    for component in diffusers_component_dirs(folder):
        for path in weight_files(folder / component):
            is_weights = path.suffix in (".safetensors", ".bin")
            if not is_weights or file_variant(path) == variant:
                chosen.append(path)
    return sorted(chosen, key=lambda p: p.relative_to(folder).as_posix())


@dataclass(frozen=True)
class OneOf:
    """Files of which any one set will do, e.g. a tokenizer saved as ``vocab.json`` + ``merges.txt``
    (the published repositories) or as one ``tokenizer.json`` (what ``save_pretrained`` writes today)."""

    choices: tuple[tuple[str, ...], ...]

    def describe(self) -> str:
        first, *rest = (" + ".join(choice) for choice in self.choices)
        return first + "".join(f" (or {other})" for other in rest)


def tokenizer_files(folder: str) -> OneOf:
    """A CLIP tokenizer folder in either format transformers loads."""
    return OneOf(((f"{folder}/vocab.json", f"{folder}/merges.txt"), (f"{folder}/tokenizer.json",)))


def locate_diffusers_weights(
    spec: ModelSpec, weights_dir: Path | None, required: Sequence[str | OneOf]
) -> tuple[Path, str | None]:
    """The preset's folder and the variant to load, or WeightsMissing listing what is absent.

    ``required`` are paths relative to the folder, or :class:`OneOf` them; a component folder entry
    (ending in ``/``) needs at least one weights file of some variant. The
    full-precision files win when both are present: fp16 ones are only a
    smaller download of the same model, and the hash must not flip between them.
    """
    # Without a configured directory, still name every file, under a placeholder root.
    root = weights_dir if weights_dir is not None else Path("<weights_dir>")
    folder = root / (spec.weights_subdir or spec.name)
    missing: list[str] = []
    for rel in required:
        if isinstance(rel, OneOf):
            if not any(all((folder / name).is_file() for name in choice) for choice in rel.choices):
                missing.append(rel.describe())
            continue
        path = folder / rel
        if rel.endswith("/"):
            has_weights = path.is_dir() and any(
                p.suffix in (".safetensors", ".bin") for p in path.iterdir() if p.is_file()
            )
            if not has_weights:
                missing.append(rel + "*.safetensors (weights; .bin also accepted)")
        elif not path.is_file():
            missing.append(rel)
    if missing:
        raise WeightsMissing(spec.name, folder, tuple(missing), spec.source)
    unet_like = [p for c in diffusers_component_dirs(folder) for p in weight_files(folder / c)]
    variants = {file_variant(p) for p in unet_like if p.suffix in (".safetensors", ".bin")}
    variant = None if None in variants or not variants else sorted(v for v in variants if v)[0]
    return folder, variant
