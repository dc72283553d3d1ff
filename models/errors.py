"""Errors raised by model adapters.

Every error here derives from :class:`ModelError`, itself a
:class:`lpnode.protocol.errors.LpnodeError`, so the node maps the whole tree to
wire errors and RPC status codes in one place.

    LpnodeError
    └── ModelError                    anything a model adapter refuses or fails at
        ├── UnknownModel              no preset of that name
        ├── UnsupportedPipeline       the model does not serve that pipeline kind
        ├── ParameterError            a request parameter is out of bounds (before any GPU work)
        ├── WeightsMissing            a real preset's weight folder or files are absent
        ├── ModelLoadError            the weights exist but cannot be loaded
        ├── NotLoaded                 run() before load(), or after unload()
        ├── OutOfMemory               the device ran out of memory mid-run
        ├── Cancelled                 the cancel token fired; raised between steps
        └── PoolError                 the warm pool (``lpnode.models.pool``) cannot take the job
            ├── InsufficientVram      the model can never fit this node's memory budget
            ├── PoolBusy              it would fit, but busy or pinned models hold the memory now
            ├── InferenceFailed       the adapter failed in an unexpected way (a bug); the pool stays up
            └── PoolClosed            the pool is shutting down
"""

from __future__ import annotations

from pathlib import Path

from lpnode.protocol.errors import LpnodeError


class ModelError(LpnodeError):
    """Root of every error a model adapter raises on purpose."""


class UnknownModel(ModelError):
    """No preset of that name is registered."""

    def __init__(self, name: str, known: tuple[str, ...] = ()) -> None:
        hint = f"; known presets: {', '.join(known)}" if known else ""
        super().__init__(f"unknown model preset {name!r}{hint}")
        self.name = name


class UnsupportedPipeline(ModelError):
    """The model exists but does not serve the requested pipeline kind."""


class ParameterError(ModelError):
    """A request parameter is outside what the pipeline or model accepts.

    ``field`` is the request field's name, ``value`` what was given and
    ``allowed`` a short human description of the accepted range, so the node can
    forward a precise message to the requester.
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        shown = repr(value)
        if len(shown) > 80:  # prompts can be long; the message must stay readable
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown} is not allowed: expected {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


class WeightsMissing(ModelError):
    """A real preset's weights are not on disk; the message says what to put where."""

    def __init__(self, preset: str, folder: Path, missing: tuple[str, ...], source: str) -> None:
        listed = "\n".join(f"  {folder / m}" for m in missing)
        super().__init__(
            f"weights for preset {preset!r} are missing. Put the files of the Hugging Face repository "
            f"{source!r} (diffusers layout) into {folder}; not found:\n{listed}\n"
            "lpnode never downloads weights: copy them there yourself, for example with\n"
            f"  huggingface-cli download {source} --local-dir {folder}\n"
            "on a machine with access."
        )
        self.preset = preset
        self.folder = folder
        self.missing = missing


class ModelLoadError(ModelError):
    """The weight files exist but loading them failed (corrupt, wrong layout, wrong version)."""


class NotLoaded(ModelError):
    """The adapter was asked to run while its weights are not on a device."""


class OutOfMemory(ModelError):
    """The device ran out of memory during a run; the adapter stays usable."""


class Cancelled(ModelError):
    """The cancel token fired; raised between denoising steps (or frames)."""


class PoolError(ModelError):
    """The warm pool cannot take or finish a job (raised by ``lpnode.models.pool``)."""


class InsufficientVram(PoolError):
    """The model's memory need exceeds the pool's whole budget: this node can never serve it."""

    def __init__(self, model: str, need_bytes: int, budget_bytes: int) -> None:
        super().__init__(
            f"{model} needs ~{need_bytes / 2**30:.2f} GiB but the pool's budget is {budget_bytes / 2**30:.2f} GiB"
        )
        self.model = model
        self.need_bytes = need_bytes
        self.budget_bytes = budget_bytes


class PoolBusy(PoolError):
    """The model would fit, but pinned or busy models hold the memory now; retry later."""


class InferenceFailed(PoolError):
    """An adapter raised something outside the ModelError tree (a bug); the job is lost, the pool is not."""


class PoolClosed(PoolError):
    """The pool is closing or closed; no new jobs."""
