"""The Postgres storage (scaled shape): assistants, threads, runs (the queue), checkpoints, store.

One connection pool per event loop (see `pg_pool`), shared by our queries and LangGraph's
`AsyncPostgresSaver` / `AsyncPostgresStore`. Every SQL statement of the server lives in this
module (schema: `migrations/*.sql`).

Concurrency rules:
  * Lock order is always thread row, then run rows: `run_create`, `run_finish`, `run_delete`,
    `fail_exhausted` and thread deletes lock the thread first; `claim_runs`, `renew_leases` and
    `run_requeue` touch run rows only and never change a thread.
  * `run_create` locks the thread row (`FOR UPDATE`), so the `reject` check and the insert are
    atomic against every other create and finish on that thread.
  * `claim_runs` is one statement (`FOR UPDATE SKIP LOCKED`). A thread's claimable run is its
    running run if that one's lease expired, otherwise, when nothing of it runs, its oldest
    pending run. The partial unique index `runs_one_running_per_thread` enforces "one running
    run per thread" in the database whatever a worker believes.
  * Fencing: `run_finish`, `run_requeue` and `renew_leases` only write while the lease id matches.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from psycopg import AsyncConnection, AsyncCursor, errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agentserver.errors import Conflict, NotFound
from agentserver.storage.base import (
    AssistantQuery,
    Claimed,
    CreateRunResult,
    Record,
    RunEnd,
    Storage,
    ThreadQuery,
)
from agentserver.storage.migrate import migrate
from agentserver.storage.pg_pool import (
    DEFAULT_POOL_MAX_SIZE,
    PoolHealth,
    create_pool,
    run_with_retries,
)
from agentserver.storage.pg_pool import connection as pooled_connection
from agentserver.utils import dumps

T = TypeVar("T")

REJECT_MESSAGE = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
)
UNIQUE_RUNNING_INDEX = "runs_one_running_per_thread"

# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------

ASSISTANT_COLS = (
    "assistant_id, graph_id, config, context, metadata, name, description, version, "
    "created_at, updated_at"
)
THREAD_COLS = (
    'thread_id, created_at, updated_at, state_updated_at, metadata, status, config, "values", '
    "interrupts, error, ttl_strategy, ttl_minutes, expires_at"
)
RUN_COLS = (
    "run_id, thread_id, assistant_id, metadata, status, kwargs, multitask_strategy, created_at, "
    "updated_at, attempt, available_at, lease_owner, lease_id, lease_expires_at"
)
RUN_COLS_R = ", ".join(f"runs.{c.strip()}" for c in RUN_COLS.split(","))

# A thread was touched: bump updated_at and push its TTL expiry (TTL counts from the last update).
TOUCH_THREAD = (
    "updated_at = now(), expires_at = CASE WHEN threads.ttl_minutes IS NULL THEN NULL "
    "ELSE now() + threads.ttl_minutes * interval '1 minute' END"
)

# ---- assistants -----------------------------------------------------------------------------
SQL_ASSISTANT_INSERT = f"""
WITH a AS (
    INSERT INTO assistants ({ASSISTANT_COLS})
    VALUES (%(assistant_id)s, %(graph_id)s, %(config)s, %(context)s, %(metadata)s, %(name)s,
            %(description)s, 1, COALESCE(%(created_at)s::timestamptz, now()),
            COALESCE(%(updated_at)s::timestamptz, %(created_at)s::timestamptz, now()))
    ON CONFLICT (assistant_id) DO NOTHING
    RETURNING {ASSISTANT_COLS}
), v AS (
    INSERT INTO assistant_versions
        (assistant_id, version, graph_id, config, context, metadata, name, description, created_at)
    SELECT assistant_id, version, graph_id, config, context, metadata, name, description, created_at
    FROM a
)
SELECT {ASSISTANT_COLS} FROM a
"""
SQL_ASSISTANT_GET = f"SELECT {ASSISTANT_COLS} FROM assistants WHERE assistant_id = %s"
SQL_ASSISTANT_GET_FOR_UPDATE = SQL_ASSISTANT_GET + " FOR UPDATE"
SQL_ASSISTANT_NEXT_VERSION = (
    "SELECT COALESCE(max(version), 0) + 1 AS v FROM assistant_versions WHERE assistant_id = %s"
)
SQL_ASSISTANT_VERSION_INSERT = """
INSERT INTO assistant_versions
    (assistant_id, version, graph_id, config, context, metadata, name, description, created_at)
VALUES (%(assistant_id)s, %(version)s, %(graph_id)s, %(config)s, %(context)s, %(metadata)s,
        %(name)s, %(description)s, now())
"""
SQL_ASSISTANT_UPDATE = f"""
UPDATE assistants SET graph_id = %(graph_id)s, config = %(config)s, context = %(context)s,
    metadata = %(metadata)s, name = %(name)s, description = %(description)s,
    version = %(version)s, updated_at = now()
WHERE assistant_id = %(assistant_id)s
RETURNING {ASSISTANT_COLS}
"""
SQL_ASSISTANT_DELETE = "DELETE FROM assistants WHERE assistant_id = %s RETURNING assistant_id"
SQL_ASSISTANT_SET_LATEST = """
UPDATE assistants a SET graph_id = v.graph_id, config = v.config, context = v.context,
    metadata = v.metadata, name = v.name, description = v.description, version = v.version,
    updated_at = now()
FROM assistant_versions v
WHERE a.assistant_id = %(assistant_id)s AND v.assistant_id = a.assistant_id
  AND v.version = %(version)s
RETURNING a.assistant_id, a.graph_id, a.config, a.context, a.metadata, a.name, a.description,
    a.version, a.created_at, a.updated_at
"""
SQL_ASSISTANT_VERSIONS = """
SELECT assistant_id, version, graph_id, config, context, metadata, name, description,
    created_at, created_at AS updated_at
FROM assistant_versions
WHERE assistant_id = %(assistant_id)s {filters}
ORDER BY version DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
ASSISTANT_SORTS = {
    "assistant_id": ("assistant_id",),
    "graph_id": ("graph_id", "created_at", "assistant_id"),
    "name": ("name", "assistant_id"),
    "created_at": ("created_at", "assistant_id"),
    "updated_at": ("updated_at", "assistant_id"),
}

