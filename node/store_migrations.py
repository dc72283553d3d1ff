"""The store's schema migrations: versioned schemas per component, applied when the store opens.

Each component (``"jobs"``, ``"reputation"``, ...) owns a line of :class:`Migration` s numbered
1, 2, 3, ...; ``schema_versions`` records how far each component's schema is. Opening applies the
pending ones, each in its own transaction, and refuses a database whose schema for a component is
newer than this code (:class:`~lpnode.node.store_errors.SchemaTooNew`): an older binary must not
write into a newer layout. Import :class:`Migration` from :mod:`lpnode.node.store`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .store_errors import SchemaTooNew, StoreError

if TYPE_CHECKING:
    from .store import Store  # _migrate runs on an open Store; the store imports this module

__all__ = ["Migration"]

_VERSIONS = "SELECT component, version FROM schema_versions"
_COMPONENT = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class Migration:
    """One step of one component's schema: its ``statements`` run in one transaction.

    Versions of a component start at 1 and have no gaps; a released migration is never edited,
    a change is a new version. Statements that SQLite refuses inside a transaction
    (``VACUUM``, ``PRAGMA journal_mode``) do not belong here.
    """

    component: str  # who owns the tables, e.g. "jobs", "reputation"
    version: int  # 1, 2, 3, ... per component
    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _COMPONENT.fullmatch(self.component):
            raise ValueError(f"migration component {self.component!r} is not a short lowercase identifier")
        if self.version < 1:
            raise ValueError(f"migration {self.component} version {self.version}: versions start at 1")
        if not self.statements:
            raise ValueError(f"migration {self.component} v{self.version} has no statements")


def _plan(migrations: Sequence[Migration]) -> list[Migration]:
    """Migrations in the order to apply: components in order of first appearance, versions ascending."""
    by_component: dict[str, dict[int, Migration]] = {}
    for migration in migrations:
        versions = by_component.setdefault(migration.component, {})
        if migration.version in versions:
            raise ValueError(f"migration {migration.component} v{migration.version} given twice")
        versions[migration.version] = migration
    plan: list[Migration] = []
    for component, versions in by_component.items():
        if sorted(versions) != list(range(1, len(versions) + 1)):
            raise ValueError(f"migrations of {component!r} must be numbered 1..n without gaps: {sorted(versions)}")
        plan.extend(versions[v] for v in sorted(versions))
    return plan


async def _migrate(store: Store, plan: list[Migration]) -> None:
    known: dict[str, int] = {}
    for migration in plan:
        known[migration.component] = max(known.get(migration.component, 0), migration.version)
    async with store.transaction() as tx:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL CHECK (version >= 1)) WITHOUT ROWID"
        )
        found = {str(row["component"]): int(row["version"]) for row in await tx.fetch_all(_VERSIONS)}
    for component, version in found.items():
        if component in known and version > known[component]:
            raise SchemaTooNew(store.path, component, version, known[component])
    for migration in plan:
        if found.get(migration.component, 0) >= migration.version:
            continue
        try:
            async with store.transaction() as tx:
                # Re-read under the write lock: another process may have migrated meanwhile.
                row = await tx.fetch_one(
                    "SELECT version FROM schema_versions WHERE component = ?", (migration.component,)
                )
                if row is not None and int(row["version"]) >= migration.version:
                    continue
                for statement in migration.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                    " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (migration.component, migration.version),
                )
        except StoreError as exc:
            raise StoreError(
                f"{store.path}: migration {migration.component} v{migration.version} failed: {exc}"
            ) from exc
