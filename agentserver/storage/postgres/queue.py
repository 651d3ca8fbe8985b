"""The queue on Postgres: the runs table, worked by the queue workers. How a worker claims runs
(`claim_runs`, one statement, `FOR UPDATE SKIP LOCKED`), keeps them (`renew_leases`), ends them
(`run_finish`, settling their thread), gives them back (`run_requeue`) and how runs whose
workers kept dying are failed (`fail_exhausted`).

Concurrency rules:
  * Lock order is always thread row, then run rows: `run_finish` and `fail_exhausted` lock the
    thread first (as `runs.run_create`, `runs.run_delete` and thread deletes do);
    `claim_runs`, `renew_leases` and `run_requeue` touch run rows only and never change a thread.
  * A thread's claimable run is its running run if that one's lease expired, otherwise, when
    nothing of it runs, its oldest pending run. The partial unique index
    `runs_one_running_per_thread` enforces "one running run per thread" in the database
    whatever a worker believes; a claim it refuses lost a race and is retried.
  * Fencing: `run_finish`, `run_requeue` and `renew_leases` only write while the lease id matches.
  * A thread settles as `rules.settled_status` says, in SQL (`_FINISH_THREAD`,
    `SQL_THREADS_AFTER_EXHAUSTED`) so that the run and its thread change in one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg import errors as pg_errors
from psycopg.rows import DictRow

from agentserver.storage import rules
from agentserver.storage.base import Claimed, Record, RunEnd
from agentserver.storage.postgres.db import Db
from agentserver.storage.postgres.rows import (
    RUN_COLS,
    RUN_COLS_R,
    TOUCH_THREAD,
    json_param,
    run_record,
    utc,
    uuid_or_none,
)

UNIQUE_RUNNING_INDEX = "runs_one_running_per_thread"

# ---- SQL ---------------------------------------------------------------------------------------
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
# run_finish, step 2: end (or delete) the run if the fence holds, and settle its thread
# (rules.settled_status: busy while another run is in flight, else the given status; values and
# interrupts mirrored when the end carries them; error set or cleared; TTL clock restarted).
# No row: the fence did not hold.
_FINISH_THREAD = (
    """
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
    """
    + TOUCH_THREAD
    + """
FROM r WHERE threads.thread_id = r.thread_id
RETURNING threads.thread_id
"""
)
SQL_FINISH_LEASED = (
    """
WITH r AS (
    UPDATE runs SET status = %(status)s, lease_expires_at = NULL, updated_at = now()
    WHERE run_id = %(run_id)s AND status = 'running' AND lease_id = %(lease_id)s
    RETURNING thread_id
)
"""
    + _FINISH_THREAD
)
SQL_FINISH_PENDING = (
    """
WITH r AS (
    UPDATE runs SET status = %(status)s, updated_at = now()
    WHERE run_id = %(run_id)s AND status = 'pending'
    RETURNING thread_id
)
"""
    + _FINISH_THREAD
)
SQL_FINISH_DELETE_LEASED = (
    """
WITH r AS (
    DELETE FROM runs WHERE run_id = %(run_id)s AND status = 'running' AND lease_id = %(lease_id)s
    RETURNING thread_id
)
"""
    + _FINISH_THREAD
)
SQL_FINISH_DELETE_PENDING = (
    """
WITH r AS (
    DELETE FROM runs WHERE run_id = %(run_id)s AND status = 'pending'
    RETURNING thread_id
)
"""
    + _FINISH_THREAD
)
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
SQL_THREAD_LOCK_MANY = "SELECT thread_id FROM threads WHERE thread_id = ANY(%s) ORDER BY thread_id FOR UPDATE"
# fail_exhausted, per failed run: settle its thread (rules.settled_status; the error is
# rules.retries_exhausted_error, no values/interrupts to mirror).
SQL_THREADS_AFTER_EXHAUSTED = f"""
UPDATE threads SET
    status = CASE WHEN EXISTS (
        SELECT 1 FROM runs WHERE runs.thread_id = threads.thread_id
          AND runs.status IN ('pending', 'running')) THEN 'busy' ELSE 'error' END,
    error = %(error)s,
    {TOUCH_THREAD}
WHERE thread_id = %(thread_id)s
"""


def claim_conflict(exc: BaseException) -> bool:
    """The one-running-run-per-thread index refused a claim: another claimer won a race."""
    return (
        isinstance(exc, pg_errors.UniqueViolation)
        and getattr(getattr(exc, "diag", None), "constraint_name", None) == UNIQUE_RUNNING_INDEX
    )


class QueueQueries(Db):
    """The queue methods of `PostgresStorage` used by the workers."""

    async def claim_runs(self, worker_id: str, limit: int, lease_secs: float, max_attempts: int) -> list[Claimed]:
        if limit <= 0:
            return []
        params = {
            "worker_id": worker_id,
            "limit": int(limit),
            "lease_secs": float(lease_secs),
            "max_attempts": int(max_attempts),
        }
        rows = await self._all(SQL_CLAIM, params, retry_on=claim_conflict)
        runs = sorted((run_record(r) for r in rows), key=lambda r: (r["created_at"], r["run_id"]))
        return [Claimed(run=r, lease_id=r["lease_id"], attempt=r["attempt"]) for r in runs]

    async def renew_leases(self, worker_id: str, lease_ids: Sequence[str], lease_secs: float) -> set[str]:
        wanted = {str(i): uuid_or_none(i) for i in lease_ids}
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
            lease = uuid_or_none(lease_id)
            if lease is None:
                return False
        thread_params = {
            "thread_status": end.thread_status or "idle",
            "set_values": end.values is not None,
            "values": json_param(end.values),
            "set_interrupts": end.interrupts is not None,
            "interrupts": json_param(end.interrupts),
            "error": json_param(end.error),
        }

        if end.delete_run:
            sql = SQL_FINISH_DELETE_LEASED if lease is not None else SQL_FINISH_DELETE_PENDING
        else:
            sql = SQL_FINISH_LEASED if lease is not None else SQL_FINISH_PENDING
        params = {**thread_params, "run_id": run_id, "lease_id": lease, "status": end.status}

        async def q(cur: AsyncCursor[DictRow]) -> bool:
            await cur.execute(SQL_LOCK_THREAD_OF_RUN, params)
            await cur.execute(sql, params)
            # No row: no such run, or the lease was lost: nothing was written.
            return await cur.fetchone() is not None

        return await self._tx(q, pipeline=True)

    async def run_requeue(self, run_id: str, lease_id: str, *, delay_secs: float = 0.0) -> bool:
        lease = uuid_or_none(lease_id)
        if lease is None:
            return False
        row = await self._one(SQL_REQUEUE, {"run_id": run_id, "lease_id": lease, "delay": max(0.0, float(delay_secs))})
        return row is not None

    async def fail_exhausted(self, max_attempts: int) -> list[Record]:
        async def q(cur: AsyncCursor[DictRow]) -> list[dict[str, Any]]:
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
                error = rules.retries_exhausted_error(row["run_id"], row["attempt"], max_attempts)
                await cur.execute(
                    SQL_THREADS_AFTER_EXHAUSTED, {"thread_id": row["thread_id"], "error": json_param(error)}
                )
            return failed

        rows = await self._tx(q)
        return [run_record(r) for r in rows]

    async def next_wakeup(self) -> datetime | None:
        row = await self._one(SQL_NEXT_WAKEUP)
        return utc(row["at"]) if row else None