# ---- threads --------------------------------------------------------------------------------
SQL_THREAD_INSERT = f"""
INSERT INTO threads ({THREAD_COLS})
VALUES (%(thread_id)s, COALESCE(%(created_at)s::timestamptz, now()),
        COALESCE(%(updated_at)s::timestamptz, %(created_at)s::timestamptz, now()),
        COALESCE(%(state_updated_at)s::timestamptz, %(created_at)s::timestamptz, now()),
        %(metadata)s, %(status)s, %(config)s, %(values)s, %(interrupts)s, %(error)s,
        %(ttl_strategy)s, %(ttl_minutes)s::float8,
        CASE WHEN %(ttl_minutes)s::float8 IS NULL THEN NULL
             ELSE now() + %(ttl_minutes)s::float8 * interval '1 minute' END)
ON CONFLICT (thread_id) DO NOTHING
RETURNING {THREAD_COLS}
"""
SQL_THREAD_GET = f"SELECT {THREAD_COLS} FROM threads WHERE thread_id = %s"
SQL_THREAD_LOCK = "SELECT thread_id FROM threads WHERE thread_id = %s FOR UPDATE"
SQL_THREAD_LOCK_MANY = (
    "SELECT thread_id FROM threads WHERE thread_id = ANY(%s) ORDER BY thread_id FOR UPDATE"
)
SQL_THREAD_UPDATE = f"""
UPDATE threads SET
    metadata = CASE WHEN %(metadata)s::jsonb IS NULL THEN metadata ELSE metadata || %(metadata)s::jsonb END,
    ttl_strategy = CASE WHEN %(set_ttl)s THEN %(ttl_strategy)s ELSE ttl_strategy END,
    ttl_minutes = CASE WHEN %(set_ttl)s THEN %(ttl_minutes)s::float8 ELSE ttl_minutes END,
    updated_at = now(),
    expires_at = CASE
        WHEN (CASE WHEN %(set_ttl)s THEN %(ttl_minutes)s::float8 ELSE ttl_minutes END) IS NULL THEN NULL
        ELSE now() + (CASE WHEN %(set_ttl)s THEN %(ttl_minutes)s::float8 ELSE ttl_minutes END)
                     * interval '1 minute' END
WHERE thread_id = %(thread_id)s
RETURNING {THREAD_COLS}
"""
SQL_THREAD_SET_STATE = f"""
UPDATE threads SET "values" = %(values)s, interrupts = %(interrupts)s,
    status = COALESCE(%(status)s, status), state_updated_at = now(), {TOUCH_THREAD}
WHERE thread_id = %(thread_id)s
RETURNING thread_id
"""
SQL_THREAD_DELETE = "DELETE FROM threads WHERE thread_id = %s RETURNING thread_id"
SQL_THREAD_EXPIRED = """
SELECT thread_id, ttl_strategy FROM threads
WHERE expires_at <= %(now)s AND status <> 'busy'
ORDER BY expires_at
LIMIT %(limit)s
"""
THREAD_SORTS = {
    "thread_id": ("thread_id",),
    "status": ("status", "created_at", "thread_id"),
    "created_at": ("created_at", "thread_id"),
    "updated_at": ("updated_at", "thread_id"),
    "state_updated_at": ("state_updated_at", "thread_id"),
}
SQL_THREADS_AFTER_EXHAUSTED = f"""
UPDATE threads SET
    status = CASE WHEN EXISTS (
        SELECT 1 FROM runs WHERE runs.thread_id = threads.thread_id
          AND runs.status IN ('pending', 'running')) THEN 'busy' ELSE 'error' END,
    error = %(error)s,
    {TOUCH_THREAD}
WHERE thread_id = %(thread_id)s
"""
SQL_THREAD_AFTER_RUN_DELETE = f"""
UPDATE threads SET
    status = CASE WHEN EXISTS (
        SELECT 1 FROM runs WHERE runs.thread_id = threads.thread_id
          AND runs.status IN ('pending', 'running')) THEN 'busy' ELSE 'idle' END,
    {TOUCH_THREAD}
WHERE thread_id = %s
"""
# ---- runs -----------------------------------------------------------------------------------
# run_create, after the thread row is locked (a statement of its own, so that this one's
# snapshot is taken after the lock and sees every run committed before it). Rows: the created
# run (kind 'created') and, when asked for or when nothing was created, the runs of the thread
# that were already in flight ('inflight').
# No row at all: the thread does not exist. No 'created' row: `reject` found a run in flight.
SQL_RUN_CREATE = f"""
WITH th AS (
    SELECT thread_id FROM threads WHERE thread_id = %(thread_id)s
), inflight AS (
    SELECT {RUN_COLS} FROM runs
    WHERE thread_id = %(thread_id)s AND status IN ('pending', 'running')
), ins AS (
    INSERT INTO runs ({RUN_COLS})
    SELECT %(run_id)s::text, th.thread_id, %(assistant_id)s::text, %(metadata)s::jsonb, 'pending',
        %(kwargs)s::jsonb, %(multitask_strategy)s::text,
        COALESCE(%(created_at)s::timestamptz, now()),
        COALESCE(%(updated_at)s::timestamptz, %(created_at)s::timestamptz, now()),
        %(attempt)s::integer,
        COALESCE(%(available_at)s::timestamptz, %(created_at)s::timestamptz, now()),
        NULL::text, NULL::uuid, NULL::timestamptz
    FROM th
    WHERE NOT (%(reject)s::boolean AND EXISTS (SELECT 1 FROM inflight))
    RETURNING {RUN_COLS}
), busy AS (
    UPDATE threads SET status = 'busy', metadata = metadata || %(extra)s::jsonb, {TOUCH_THREAD}
    WHERE thread_id = (SELECT thread_id FROM ins)
)
SELECT 'created' AS kind, {RUN_COLS} FROM ins
UNION ALL
SELECT 'inflight' AS kind, {RUN_COLS} FROM inflight
WHERE %(list_inflight)s::boolean OR NOT EXISTS (SELECT 1 FROM ins)
"""
SQL_THREAD_ENSURE = """
INSERT INTO threads (thread_id, metadata, status, config, "values", interrupts, error,
                     ttl_strategy, ttl_minutes, expires_at)
VALUES (%(thread_id)s, %(metadata)s, %(status)s, %(config)s, %(values)s, %(interrupts)s,
        %(error)s, %(ttl_strategy)s, %(ttl_minutes)s::float8,
        CASE WHEN %(ttl_minutes)s::float8 IS NULL THEN NULL
             ELSE now() + %(ttl_minutes)s::float8 * interval '1 minute' END)
ON CONFLICT (thread_id) DO NOTHING
"""
SQL_RUN_GET = f"SELECT {RUN_COLS} FROM runs WHERE run_id = %s"
SQL_RUN_GET_IN_THREAD = f"SELECT {RUN_COLS} FROM runs WHERE run_id = %s AND thread_id = %s"
SQL_RUN_THREAD = "SELECT thread_id FROM runs WHERE run_id = %s"
SQL_RUN_THREAD_IN_THREAD = "SELECT thread_id FROM runs WHERE run_id = %s AND thread_id = %s"
SQL_RUN_DELETE = "DELETE FROM runs WHERE run_id = %s RETURNING status"
SQL_RUN_LIST = f"""
SELECT {RUN_COLS} FROM runs
WHERE thread_id = %(thread_id)s {{status}}
ORDER BY created_at DESC, run_id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
SQL_RUNS_INFLIGHT = f"""
SELECT {RUN_COLS} FROM runs
WHERE status IN ({{statuses}}) {{thread}}
ORDER BY created_at, run_id
"""
SQL_CLAIM = f"""
WITH picked AS (
    SELECT r.run_id
    FROM runs r
    WHERE r.status IN ('pending', 'running')
      AND (
        (r.status = 'running' AND r.lease_expires_at < now() AND r.attempt < %(max_attempts)s)
        OR (r.status = 'pending' AND r.available_at <= now()
            AND NOT EXISTS (
                SELECT 1 FROM runs o
                WHERE o.thread_id = r.thread_id AND o.status = 'running')
            AND NOT EXISTS (
                SELECT 1 FROM runs o
                WHERE o.thread_id = r.thread_id AND o.status = 'pending'
                  AND (o.created_at, o.run_id) < (r.created_at, r.run_id)))
      )
    ORDER BY r.created_at, r.run_id
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE runs SET status = 'running', attempt = runs.attempt + 1, lease_id = gen_random_uuid(),
    lease_owner = %(worker_id)s, lease_expires_at = now() + %(lease_secs)s * interval '1 second',
    updated_at = now()
FROM picked
WHERE runs.run_id = picked.run_id
RETURNING {RUN_COLS_R}
"""
SQL_RENEW = """
UPDATE runs SET lease_expires_at = now() + %(lease_secs)s * interval '1 second'
WHERE lease_id = ANY(%(lease_ids)s) AND status = 'running' AND lease_owner = %(worker_id)s
RETURNING lease_id
"""
# run_finish, step 1: lock the run's thread (lock order: thread, then run).
SQL_LOCK_THREAD_OF_RUN = """
SELECT thread_id FROM threads
WHERE thread_id = (SELECT thread_id FROM runs WHERE run_id = %(run_id)s)
FOR UPDATE
"""
# run_finish, step 2: end (or delete) the run if the fence holds, and settle its thread: busy
# while another run is in flight, else the given status. No row: the fence did not hold.
_FINISH_THREAD = """
UPDATE threads SET
    status = CASE WHEN EXISTS (
        SELECT 1 FROM runs o WHERE o.thread_id = threads.thread_id
          AND o.status IN ('pending', 'running') AND o.run_id <> %(run_id)s
    ) THEN 'busy' ELSE %(thread_status)s END,
    "values" = CASE WHEN %(set_values)s THEN %(values)s::jsonb ELSE "values" END,
    interrupts = CASE WHEN %(set_interrupts)s THEN %(interrupts)s::jsonb ELSE interrupts END,
    state_updated_at = CASE WHEN %(set_values)s OR %(set_interrupts)s THEN now()
                            ELSE state_updated_at END,
    error = %(error)s::jsonb,
    """ + TOUCH_THREAD + """
FROM r WHERE threads.thread_id = r.thread_id
RETURNING threads.thread_id
"""
SQL_FINISH_LEASED = """
WITH r AS (
    UPDATE runs SET status = %(status)s, lease_expires_at = NULL, updated_at = now()
    WHERE run_id = %(run_id)s AND status = 'running' AND lease_id = %(lease_id)s
    RETURNING thread_id
)
""" + _FINISH_THREAD
SQL_FINISH_PENDING = """
WITH r AS (
    UPDATE runs SET status = %(status)s, updated_at = now()
    WHERE run_id = %(run_id)s AND status = 'pending'
    RETURNING thread_id
)
""" + _FINISH_THREAD
SQL_FINISH_DELETE_LEASED = """
WITH r AS (
    DELETE FROM runs WHERE run_id = %(run_id)s AND status = 'running' AND lease_id = %(lease_id)s
    RETURNING thread_id
)
""" + _FINISH_THREAD
SQL_FINISH_DELETE_PENDING = """
WITH r AS (
    DELETE FROM runs WHERE run_id = %(run_id)s AND status = 'pending'
    RETURNING thread_id
)
""" + _FINISH_THREAD
SQL_REQUEUE = """
UPDATE runs SET status = 'pending', available_at = now() + %(delay)s * interval '1 second',
    lease_id = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE run_id = %(run_id)s AND status = 'running' AND lease_id = %(lease_id)s
RETURNING run_id
"""
SQL_EXHAUSTED_CANDIDATES = """
SELECT run_id, thread_id FROM runs
WHERE status = 'running' AND lease_expires_at < now() AND attempt >= %s
ORDER BY created_at, run_id
LIMIT 1000
"""
SQL_EXHAUSTED_FAIL = f"""
UPDATE runs SET status = 'error', lease_expires_at = NULL, updated_at = now()
WHERE run_id = ANY(%(run_ids)s) AND status = 'running' AND lease_expires_at < now()
  AND attempt >= %(max_attempts)s
RETURNING {RUN_COLS}
"""
SQL_NEXT_WAKEUP = """
SELECT min(available_at) AS at FROM runs WHERE status = 'pending' AND available_at > now()
"""


# ---- checkpoints (extensions of LangGraph's tables; see PostgresCheckpointer) ------------------
SQL_CKPT_RUN_THREADS = "SELECT run_id, thread_id FROM runs WHERE run_id = ANY(%s)"
SQL_CKPT_OF_RUNS_IN_THREADS = """
SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints
WHERE thread_id = ANY(%(thread_ids)s) AND metadata ->> 'run_id' = ANY(%(run_ids)s)
"""
SQL_CKPT_OF_RUNS_ANYWHERE = """
SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints
WHERE metadata ->> 'run_id' = ANY(%(run_ids)s)
"""
SQL_CKPT_CHAIN = """
SELECT checkpoint_id, parent_checkpoint_id, checkpoint -> 'channel_versions' AS versions
FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s
"""
SQL_CKPT_DELETE_WRITES = """
DELETE FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
SQL_CKPT_DELETE = """
DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
SQL_CKPT_REPARENT = """
UPDATE checkpoints SET parent_checkpoint_id = %s
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s
"""
SQL_CKPT_DELETE_BLOB = """
DELETE FROM checkpoint_blobs
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = ANY(%s)
"""
SQL_CKPT_COPY = (
    """
INSERT INTO checkpoints
    (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT %(dst)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
    CASE WHEN metadata ->> 'thread_id' = %(src)s
         THEN jsonb_set(metadata, '{thread_id}', to_jsonb(%(dst)s::text)) ELSE metadata END
FROM checkpoints WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, type = EXCLUDED.type,
    checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
""",
    """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT %(dst)s, checkpoint_ns, channel, version, type, blob
FROM checkpoint_blobs WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO UPDATE SET
    type = EXCLUDED.type, blob = EXCLUDED.blob
""",
    """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
SELECT %(dst)s, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path
FROM checkpoint_writes WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
    channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob,
    task_path = EXCLUDED.task_path
""",
)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _json(value: Any) -> Jsonb | None:
    """A JSONB parameter (orjson); Python None is SQL NULL."""
    return None if value is None else Jsonb(value, dumps=dumps)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _ttl(ttl: Any) -> tuple[str | None, float | None]:
    """(strategy, minutes) of a wire TTL: None, {"strategy", "ttl"} or a number of minutes."""
    if ttl is None:
        return None, None
    if isinstance(ttl, (int, float)):
        return "delete", float(ttl)
    minutes = ttl.get("ttl")
    if minutes is None:
        return None, None
    return ttl.get("strategy") or "delete", float(minutes)


def _minutes(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _assistant(row: dict[str, Any]) -> Record:
    return {
        "assistant_id": row["assistant_id"],
        "graph_id": row["graph_id"],
        "config": row["config"],
        "context": row["context"],
        "metadata": row["metadata"],
        "name": row["name"],
        "description": row["description"],
        "version": row["version"],
        "created_at": _utc(row["created_at"]),
        "updated_at": _utc(row["updated_at"]),
    }


def _thread(row: dict[str, Any]) -> Record:
    strategy = row["ttl_strategy"]
    return {
        "thread_id": row["thread_id"],
        "created_at": _utc(row["created_at"]),
        "updated_at": _utc(row["updated_at"]),
        "state_updated_at": _utc(row["state_updated_at"]),
        "metadata": row["metadata"],
        "status": row["status"],
        "config": row["config"],
        "values": row["values"],
        "interrupts": row["interrupts"],
        "error": row["error"],
        "ttl": (
            {"strategy": strategy, "ttl": _minutes(row["ttl_minutes"])}
            if strategy is not None and row["ttl_minutes"] is not None
            else None
        ),
        "expires_at": _utc(row["expires_at"]),
    }


def _run(row: dict[str, Any]) -> Record:
    lease_id = row["lease_id"]
    return {
        "run_id": row["run_id"],
        "thread_id": row["thread_id"],
        "assistant_id": row["assistant_id"],
        "metadata": row["metadata"],
        "status": row["status"],
        "kwargs": row["kwargs"],
        "multitask_strategy": row["multitask_strategy"],
        "created_at": _utc(row["created_at"]),
        "updated_at": _utc(row["updated_at"]),
        "attempt": row["attempt"],
        "available_at": _utc(row["available_at"]),
        "lease_owner": row["lease_owner"],
        "lease_id": str(lease_id) if lease_id is not None else None,
        "lease_expires_at": _utc(row["lease_expires_at"]),
    }


def _order_by(columns: tuple[str, ...], order: str) -> str:
    direction = "ASC" if str(order).lower() == "asc" else "DESC"
    return ", ".join(f"{c} {direction}" for c in columns)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def _claim_conflict(exc: BaseException) -> bool:
    """The one-running-run-per-thread index refused a claim: another claimer won a race."""
    return (
        isinstance(exc, pg_errors.UniqueViolation)
        and getattr(getattr(exc, "diag", None), "constraint_name", None) == UNIQUE_RUNNING_INDEX
    )


def _cursor(conn: AsyncConnection) -> AsyncCursor:
    return conn.cursor(row_factory=dict_row, binary=True)


# ---------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------


class PostgresCheckpointer(AsyncPostgresSaver):
    """LangGraph's `AsyncPostgresSaver` on our pool, with two changes:

    * On a pool, no process-wide lock: the stock class serialises every call of the saver
      through one `asyncio.Lock` (needed for a single connection, not for a pool), which would
      make all the runs of a worker take turns to write checkpoints. Each call borrows its own
      connection, with the outage-aware borrowing of `pg_pool`.
    * `adelete_for_runs` (rollback) and `acopy_thread` (thread copy), which the stock class
      leaves unimplemented, in SQL on LangGraph's tables.
    """

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor]:
        if self.pipe is not None or not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with pooled_connection(self.conn) as conn:
            if pipeline and self.supports_pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            elif pipeline:
                async with conn.transaction(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints written by these runs (metadata `run_id`), with their writes
        and the blobs no remaining checkpoint uses. A surviving checkpoint whose parent was
        deleted is re-attached to its nearest surviving ancestor.

        Writes a run made on a checkpoint of an earlier run (e.g. the resume value and task
        results of a resumed run that had not saved a checkpoint yet) cannot be told apart from
        that earlier run's own writes in LangGraph's schema, and are kept."""
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run IDs, not a str")
        ids = sorted({str(r) for r in run_ids})
        if not ids:
            return
        async with self._cursor() as cur:
            async with cur.connection.transaction():
                await cur.execute(SQL_CKPT_RUN_THREADS, (ids,))
                known = await cur.fetchall()
                doomed: dict[tuple[str, str], set[str]] = {}
                rows: list[dict[str, Any]] = []
                if known:
                    await cur.execute(
                        SQL_CKPT_OF_RUNS_IN_THREADS,
                        {"thread_ids": sorted({r["thread_id"] for r in known}), "run_ids": ids},
                    )
                    rows += await cur.fetchall()
                unknown = sorted(set(ids) - {r["run_id"] for r in known})
                if unknown:  # runs already deleted: no thread to narrow the search to
                    await cur.execute(SQL_CKPT_OF_RUNS_ANYWHERE, {"run_ids": unknown})
                    rows += await cur.fetchall()
                for row in rows:
                    key = (row["thread_id"], row["checkpoint_ns"])
                    doomed.setdefault(key, set()).add(row["checkpoint_id"])
                for (thread_id, ns), checkpoint_ids in sorted(doomed.items()):
                    await self._delete_checkpoints(cur, thread_id, ns, checkpoint_ids)

    @staticmethod
    async def _delete_checkpoints(
        cur: AsyncCursor, thread_id: str, ns: str, doomed: set[str]
    ) -> None:
        await cur.execute(SQL_CKPT_CHAIN, (thread_id, ns))
        chain = {r["checkpoint_id"]: r for r in await cur.fetchall()}
        survivors = [cid for cid in chain if cid not in doomed]
        for cid in survivors:
            parent = chain[cid]["parent_checkpoint_id"]
            if parent not in doomed:
                continue
            seen: set[str] = set()
            while parent is not None and parent in doomed and parent not in seen:
                seen.add(parent)
                parent = chain[parent]["parent_checkpoint_id"] if parent in chain else None
            await cur.execute(SQL_CKPT_REPARENT, (parent, thread_id, ns, cid))
        ids = sorted(doomed)
        await cur.execute(SQL_CKPT_DELETE_WRITES, (thread_id, ns, ids))
        await cur.execute(SQL_CKPT_DELETE, (thread_id, ns, ids))

        def versions(cid: str) -> set[tuple[str, str]]:
            found = (chain.get(cid) or {}).get("versions") or {}
            return {(channel, str(version)) for channel, version in found.items()}

        garbage: set[tuple[str, str]] = set()
        for cid in doomed:
            garbage |= versions(cid)
        for cid in survivors:
            garbage -= versions(cid)
        by_channel: dict[str, list[str]] = {}
        for channel, version in garbage:
            by_channel.setdefault(channel, []).append(version)
        for channel, dead in sorted(by_channel.items()):
            await cur.execute(SQL_CKPT_DELETE_BLOB, (thread_id, ns, channel, sorted(dead)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of a thread to another (replacing the
        target's rows with the same keys)."""
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        async with self._cursor() as cur:
            async with cur.connection.transaction():
                for sql in SQL_CKPT_COPY:
                    await cur.execute(sql, {"src": src, "dst": dst})


# ---------------------------------------------------------------------------------------------
# The storage
# ---------------------------------------------------------------------------------------------


class PostgresStorage(Storage):
    """`Storage` on Postgres. One instance (and one pool) per event loop.

    `pool_max_size` bounds the connections of this instance's pool (shared with LangGraph's
    checkpointer and store). Pass `pool` to share a pool you created (with
    `pg_pool.create_pool`, opened or not); the storage then does not close it.
    """

    def __init__(
        self,
        uri: str,
        *,
        pool_max_size: int = DEFAULT_POOL_MAX_SIZE,
        pool: AsyncConnectionPool | None = None,
        pool_min_size: int | None = None,
        store_index: dict[str, Any] | None = None,
        store_ttl: dict[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self.pool_max_size = pool_max_size
        self._owns_pool = pool is None
        self._pool: AsyncConnectionPool = pool or create_pool(
            uri, max_size=pool_max_size, min_size=pool_min_size, name="agentserver"
        )
        self._store_index = store_index
        self._store_ttl = store_ttl
        self._checkpointer: Any = None
        self._store: Any = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    async def setup(self) -> None:
        if self._pool.closed:
            await self._pool.open(wait=False)
        await migrate(self._pool, store_index=self._store_index)
        self._checkpointer = PostgresCheckpointer(self._pool)
        self._store = AsyncPostgresStore(self._pool, index=self._store_index, ttl=self._store_ttl)
        if self._store_ttl and self._store_ttl.get("sweep_interval_minutes"):
            await self._store.start_ttl_sweeper()

    async def close(self) -> None:
        if self._store is not None and self._store_ttl and self._store_ttl.get("sweep_interval_minutes"):
            await self._store.stop_ttl_sweeper()
        if self._owns_pool:
            health: PoolHealth | None = getattr(self._pool, "health", None)
            if health is not None:
                await health.aclose()
            if not self._pool.closed:
                await self._pool.close()

    async def ping(self) -> None:
        await self._one("SELECT 1")  # run_with_retries: Unavailable when the database is down

    async def open_loop_resources(self, pool_size: int):
        """For BG_JOB_ISOLATED_LOOPS, called on a job loop: a pool of `pool_size` connections
        bound to that loop, with a checkpointer and a store on it. Returns
        (checkpointer, store, aclose)."""
        pool = create_pool(
            self.uri, max_size=pool_size, min_size=0, name="agentserver-job-loop"
        )
        await pool.open(wait=False)
        checkpointer = PostgresCheckpointer(pool)
        store = AsyncPostgresStore(pool, index=self._store_index, ttl=self._store_ttl)

        async def aclose() -> None:
            await pool.health.aclose()
            await pool.close()

        return checkpointer, store, aclose

    async def __aenter__(self) -> "PostgresStorage":
        await self.setup()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def checkpointer(self):
        if self._checkpointer is None:
            raise RuntimeError("PostgresStorage.setup() has not been called")
        return self._checkpointer

    @property
    def store(self):
        if self._store is None:
            raise RuntimeError("PostgresStorage.setup() has not been called")
        return self._store

    async def _page(
        self, table: str, cols: str, where: list[str], params: dict[str, Any], order: str, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of a search and the number of matches (no count query when the first
        page already holds them all)."""
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        page_sql = f"SELECT {cols} FROM {table} {clause} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
        count_sql = f"SELECT count(*) AS n FROM {table} {clause}"
        params = {**params, "limit": max(0, limit), "offset": max(0, offset)}

        async def q(cur: AsyncCursor) -> tuple[list[dict[str, Any]], int]:
            await cur.execute(page_sql, params)
            rows = await cur.fetchall()
            if offset == 0 and len(rows) < limit:
                return rows, len(rows)  # the whole result fits in this page
            await cur.execute(count_sql, params)
            return rows, (await cur.fetchone())["n"]

        return await self._read(q)

    # ---- plumbing --------------------------------------------------------------------------
    async def _read(
        self,
        fn: Callable[[AsyncCursor], Awaitable[T]],
        *,
        retry_on: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """One or more statements outside an explicit transaction (each is atomic)."""

        async def work(conn: AsyncConnection) -> T:
            async with _cursor(conn) as cur:
                return await fn(cur)

        return await run_with_retries(self._pool, work, retry_on=retry_on)

    async def _tx(
        self,
        fn: Callable[[AsyncCursor], Awaitable[T]],
        *,
        retry_on: Callable[[BaseException], bool] | None = None,
        pipeline: bool = False,
    ) -> T:
        """`fn` in one transaction, run again from scratch on transient errors. With
        `pipeline`, statements go out without waiting for each other's results (BEGIN, the
        statements up to the first fetch, then COMMIT: two round trips)."""

        async def work(conn: AsyncConnection) -> T:
            if pipeline:
                async with conn.pipeline():
                    async with conn.transaction():
                        async with _cursor(conn) as cur:
                            return await fn(cur)
            async with conn.transaction():
                async with _cursor(conn) as cur:
                    return await fn(cur)

        return await run_with_retries(self._pool, work, retry_on=retry_on)

    async def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        async def q(cur: AsyncCursor) -> dict[str, Any] | None:
            await cur.execute(sql, params)
            return await cur.fetchone()

        return await self._read(q)

    async def _all(
        self,
        sql: str,
        params: Any = None,
        *,
        retry_on: Callable[[BaseException], bool] | None = None,
    ) -> list[dict[str, Any]]:
        async def q(cur: AsyncCursor) -> list[dict[str, Any]]:
            await cur.execute(sql, params)
            return await cur.fetchall()

        return await self._read(q, retry_on=retry_on)

    # ---- assistants ------------------------------------------------------------------------
    async def assistant_create(self, assistant: Record, *, if_exists: str = "raise") -> Record:
        params = {
            "assistant_id": assistant["assistant_id"],
            "graph_id": assistant["graph_id"],
            "config": _json(assistant.get("config") or {}),
            "context": _json(assistant.get("context")),
            "metadata": _json(assistant.get("metadata") or {}),
            "name": assistant.get("name"),
            "description": assistant.get("description"),
            "created_at": assistant.get("created_at"),
            "updated_at": assistant.get("updated_at"),
        }

        async def q(cur: AsyncCursor) -> dict[str, Any] | None:
            await cur.execute(SQL_ASSISTANT_INSERT, params)
            row = await cur.fetchone()
            if row is None and if_exists == "do_nothing":
                await cur.execute(SQL_ASSISTANT_GET, (assistant["assistant_id"],))
                row = await cur.fetchone()
                if row is None:  # deleted in between: let the caller try again
                    raise Conflict(f"Assistant '{assistant['assistant_id']}' was just deleted")
                return row
            return row

        row = await self._read(q)
        if row is None:
            raise Conflict(f"Assistant '{assistant['assistant_id']}' already exists")
        return _assistant(row)

    async def assistant_get(self, assistant_id: str) -> Record | None:
        row = await self._one(SQL_ASSISTANT_GET, (assistant_id,))
        return _assistant(row) if row else None

    async def assistant_update(self, assistant_id: str, changes: Record) -> Record:
        async def q(cur: AsyncCursor) -> dict[str, Any]:
            await cur.execute(SQL_ASSISTANT_GET_FOR_UPDATE, (assistant_id,))
            current = await cur.fetchone()
            if current is None:
                raise NotFound(f"Assistant '{assistant_id}' not found")
            await cur.execute(SQL_ASSISTANT_NEXT_VERSION, (assistant_id,))
            version = (await cur.fetchone())["v"]
            merged = dict(current["metadata"] or {})
            if changes.get("metadata"):
                merged.update(changes["metadata"])
            fields = {
                "assistant_id": assistant_id,
                "version": version,
                "graph_id": changes.get("graph_id") or current["graph_id"],
                "config": _json(
                    changes["config"] if changes.get("config") is not None else current["config"]
                ),
                "context": _json(changes["context"] if "context" in changes else current["context"]),
                "metadata": _json(merged),
                "name": changes["name"] if "name" in changes else current["name"],
                "description": (
                    changes["description"] if "description" in changes else current["description"]
                ),
            }
            await cur.execute(SQL_ASSISTANT_VERSION_INSERT, fields)
            await cur.execute(SQL_ASSISTANT_UPDATE, fields)
            return await cur.fetchone()

        return _assistant(await self._tx(q))

    async def assistant_delete(self, assistant_id: str) -> bool:
        return await self._one(SQL_ASSISTANT_DELETE, (assistant_id,)) is not None

    async def assistant_search(self, query: AssistantQuery) -> tuple[list[Record], int]:
        where, params = [], {}
        if query.graph_id is not None:
            where.append("graph_id = %(graph_id)s")
            params["graph_id"] = query.graph_id
        if query.name:
            where.append("name ILIKE %(name)s")
            params["name"] = _like_pattern(query.name)
        if query.metadata:
            where.append("metadata @> %(metadata)s")
            params["metadata"] = _json(query.metadata)
        order = _order_by(ASSISTANT_SORTS.get(query.sort_by, ASSISTANT_SORTS["created_at"]), query.sort_order)
        rows, total = await self._page("assistants", ASSISTANT_COLS, where, params, order, query.limit, query.offset)
        return [_assistant(r) for r in rows], total

    async def assistant_versions(
        self, assistant_id: str, *, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        filters = "AND metadata @> %(metadata)s" if metadata else ""
        rows = await self._all(
            SQL_ASSISTANT_VERSIONS.format(filters=filters),
            {
                "assistant_id": assistant_id,
                "metadata": _json(metadata) if metadata else None,
                "limit": max(0, limit),
                "offset": max(0, offset),
            },
        )
        return [_assistant(r) for r in rows]

    async def assistant_set_latest(self, assistant_id: str, version: int) -> Record:
        row = await self._one(
            SQL_ASSISTANT_SET_LATEST, {"assistant_id": assistant_id, "version": version}
        )
        if row is None:
            if await self.assistant_get(assistant_id) is None:
                raise NotFound(f"Assistant '{assistant_id}' not found")
            raise NotFound(f"Assistant '{assistant_id}' has no version {version}")
        return _assistant(row)

    # ---- threads ---------------------------------------------------------------------------
    @staticmethod
    def _thread_params(thread_id: str, thread: Record) -> dict[str, Any]:
        strategy, minutes = _ttl(thread.get("ttl"))
        return {
            "thread_id": thread_id,
            "created_at": thread.get("created_at"),
            "updated_at": thread.get("updated_at"),
            "state_updated_at": thread.get("state_updated_at"),
            "metadata": _json(thread.get("metadata") or {}),
            "status": thread.get("status") or "idle",
            "config": _json(thread.get("config") or {}),
            "values": _json(thread.get("values")),
            "interrupts": _json(thread.get("interrupts") or {}),
            "error": _json(thread.get("error")),
            "ttl_strategy": strategy,
            "ttl_minutes": minutes,
        }

    async def thread_create(self, thread: Record, *, if_exists: str = "raise") -> Record:
        params = self._thread_params(thread["thread_id"], thread)

        async def q(cur: AsyncCursor) -> dict[str, Any] | None:
            await cur.execute(SQL_THREAD_INSERT, params)
            row = await cur.fetchone()
            if row is None and if_exists == "do_nothing":
                await cur.execute(SQL_THREAD_GET, (thread["thread_id"],))
                row = await cur.fetchone()
                if row is None:
                    raise Conflict(f"Thread '{thread['thread_id']}' was just deleted")
            return row

        row = await self._read(q)
        if row is None:
            raise Conflict(f"Thread '{thread['thread_id']}' already exists")
        return _thread(row)

    async def thread_get(self, thread_id: str) -> Record | None:
        row = await self._one(SQL_THREAD_GET, (thread_id,))
        return _thread(row) if row else None

    async def thread_update(
        self, thread_id: str, *, metadata: dict | None = None, ttl: Record | None = None
    ) -> Record:
        strategy, minutes = _ttl(ttl)
        row = await self._one(
            SQL_THREAD_UPDATE,
            {
                "thread_id": thread_id,
                "metadata": _json(metadata) if metadata else None,
                "set_ttl": ttl is not None,
                "ttl_strategy": strategy,
                "ttl_minutes": minutes,
            },
        )
        if row is None:
            raise NotFound(f"Thread '{thread_id}' not found")
        return _thread(row)

    async def thread_set_state(
        self, thread_id: str, *, values: Any, interrupts: dict | None, status: str | None = None
    ) -> None:
        row = await self._one(
            SQL_THREAD_SET_STATE,
            {
                "thread_id": thread_id,
                "values": _json(values),
                "interrupts": _json(interrupts or {}),
                "status": status,
            },
        )
        if row is None:
            raise NotFound(f"Thread '{thread_id}' not found")

    async def thread_delete(self, thread_id: str) -> bool:
        return await self._one(SQL_THREAD_DELETE, (thread_id,)) is not None

    async def thread_search(self, query: ThreadQuery) -> tuple[list[Record], int]:
        where, params = [], {}
        if query.ids is not None:
            where.append("thread_id = ANY(%(ids)s)")
            params["ids"] = [str(i) for i in query.ids]
        if query.metadata:
            where.append("metadata @> %(metadata)s")
            params["metadata"] = _json(query.metadata)
        if query.values:
            where.append('"values" @> %(values)s')
            params["values"] = _json(query.values)
        if query.status:
            where.append("status = %(status)s")
            params["status"] = query.status
        order = _order_by(THREAD_SORTS.get(query.sort_by, THREAD_SORTS["created_at"]), query.sort_order)
        rows, total = await self._page("threads", THREAD_COLS, where, params, order, query.limit, query.offset)
        return [_thread(r) for r in rows], total

    async def thread_expired(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        rows = await self._all(SQL_THREAD_EXPIRED, {"now": now, "limit": max(0, limit)})
        return [(r["thread_id"], r["ttl_strategy"]) for r in rows]

    # ---- runs (the queue) ------------------------------------------------------------------
    async def run_create(
        self,
        run: Record,
        *,
        thread: Record | None,
        if_not_exists: str = "reject",
        multitask_strategy: str = "enqueue",
    ) -> CreateRunResult:
        thread_id = run["thread_id"]
        strategy = multitask_strategy or run.get("multitask_strategy") or "enqueue"
        run_params = {
            "run_id": run["run_id"],
            "thread_id": thread_id,
            "assistant_id": run["assistant_id"],
            "metadata": _json(run.get("metadata") or {}),
            "kwargs": _json(run.get("kwargs") or {}),
            "multitask_strategy": strategy,
            "created_at": run.get("created_at"),
            "updated_at": run.get("updated_at"),
            "available_at": run.get("available_at"),
            "attempt": int(run.get("attempt") or 0),
        }
        # What running the graph adds to the thread's metadata.
        extra: dict[str, Any] = {"assistant_id": run["assistant_id"]}
        graph_id = ((thread or {}).get("metadata") or {}).get("graph_id") or run.get("graph_id")
        if graph_id is None:
            configurable = ((run.get("kwargs") or {}).get("config") or {}).get("configurable") or {}
            graph_id = configurable.get("graph_id")
        if graph_id is not None:
            extra["graph_id"] = graph_id

        run_params["reject"] = strategy == "reject"
        run_params["list_inflight"] = strategy in ("interrupt", "rollback")
        run_params["extra"] = _json(extra)
        ensure = (
            self._thread_params(thread_id, thread or {}) if if_not_exists == "create" else None
        )

        async def q(cur: AsyncCursor) -> CreateRunResult:
            if ensure is not None:
                await cur.execute(SQL_THREAD_ENSURE, ensure)
            await cur.execute(SQL_THREAD_LOCK, (thread_id,))
            try:
                await cur.execute(SQL_RUN_CREATE, run_params)
                rows = await cur.fetchall()
            except pg_errors.UniqueViolation:
                raise Conflict(f"Run '{run['run_id']}' already exists") from None
            if not rows:
                raise NotFound(f"Thread '{thread_id}' not found")
            created = [r for r in rows if r["kind"] == "created"]
            if not created:
                raise Conflict(REJECT_MESSAGE)
            inflight = sorted(
                (r for r in rows if r["kind"] == "inflight"),
                key=lambda r: (r["created_at"], r["run_id"]),
            )
            to_cancel = inflight if strategy in ("interrupt", "rollback") else []
            return CreateRunResult(run=_run(created[0]), to_cancel=[_run(r) for r in to_cancel])

        return await self._tx(q, pipeline=True)

    async def run_get(self, run_id: str, thread_id: str | None = None) -> Record | None:
        if thread_id is None:
            row = await self._one(SQL_RUN_GET, (run_id,))
        else:
            row = await self._one(SQL_RUN_GET_IN_THREAD, (run_id, thread_id))
        return _run(row) if row else None

    async def run_list(
        self, thread_id: str, *, status: str | None, limit: int, offset: int
    ) -> list[Record]:
        sql = SQL_RUN_LIST.format(status="AND status = %(status)s" if status else "")
        rows = await self._all(
            sql,
            {"thread_id": thread_id, "status": status, "limit": max(0, limit), "offset": max(0, offset)},
        )
        return [_run(r) for r in rows]

    async def run_delete(self, run_id: str, thread_id: str | None = None) -> bool:
        async def q(cur: AsyncCursor) -> bool:
            if thread_id is None:
                await cur.execute(SQL_RUN_THREAD, (run_id,))
            else:
                await cur.execute(SQL_RUN_THREAD_IN_THREAD, (run_id, thread_id))
            found = await cur.fetchone()
            if found is None:
                return False
            await cur.execute(SQL_THREAD_LOCK, (found["thread_id"],))
            await cur.execute(SQL_RUN_DELETE, (run_id,))
            deleted = await cur.fetchone()
            if deleted is None:
                return False
            if deleted["status"] in ("pending", "running"):
                await cur.execute(SQL_THREAD_AFTER_RUN_DELETE, (found["thread_id"],))
            return True

        return await self._tx(q)

    async def run_inflight(self, *, thread_id: str | None = None, status: str = "all") -> list[Record]:
        statuses = {"pending": "'pending'", "running": "'running'"}.get(status, "'pending', 'running'")
        sql = SQL_RUNS_INFLIGHT.format(
            statuses=statuses, thread="AND thread_id = %(thread_id)s" if thread_id else ""
        )
        rows = await self._all(sql, {"thread_id": thread_id})
        return [_run(r) for r in rows]

    async def claim_runs(
        self, worker_id: str, limit: int, lease_secs: float, max_attempts: int
    ) -> list[Claimed]:
        if limit <= 0:
            return []
        params = {
            "worker_id": worker_id,
            "limit": int(limit),
            "lease_secs": float(lease_secs),
            "max_attempts": int(max_attempts),
        }
        rows = await self._all(SQL_CLAIM, params, retry_on=_claim_conflict)
        runs = sorted((_run(r) for r in rows), key=lambda r: (r["created_at"], r["run_id"]))
        return [Claimed(run=r, lease_id=r["lease_id"], attempt=r["attempt"]) for r in runs]

    async def renew_leases(
        self, worker_id: str, lease_ids: Sequence[str], lease_secs: float
    ) -> set[str]:
        wanted = {str(i): _uuid_or_none(i) for i in lease_ids}
        valid = [u for u in wanted.values() if u is not None]
        if not valid:
            return set(wanted)
        rows = await self._all(
            SQL_RENEW,
            {"lease_ids": valid, "worker_id": worker_id, "lease_secs": float(lease_secs)},
        )
        held = {str(r["lease_id"]) for r in rows}
        return {given for given, parsed in wanted.items() if parsed is None or str(parsed) not in held}

    async def run_finish(self, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
        lease = None
        if lease_id is not None:
            lease = _uuid_or_none(lease_id)
            if lease is None:
                return False
        thread_params = {
            "thread_status": end.thread_status or "idle",
            "set_values": end.values is not None,
            "values": _json(end.values),
            "set_interrupts": end.interrupts is not None,
            "interrupts": _json(end.interrupts),
            "error": _json(end.error),
        }

        if end.delete_run:
            sql = SQL_FINISH_DELETE_LEASED if lease is not None else SQL_FINISH_DELETE_PENDING
        else:
            sql = SQL_FINISH_LEASED if lease is not None else SQL_FINISH_PENDING
        params = {**thread_params, "run_id": run_id, "lease_id": lease, "status": end.status}

        async def q(cur: AsyncCursor) -> bool:
            await cur.execute(SQL_LOCK_THREAD_OF_RUN, params)
            await cur.execute(sql, params)
            # No row: no such run, or the lease was lost: nothing was written.
            return await cur.fetchone() is not None

        return await self._tx(q, pipeline=True)

    async def run_requeue(self, run_id: str, lease_id: str, *, delay_secs: float = 0.0) -> bool:
        lease = _uuid_or_none(lease_id)
        if lease is None:
            return False
        row = await self._one(
            SQL_REQUEUE, {"run_id": run_id, "lease_id": lease, "delay": max(0.0, float(delay_secs))}
        )
        return row is not None

    async def fail_exhausted(self, max_attempts: int) -> list[Record]:
        async def q(cur: AsyncCursor) -> list[dict[str, Any]]:
            await cur.execute(SQL_EXHAUSTED_CANDIDATES, (int(max_attempts),))
            candidates = await cur.fetchall()
            if not candidates:
                return []
            thread_ids = sorted({c["thread_id"] for c in candidates})
            await cur.execute(SQL_THREAD_LOCK_MANY, (thread_ids,))
            await cur.execute(
                SQL_EXHAUSTED_FAIL,
                {"run_ids": [c["run_id"] for c in candidates], "max_attempts": int(max_attempts)},
            )
            failed = await cur.fetchall()
            for row in failed:
                error = {
                    "error": "RunAbandoned",
                    "message": (
                        f"Run {row['run_id']} was abandoned by its worker "
                        f"{row['attempt']} time(s); giving up after {max_attempts} attempt(s)"
                    ),
                }
                await cur.execute(
                    SQL_THREADS_AFTER_EXHAUSTED, {"thread_id": row["thread_id"], "error": _json(error)}
                )
            return failed

        rows = await self._tx(q)
        return [_run(r) for r in rows]

    async def next_wakeup(self) -> datetime | None:
        row = await self._one(SQL_NEXT_WAKEUP)
        return _utc(row["at"]) if row else None
