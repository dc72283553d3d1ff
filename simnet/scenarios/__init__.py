"""Ready scenario files (TOML) for ``python -m lpnode.simnet run``; :func:`path` finds one by name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def path(name: str) -> Path:
    """The bundled scenario ``name`` (``baseline``, ``churn``...); FileNotFoundError listing them."""
    found = HERE / f"{name.removesuffix('.toml')}.toml"
    if not found.exists():
        raise FileNotFoundError(f"no bundled scenario {name!r}; bundled: {', '.join(names())}")
    return found


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


__all__ = ["HERE", "names", "path"]
