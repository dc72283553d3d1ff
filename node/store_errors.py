"""The store's errors, shared by :mod:`lpnode.node.store` and the modules it is built from.

    LpnodeError
    └── StoreError               the database cannot be opened, migrated, read or written
        ├── SchemaTooNew         a newer lpnode wrote this schema: refuse to touch it
        └── ConstraintViolation  a write broke a UNIQUE, FOREIGN KEY, CHECK or NOT NULL constraint

Import them from :mod:`lpnode.node.store`; they live here so that its connection and migration
modules can raise them without importing the store.
"""

from __future__ import annotations

from pathlib import Path

from lpnode.protocol.errors import LpnodeError

__all__ = ["ConstraintViolation", "SchemaTooNew", "StoreError"]


class StoreError(LpnodeError):
    """The database cannot be opened, migrated, read or written."""


class SchemaTooNew(StoreError):
    """The database holds a newer schema for ``component`` than this code knows: refuse to touch it."""

    def __init__(self, path: Path, component: str, found: int, known: int) -> None:
        super().__init__(
            f"{path}: schema of {component!r} is at version {found}, this lpnode knows up to {known}; "
            "upgrade lpnode or use another data directory"
        )
        self.component = component
        self.found = found
        self.known = known


class ConstraintViolation(StoreError):
    """A write broke a UNIQUE, FOREIGN KEY, CHECK or NOT NULL constraint (sqlite3.IntegrityError)."""
