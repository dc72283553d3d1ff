"""Cached ``device`` / ``dtype`` answers for loaded diffusers models and pipelines.

diffusers works out where a model lives by walking every submodule, each time it is
asked: ``model.device`` / ``model.dtype`` look for a group-offloading or
layerwise-casting hook on each submodule, and a pipeline's ``_execution_device``
walks every module of every component twice (group offloading, then accelerate
hooks). A pipeline call asks several times. The SDXL UNet alone has 1,930
submodules, ~8 ms a walk on the dev box; in a profile of the compiled
SDXL-Turbo-size call on an H100 host, 16 ms of a 50 ms device stage passed in these
walks with the GPU idle (docs/benchmarks.md, Models).

A node never offloads or casts layer by layer, so the answers change only when the
object is moved. :func:`cache_placement` gives one loaded model or pipeline a
subclass of its own class that remembers the answers after the first walk and
forgets them whenever the object is moved or cast: ``nn.Module._apply`` is what a
model's ``to``, ``cuda`` and ``half`` go through, ``DiffusionPipeline.to`` what a
pipeline's does. (A pipeline does not notice a component moved on its own; the
adapters only ever move whole pipelines.) Nothing else changes: the class keeps its
name and config, and :func:`uncached_placement` gives back the original class
(benchmarks use it to time what a plain diffusers runner pays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

__all__ = ["cache_placement", "uncached_placement"]

_CACHE = "_lpnode_placement"  # instance attribute: {property name: answer}
_ORIGINAL = "_lpnode_uncached_class"  # class attribute of a subclass made here: the class it stands in for
# What to remember for each kind of object, and the method every move goes through.
_CACHED = (
    (ModelMixin, ("device", "dtype"), "_apply"),
    (DiffusionPipeline, ("device", "_execution_device"), "to"),
)
_subclasses: dict[type, type] = {}


def cache_placement(obj: object) -> None:
    """Make ``obj``'s device/dtype answers cheap if it is a diffusers model or pipeline; idempotent."""
    cls = type(obj)
    if hasattr(cls, _ORIGINAL):
        return
    for base, names, mover in _CACHED:
        if isinstance(obj, base):
            obj.__class__ = _cached_subclass(cls, names, mover)
            return


@contextmanager
def uncached_placement(*objects: object) -> Iterator[None]:
    """Run a block with the objects' original classes (diffusers' own walks)."""
    swapped = [(obj, type(obj)) for obj in objects if hasattr(type(obj), _ORIGINAL)]
    for obj, cls in swapped:
        obj.__class__ = getattr(cls, _ORIGINAL)
    try:
        yield
    finally:
        for obj, cls in swapped:
            obj.__class__ = cls


def _cached_subclass(cls: type, names: tuple[str, ...], mover: str) -> type:
    if cls not in _subclasses:
        namespace: dict[str, Any] = {_ORIGINAL: cls, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        namespace |= {name: property(_remembered(cls, name)) for name in names}
        namespace[mover] = _forgetting(cls, mover)
        _subclasses[cls] = type(cls.__name__, (cls,), namespace)
    return _subclasses[cls]


def _remembered(cls: Any, name: str) -> Callable[[Any], Any]:
    walk = getattr(cls, name).fget

    def get(self: Any) -> Any:
        # vars(), not attribute access: DiffusionPipeline and nn.Module both hook attribute setting.
        cache: dict[str, Any] = vars(self).setdefault(_CACHE, {})
        if name not in cache:
            cache[name] = walk(self)
        return cache[name]

    return get


def _forgetting(cls: Any, mover: str) -> Callable[..., Any]:
    move = getattr(cls, mover)

    def forget_then_move(self: Any, *args: Any, **kwargs: Any) -> Any:
        vars(self).pop(_CACHE, None)
        return move(self, *args, **kwargs)

    return forget_then_move
