"""Reading published weight files and fingerprinting weights.

Shared by the learned single-pass pipelines (upscaling, frame interpolation).
Every file is read with ``weights_only=True``: a weight file comes from
outside and must never run code on load.

A real preset's weights hash is :func:`file_sha256` of its one published
file, so it can be checked with ``sha256sum`` against any other copy; tiny
presets hash their state dict with :func:`lpnode.models.weights.hash_modules`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import ModelError, ModelLoadError, WeightsMissing

_CHUNK_BYTES = 1 << 20


class StateDictError(ValueError):
    """A weight file or dict does not have the layout a network expects.

    Raised by the network-level helpers (``rrdbnet``, ``ifnet``), which stay
    usable without the adapters; :func:`read_published` and
    :func:`load_published` turn it into ``ModelLoadError``.
    """


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, object]:
    """Load a torch pickle safely; the caller unwraps and checks the layout."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch raises many types for a corrupt or unsafe pickle
        raise StateDictError(f"{path}: not a readable torch weight file ({exc})") from exc
    if not isinstance(loaded, Mapping):
        raise StateDictError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
    return {str(k): v for k, v in loaded.items()}


def only_tensors(state: Mapping[str, object], source: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise StateDictError(f"{source}: entry {key!r} is {type(value).__name__}, not a tensor")
        tensors[key] = value
    return tensors


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from every key when all keys carry it (DataParallel's ``module.``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def check_and_load(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignorable_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module`` strictly, with an error that says what differs.

    ``load_state_dict(strict=True)`` would also catch these, but its message
    lists every key; a node operator needs the first few and the file name.
    Keys under ``ignorable_prefixes`` (training-only heads some files carry)
    are dropped; anything else unexpected is an error, because a file with
    extra weights is not the network we advertise.
    """
    ignorable = tuple(ignorable_prefixes)
    expected = module.state_dict()
    kept = {k: v for k, v in state.items() if not (ignorable and k.startswith(ignorable))}
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
    for key in sorted(set(expected) & set(kept)):
        if tuple(expected[key].shape) != tuple(kept[key].shape):
            problems.append(f"{key} has shape {tuple(kept[key].shape)}, expected {tuple(expected[key].shape)}")
            break
    if problems:
        raise StateDictError(f"{source}: weights do not match the architecture: {'; '.join(problems)}")
    # assign=True adopts the loaded tensors instead of copying into fresh ones:
    # half the peak memory, and the module is moved to its device right after.
    module.load_state_dict(kept, strict=True, assign=True)


# --- the adapter side: locating a published file, mapping errors ---------------------------


class WeightFileMissing(WeightsMissing):
    """A single-file preset's weight file is absent.

    ``WeightsMissing``'s own message describes a Hugging Face repository in
    diffusers layout; these presets are one ``.pth``/``.pkl`` file from a
    GitHub release, so the message names that file and where it comes from.
    Still a ``WeightsMissing`` for every caller.
    """

    def __init__(self, preset: str, folder: Path, filename: str, source: str) -> None:
        ModelError.__init__(
            self,
            f"weights for preset {preset!r} are missing: expected the file {folder / filename}\n"
            f"  ({filename}: {source}).\n"
            "lpnode never downloads weights: copy the file there yourself.",
        )
        self.preset = preset
        self.folder = folder
        self.missing = (filename,)


def locate_weight_file(preset: str, weights_dir: Path | None, subdir: str, filename: str, source: str) -> Path:
    """``weights_dir / subdir / filename``, or WeightFileMissing naming that exact path."""
    folder = (weights_dir if weights_dir is not None else Path("<weights_dir>")) / subdir
    path = folder / filename
    if weights_dir is None or not path.is_file():
        raise WeightFileMissing(preset, folder, filename, source)
    return path


def load_published(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    ignorable_prefixes: Iterable[str] = (),
    expected: str = "",
) -> None:
    """``check_and_load`` with layout problems reported as ModelLoadError.

    ``expected`` names the published version the preset needs, appended to the
    message so an operator holding another release knows what to fetch.
    """
    try:
        check_and_load(module, state, str(path), ignorable_prefixes)
    except StateDictError as exc:
        hint = f" (this preset needs {expected})" if expected else ""
        raise ModelLoadError(f"{exc}{hint}") from exc


def read_published(path: Path) -> dict[str, object]:
    """``read_state_dict`` with unreadable files reported as ModelLoadError."""
    try:
        return read_state_dict(path)
    except StateDictError as exc:
        raise ModelLoadError(str(exc)) from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc})") from exc
