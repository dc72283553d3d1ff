"""Model presets by name.

A preset is a :class:`~lpnode.models.base.ModelSpec` plus the adapter class
that serves it. Each pipeline module exports ``PRESETS``; this module collects
them. ``resolve`` is cheap: it reads no weights, so the node can list and
advertise models before loading any.

    adapter = resolve("sdxl-turbo", weights_dir=Path("~/.local/share/lpnode/weights"))
    adapter.load("cuda:0")

Real presets expect ``<weights_dir>/<spec.weights_subdir>/`` in diffusers layout.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .base import ModelAdapter, ModelSpec, PipelineKind, Preset
from .errors import ModelError, UnknownModel

# Modules under lpnode.models that export PRESETS. Add a new pipeline module here.
_PRESET_MODULES = ("sd", "svd", "upscale", "interpolate")


@functools.cache
def presets() -> Mapping[str, Preset]:
    """Every preset by name (imports the pipeline modules on first use)."""
    found: dict[str, Preset] = {}
    for module_name in _PRESET_MODULES:
        module = importlib.import_module(f"{__package__}.{module_name}")
        for preset in module.PRESETS:
            if preset.spec.name in found:
                raise RuntimeError(f"preset {preset.spec.name!r} is defined twice")
            found[preset.spec.name] = preset
    return dict(sorted(found.items()))


def spec(name: str) -> ModelSpec:
    """The spec of preset ``name``; UnknownModel if there is none."""
    try:
        return presets()[name].spec
    except KeyError:
        raise UnknownModel(name, tuple(presets())) from None


def resolve(name: str, weights_dir: Path | None = None) -> ModelAdapter:
    """A fresh, unloaded adapter for preset ``name``. Tiny presets need no ``weights_dir``."""
    try:
        preset = presets()[name]
    except KeyError:
        raise UnknownModel(name, tuple(presets())) from None
    return preset.factory(preset.spec, weights_dir)


@dataclass(frozen=True)
class ModelListing:
    """One row of ``lpnode models``."""

    name: str
    model_id: str
    family: str
    pipelines: tuple[PipelineKind, ...]
    weights_sha256: str | None  # None when the weights are not on disk
    vram_bytes: int  # estimate, fp16
    tiny: bool
    problem: str = ""  # why the weights hash is missing (the WeightsMissing message)


def list_models(weights_dir: Path | None, include_tiny: bool = True) -> list[ModelListing]:
    """Every preset with its weights hash where the weights are present.

    Hashing real weights reads every file once (then the sidecar cache answers),
    so the first listing after a download takes a while.
    """
    rows: list[ModelListing] = []
    for name, preset in presets().items():
        s = preset.spec
        if s.tiny and not include_tiny:
            continue
        digest: str | None = None
        problem = ""
        try:
            digest = preset.factory(s, weights_dir).weights_sha256()
        except ModelError as exc:
            problem = str(exc)
        rows.append(
            ModelListing(
                name=name,
                model_id=s.model_id,
                family=s.family,
                pipelines=tuple(sorted(s.pipelines)),
                weights_sha256=digest,
                vram_bytes=s.vram_bytes,
                tiny=s.tiny,
                problem=problem,
            )
        )
    return rows
