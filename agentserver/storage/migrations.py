"""Versioned schema files, one mechanism for both backends.

Each backend keeps its schema as files `NNNN_<name>.sql` in a `migrations/` folder of its
package (package data), applied in version order, each once, and recorded with its checksum in
the backend's `schema_migrations` table. The backend applies them under a lock (Postgres: an
advisory lock; SQLite: an exclusive write transaction), so processes starting together apply
each file once. This module only finds the files and plans what is left to apply; applying
is the backend's.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

logger = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_\-]+)\.sql$")


class MigrationError(RuntimeError):
    """The migration files or the database's record of them are inconsistent."""


@dataclass(frozen=True)
class Migration:
    version: str  # "0001"
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def load(package: str) -> list[Migration]:
    """The migration files of `package` (e.g. "agentserver.storage.postgres"), in version order,
    from its `migrations/` folder."""
    folder = resources.files(package).joinpath("migrations")
    found: dict[str, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        version, name = match.groups()
        if version in found:
            raise MigrationError(f"two migrations of {package} share version {version}")
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def pending(migrations: Iterable[Migration], applied: Mapping[str, str]) -> list[Migration]:
    """The migrations not yet applied, given `applied` (version -> checksum recorded). A file
    changed after it was applied is not applied again (a warning says so); a database that has
    versions this release does not know was migrated by a newer release: refuse to run on it."""
    migrations = list(migrations)
    known = {m.version for m in migrations}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        raise MigrationError(
            f"the database has schema version(s) {', '.join(newer)} that this release does not know: "
            "it was migrated by a newer release"
        )
    todo = []
    for migration in migrations:
        checksum = applied.get(migration.version)
        if checksum is None:
            todo.append(migration)
        elif checksum != migration.checksum:
            logger.warning("migration %s changed after it was applied; it is not applied again", migration.label)
    return todo


__all__ = ["Migration", "MigrationError", "load", "pending"]
