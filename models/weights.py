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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

SIDECAR_NAME = ".lpnode-weights-sha256.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json", ".txt", ".model")
_CHUNK = 8 * 1024 * 1024


@contextlib.contextmanager
def tiny_init(seed: int) -> Iterator[None]:
    """Seeded module construction that leaves the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
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
