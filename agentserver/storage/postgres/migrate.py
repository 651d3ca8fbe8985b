"""Versioned schema migrations for the Postgres storage.

Migrations are the files `agentserver/storage/postgres/migrations/NNNN_<name>.sql` (package
data), found and planned by `agentserver.storage.migrations` (the mechanism shared with the
SQLite backend), applied in order, each in its own transaction, and recorded with their checksum
in `schema_migrations`. LangGraph's checkpointer and store keep their own migration tables;
their `setup()` runs right after ours.

Everything happens under one Postgres advisory lock, so many replicas may start at once: the
first applies what is missing, the others wait, then find nothing left to do. The lock is taken
with `pg_try_advisory_lock` in a loop rather than a blocking `pg_advisory_lock`: LangGraph's
setup builds indexes `CONCURRENTLY`, which waits for every open snapshot of the database, and a
replica blocked inside `pg_advisory_lock` holds one (an undetected deadlock).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import PoolClosed, PoolTimeout

from agentserver.errors import Unavailable
from agentserver.storage import migrations
from agentserver.storage.postgres.pool import (
    RETRY_ATTEMPTS,
    DictConnection,
    DictPool,
    acquire,
    connection_kwargs,
    describe,
    is_connection_error,
)

if TYPE_CHECKING:
    from langgraph.store.postgres.base import PostgresIndexConfig

logger = logging.getLogger(__name__)

# pg advisory lock key for schema changes ("agentsrv" in ASCII, a positive bigint).
MIGRATION_LOCK_KEY = 0x6167656E74737276
LOCK_TIMEOUT = 600.0
# The package whose `migrations/` folder holds this backend's schema files.
MIGRATIONS_PACKAGE = "agentserver.storage.postgres"

SQL_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SQL_APPLIED = "SELECT version, checksum FROM schema_migrations"
SQL_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
SQL_TRY_LOCK = "SELECT pg_try_advisory_lock(%s) AS locked"
SQL_UNLOCK = "SELECT pg_advisory_unlock(%s)"


def load_migrations() -> list[migrations.Migration]:
    """The Postgres migration files shipped with the package, in version order."""
    return migrations.load(MIGRATIONS_PACKAGE)


async def migrate(
    uri_or_pool: str | DictPool,
    *,
    store_index: PostgresIndexConfig | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[str]:
    """Bring the database schema up to date; return the versions applied by this call
    (empty if another replica, or an earlier start, already did it).

    `store_index` is LangGraph's store index config (vector search), if any. Raises
    `Unavailable` if the database cannot be reached, or the lock is not obtained within
    `lock_timeout` seconds.
    """
    last: BaseException | None = None
    for attempt in range(RETRY_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.1 * 2 ** (attempt - 1))
        try:
            if isinstance(uri_or_pool, str):
                # dict rows, like the pool's: connection_kwargs sets row_factory=dict_row
                conn = await DictConnection.connect(uri_or_pool, **connection_kwargs(uri_or_pool))
                try:
                    return await _migrate_on(conn, store_index, lock_timeout)
                finally:
                    await conn.close()
            pool = uri_or_pool
            try:
                conn = await acquire(pool)
            except PoolClosed as exc:
                raise Unavailable("The database connection pool is closed") from exc
            try:
                return await _migrate_on(conn, store_index, lock_timeout)
            finally:
                await pool.putconn(conn)
        except (PoolTimeout, TimeoutError) as exc:
            # The pool already waited (and retried connecting) for as long as it should.
            raise Unavailable(f"The database is unavailable: {describe(exc)}") from exc
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            last = exc
        logger.warning("migration attempt %d failed: %s", attempt + 1, last)
    raise Unavailable(f"The database is unavailable: {describe(last)}") from last


async def _migrate_on(conn: DictConnection, store_index: PostgresIndexConfig | None, lock_timeout: float) -> list[str]:
    restore_autocommit = not conn.autocommit
    if restore_autocommit:
        await conn.set_autocommit(True)
    try:
        await _lock(conn, lock_timeout)
        try:
            applied = await _apply(conn)
            await _langgraph_setup(conn, store_index)
            return applied
        finally:
            if not conn.closed:
                try:
                    await conn.execute(SQL_UNLOCK, (MIGRATION_LOCK_KEY,))
                except psycopg.Error as exc:  # the session ends soon anyway, freeing the lock
                    logger.warning("could not release the migration lock: %s", exc)
    finally:
        if restore_autocommit and not conn.closed:
            await conn.set_autocommit(False)


async def _lock(conn: DictConnection, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    waited = False
    while True:
        cur = await conn.execute(SQL_TRY_LOCK, (MIGRATION_LOCK_KEY,))
        row = await cur.fetchone()
        assert row is not None  # a SELECT without FROM: always one row
        locked = row["locked"] if isinstance(row, dict) else row[0]
        if locked:
            if waited:
                logger.info("migration lock acquired")
            return
        if loop.time() >= deadline:
            raise Unavailable(f"Timed out after {timeout:.0f}s waiting for the schema migration lock")
        if not waited:
            logger.info("another process is migrating the database; waiting")
            waited = True
        # Not a hot path: only replicas starting together wait here, for a few seconds.
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.2)


async def _apply(conn: DictConnection) -> list[str]:
    await conn.execute(SQL_CREATE_MIGRATIONS_TABLE)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SQL_APPLIED)
        done = {row["version"]: row["checksum"] for row in await cur.fetchall()}
    applied: list[str] = []
    for migration in migrations.pending(load_migrations(), done):
        logger.info("applying migration %s", migration.label)
        async with conn.transaction():
            # A script of several statements: simple query protocol, never prepared.
            await conn.execute(migration.sql, prepare=False)
            await conn.execute(SQL_RECORD, (migration.version, migration.name, migration.checksum))
        applied.append(migration.version)
    return applied


async def _langgraph_setup(conn: DictConnection, store_index: PostgresIndexConfig | None) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.store.postgres.aio import AsyncPostgresStore

    # Autocommit connection, outside any transaction: their migrations build indexes
    # CONCURRENTLY.
    await AsyncPostgresSaver(conn).setup()
    await AsyncPostgresStore(conn, index=store_index).setup()
