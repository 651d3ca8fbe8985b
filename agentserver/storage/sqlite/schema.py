"""The schema of `agentserver.sqlite`: the versioned files of `migrations/`, applied in order,
each once, and recorded in `schema_migrations(version, name, checksum, applied_at)`.

`migrate(conn)` runs at every start. Each pending file (`agentserver.storage.migrations.pending`)
is applied in its own `BEGIN IMMEDIATE` transaction, which reads the record, runs the file and
records it: SQLite's write lock is held from the read to the commit, so processes opening the
same file together apply each file once (`agentserver dev` also flocks its data directory). A
failing file rolls back alone; the ones before it stay applied.

Databases made before the versioned files (release 0.1) have the tables but no record; their
`PRAGMA user_version` says which schema the release left (1, or 2 = everything through
`0002`). Those files are recorded without being run (a baseline); files past it are applied
as usual. After migrating, `user_version` is the number of the last file, so that a release
before versioned files (which refuses a `user_version` above its 2) refuses a database
migrated past what it knows.
"""

from __future__ import annotations

import logging
import sqlite3

from agentserver.storage import migrations
from agentserver.storage.migrations import Migration, MigrationError
from agentserver.storage.sqlite.codec import ts
from agentserver.utils import now

logger = logging.getLogger(__name__)

PACKAGE = "agentserver.storage.sqlite"

_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)"""

# `PRAGMA user_version` of a release-0.1 database -> the last file its schema already has.
_LEGACY_BASELINE = {2: "0002"}


def statements(script: str) -> list[str]:
    """The statements of a migration file, for `execute` one by one (`executescript` would
    commit the transaction holding the lock). Trigger bodies stay whole."""
    out: list[str] = []
    start = 0
    for i, ch in enumerate(script):
        if ch == ";" and sqlite3.complete_statement(script[start : i + 1]):
            out.append(script[start : i + 1])
            start = i + 1
    rest = "\n".join(line for line in script[start:].splitlines() if line.strip() and not line.strip().startswith("--"))
    if rest:
        raise MigrationError(f"unterminated statement at the end of a migration: {rest[:80]!r}")
    return out


def _baseline(conn: sqlite3.Connection, files: list[Migration]) -> list[Migration]:
    """The files a release-0.1 database already reflects (nothing for a new database)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "assistants" not in tables:
        return []
    (legacy,) = conn.execute("PRAGMA user_version").fetchone()
    if legacy > max(_LEGACY_BASELINE):
        raise MigrationError(
            f"the database has schema version {legacy} but no record of its migrations: it was made by a newer release"
        )
    last = _LEGACY_BASELINE.get(legacy)
    if last is None or not {"thread_meta", "thread_meta_counts"} <= tables:
        return []  # schema 1: the files add and fill what it lacks
    return [m for m in files if m.version <= last]


def _record(conn: sqlite3.Connection, m: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
        (m.version, m.name, m.checksum, ts(now())),
    )


def _step(conn: sqlite3.Connection, files: list[Migration]) -> Migration | None:
    """In one write transaction (the lock): read the record, baseline a release-0.1 database,
    apply the first pending file and record it. None when nothing is pending."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_LEDGER)
        applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        if not applied:
            baseline = _baseline(conn, files)
            for m in baseline:
                _record(conn, m)
                applied[m.version] = m.checksum
            if baseline:
                logger.info("baselined %s (made before versioned migrations)", ", ".join(m.label for m in baseline))
        todo = migrations.pending(files, applied)
        step = todo[0] if todo else None
        if step is not None:
            for statement in statements(step.sql):
                conn.execute(statement)
            _record(conn, step)
            logger.info("applied migration %s", step.label)
            applied[step.version] = step.checksum
        latest = int(max(applied, default="0"))
        if conn.execute("PRAGMA user_version").fetchone() != (latest,):
            conn.execute(f"PRAGMA user_version = {latest}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return step


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Bring the database to the latest schema, each pending file in its own transaction under
    the write lock; return the labels of the files applied."""
    files = migrations.load(PACKAGE)
    done: list[str] = []
    while (step := _step(conn, files)) is not None:
        done.append(step.label)
    return done
