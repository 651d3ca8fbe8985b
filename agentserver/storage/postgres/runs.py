"""Runs on Postgres, the API side: create (with the multitask strategy), read, list, delete,
in-flight. The worker side of the queue (claim, leases, finish, requeue, exhausted) is `queue.py`.

Lock order is always thread row, then run rows (`queue.py` follows it too): `run_create` and
`run_delete` lock the thread first. `run_create` locks the thread row (`FOR UPDATE`), so the
`reject` check and the insert are atomic against every other create and finish on that thread.
"""

from __future__ import annotations

from psycopg import AsyncCursor
from psycopg import errors as pg_errors
from psycopg.rows import DictRow

from agentserver.errors import Conflict, NotFound
from agentserver.storage import rules
from agentserver.storage.base import CreateRunResult, Record
from agentserver.storage.postgres.db import Db
from agentserver.storage.postgres.rows import (
    RUN_COLS,
    SQL_THREAD_LOCK,
    TOUCH_THREAD,
    json_param,
    run_record,
    thread_params,
)

# ---- SQL ---------------------------------------------------------------------------------------
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
# `{statuses}` and `{thread}` are fixed fragments chosen in `run_inflight`.
SQL_RUNS_INFLIGHT = f"""
SELECT {RUN_COLS} FROM runs
WHERE status IN ({{statuses}}) {{thread}}
ORDER BY created_at, run_id
"""
# run_delete, after the run was deleted: the thread stays busy while another run is in flight.
SQL_THREAD_AFTER_RUN_DELETE = f"""
UPDATE threads SET
    status = CASE WHEN EXISTS (
        SELECT 1 FROM runs WHERE runs.thread_id = threads.thread_id
          AND runs.status IN ('pending', 'running')) THEN 'busy' ELSE 'idle' END,
    {TOUCH_THREAD}
WHERE thread_id = %s
"""


class RunQueries(Db):
    """The run methods of `PostgresStorage` used by the API."""

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
            "assistant_id": run.get("assistant_id"),
            "metadata": json_param(run.get("metadata") or {}),
            "kwargs": json_param(run.get("kwargs") or {}),
            "multitask_strategy": strategy,
            "created_at": run.get("created_at"),
            "updated_at": run.get("updated_at"),
            "available_at": run.get("available_at"),
            "attempt": int(run.get("attempt") or 0),
        }
        run_params["reject"] = strategy == "reject"
        run_params["list_inflight"] = strategy in ("interrupt", "rollback")
        # What running the graph adds to the thread's metadata.
        run_params["extra"] = json_param(rules.thread_graph_metadata(run, thread))
        ensure = thread_params(thread_id, thread or {}) if if_not_exists == "create" else None

        async def q(cur: AsyncCursor[DictRow]) -> CreateRunResult:
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
                raise Conflict(rules.REJECT_MESSAGE)
            inflight = sorted(
                (r for r in rows if r["kind"] == "inflight"),
                key=lambda r: (r["created_at"], r["run_id"]),
            )
            to_cancel = inflight if strategy in ("interrupt", "rollback") else []
            return CreateRunResult(run=run_record(created[0]), to_cancel=[run_record(r) for r in to_cancel])

        return await self._tx(q, pipeline=True)

    async def run_get(self, run_id: str, thread_id: str | None = None) -> Record | None:
        if thread_id is None:
            row = await self._one(SQL_RUN_GET, (run_id,))
        else:
            row = await self._one(SQL_RUN_GET_IN_THREAD, (run_id, thread_id))
        return run_record(row) if row else None

    async def run_list(self, thread_id: str, *, status: str | None, limit: int, offset: int) -> list[Record]:
        sql = SQL_RUN_LIST.format(status="AND status = %(status)s" if status else "")
        rows = await self._all(
            sql,
            {"thread_id": thread_id, "status": status, "limit": max(0, limit), "offset": max(0, offset)},
        )
        return [run_record(r) for r in rows]

    async def run_delete(self, run_id: str, thread_id: str | None = None) -> bool:
        async def q(cur: AsyncCursor[DictRow]) -> bool:
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
        sql = SQL_RUNS_INFLIGHT.format(statuses=statuses, thread="AND thread_id = %(thread_id)s" if thread_id else "")
        rows = await self._all(sql, {"thread_id": thread_id})
        return [run_record(r) for r in rows]
