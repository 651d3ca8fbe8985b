"""Runs on SQLite: the `runs` table is the queue. Create (with the multitask strategies),
claim (per-thread FIFO, leases), renew leases, finish, requeue, fail the exhausted.

Claiming: one `BEGIN IMMEDIATE` transaction (the storage's write) selects the candidates,
oldest first: pending runs whose `available_at` has come and running runs whose lease expired
with attempts left, each the oldest in-flight run of its thread, on a thread where no other run
holds a live lease; each turns `running` with a new lease. SQLite's write lock serialises
claimers of other processes. Every write of a run settles its thread in the same transaction
(`threads.settle`). Functions take the connection, on the storage's thread.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from agentserver.errors import Conflict, NotFound
from agentserver.storage import rules
from agentserver.storage.base import Claimed, CreateRunResult, Record, RunEnd
from agentserver.storage.sqlite import threads
from agentserver.storage.sqlite.codec import (
    RUN_COLS,
    dt,
    expires,
    js,
    load,
    run_row,
    ts,
)
from agentserver.utils import loads, now, uuid7


def get(conn: sqlite3.Connection, run_id: str, thread_id: str | None = None) -> Record | None:
    if thread_id is None:
        row = conn.execute(f"SELECT {RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    else:
        row = conn.execute(
            f"SELECT {RUN_COLS} FROM runs WHERE run_id = ? AND thread_id = ?", (run_id, thread_id)
        ).fetchone()
    return run_row(row) if row else None


def _inflight_of(conn: sqlite3.Connection, thread_id: str, exclude: str | None = None) -> list[Record]:
    rows = conn.execute(
        f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? AND status IN ('pending', 'running') "
        "AND run_id <> ? ORDER BY created_at, run_id",
        (thread_id, exclude or ""),
    ).fetchall()
    return [run_row(r) for r in rows]


def _has_inflight(conn: sqlite3.Connection, thread_id: str, exclude: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM runs WHERE thread_id = ? AND status IN ('pending', 'running') AND run_id <> ? LIMIT 1",
            (thread_id, exclude),
        ).fetchone()
        is not None
    )


def create(
    conn: sqlite3.Connection,
    run: Record,
    thread: Record | None,
    if_not_exists: str,
    strategy: str,
) -> CreateRunResult:
    thread_id = run["thread_id"]
    at = now()
    row = conn.execute("SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
    created_thread = row is None
    if created_thread:
        if if_not_exists != "create":
            raise NotFound(f"Thread {thread_id} not found")
        # with its graph metadata already, so the update below leaves metadata as is
        metadata = {**((thread or {}).get("metadata") or {}), **rules.thread_graph_metadata(run, thread)}
        threads.insert(
            conn,
            {**(thread or {}), "thread_id": thread_id, "status": "busy", "metadata": metadata},
            at,
        )
        row = conn.execute("SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
    to_cancel: list[Record] = []
    if not created_thread:
        inflight = _inflight_of(conn, thread_id)
        if strategy == "reject" and inflight:
            raise Conflict(rules.REJECT_MESSAGE)
        if strategy in ("interrupt", "rollback"):
            to_cancel = inflight
    created = run.get("created_at") or at
    try:
        conn.execute(
            f"INSERT INTO runs ({RUN_COLS}) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, 0, ?, NULL, NULL, NULL)",
            (
                run["run_id"],
                thread_id,
                run.get("assistant_id"),
                js(run.get("metadata") or {}),
                js(run.get("kwargs") or {}),
                run.get("multitask_strategy") or strategy,
                ts(created),
                ts(run.get("updated_at") or created),
                ts(run.get("available_at") or created),
            ),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"Run {run['run_id']} already exists") from None
    metadata = loads(row[0])
    metadata.update(rules.thread_graph_metadata(run, thread))
    ttl = load(row[1])
    conn.execute(
        "UPDATE threads SET status = 'busy', metadata = ?, updated_at = ?, expires_at = ? WHERE thread_id = ?",
        (js(metadata), ts(at), expires(ttl, at), thread_id),
    )
    return CreateRunResult(run=get(conn, run["run_id"]), to_cancel=to_cancel)  # type: ignore[arg-type]


def list_runs(conn: sqlite3.Connection, thread_id: str, status: str | None, limit: int, offset: int) -> list[Record]:
    if status is None:
        sql = f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? "
        params: tuple = (thread_id,)
    else:
        sql = f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? AND status = ? "
        params = (thread_id, status)
    rows = conn.execute(
        sql + "ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?",
        (*params, max(0, int(limit)), max(0, int(offset))),
    ).fetchall()
    return [run_row(r) for r in rows]


def delete(conn: sqlite3.Connection, run_id: str, thread_id: str | None) -> bool:
    run = get(conn, run_id, thread_id)
    if run is None:
        return False
    conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
    if run["status"] in ("pending", "running") and not _has_inflight(conn, run["thread_id"], run_id):
        conn.execute(
            "UPDATE threads SET status = 'idle', updated_at = ? WHERE thread_id = ? AND status = 'busy'",
            (ts(now()), run["thread_id"]),
        )
    return True


def inflight(conn: sqlite3.Connection, thread_id: str | None, status: str) -> list[Record]:
    statuses = ("pending", "running") if status in (None, "all") else (status,)
    marks = ", ".join("?" for _ in statuses)
    if thread_id is None:
        rows = conn.execute(
            f"SELECT {RUN_COLS} FROM runs WHERE status IN ('pending', 'running') "
            f"AND status IN ({marks}) ORDER BY created_at, run_id",
            statuses,
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? "
            f"AND status IN ('pending', 'running') AND status IN ({marks}) "
            "ORDER BY created_at, run_id",
            (thread_id, *statuses),
        ).fetchall()
    return [run_row(r) for r in rows]


# Candidates, oldest first: available pending runs and expired leases with attempts left, each
# the oldest in-flight run of its thread, on a thread with no live lease.
_CLAIMABLE = """
    SELECT r.run_id, r.attempt FROM runs AS r
    WHERE r.status IN ('pending', 'running')
      AND ((r.status = 'pending' AND r.available_at <= :now)
           OR (r.status = 'running' AND r.lease_expires_at <= :now
               AND r.attempt < :max))
      AND NOT EXISTS (
          SELECT 1 FROM runs AS o
          WHERE o.thread_id = r.thread_id AND o.status IN ('pending', 'running')
            AND (o.created_at < r.created_at
                 OR (o.created_at = r.created_at AND o.run_id < r.run_id)))
      AND NOT EXISTS (
          SELECT 1 FROM runs AS o
          WHERE o.thread_id = r.thread_id AND o.status = 'running'
            AND o.run_id <> r.run_id AND o.lease_expires_at > :now)
    ORDER BY r.created_at, r.run_id
    LIMIT :limit
"""


def claim(conn: sqlite3.Connection, worker_id: str, limit: int, lease_secs: float, max_attempts: int) -> list[Claimed]:
    at = now()
    now_ts = ts(at)
    rows = conn.execute(_CLAIMABLE, {"now": now_ts, "max": int(max_attempts), "limit": int(limit)}).fetchall()
    lease_expires = ts(at + timedelta(seconds=float(lease_secs)))
    claimed: list[Claimed] = []
    for run_id, attempt in rows:
        lease_id = uuid7()
        conn.execute(
            "UPDATE runs SET status = 'running', attempt = ?, lease_id = ?, lease_owner = ?, "
            "lease_expires_at = ?, updated_at = ? WHERE run_id = ?",
            (attempt + 1, lease_id, worker_id, lease_expires, now_ts, run_id),
        )
        claimed.append(Claimed(run=get(conn, run_id), lease_id=lease_id, attempt=attempt + 1))  # type: ignore[arg-type]
    return claimed


def renew_leases(conn: sqlite3.Connection, worker_id: str, wanted: set[str], lease_secs: float) -> set[str]:
    """Extend the leases `worker_id` holds among `wanted`; return those it no longer holds."""
    lease_expires = ts(now() + timedelta(seconds=float(lease_secs)))
    held = {
        row[0]
        for row in conn.execute(
            "UPDATE runs SET lease_expires_at = ? WHERE lease_id IN "
            "(SELECT value FROM json_each(?)) AND lease_owner = ? AND status = 'running' "
            "RETURNING lease_id",
            (lease_expires, js(sorted(wanted)), worker_id),
        ).fetchall()
    }
    return wanted - held


def finish(conn: sqlite3.Connection, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
    """Fenced: only if `lease_id` still holds the run (None: a pending run being cancelled)."""
    row = conn.execute("SELECT thread_id, status, lease_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return False
    thread_id, status, held = row
    if lease_id is None:
        if status != "pending":
            return False
    elif status != "running" or held != lease_id:
        return False
    at = now()
    if end.delete_run:
        conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
    else:
        conn.execute(
            "UPDATE runs SET status = ?, updated_at = ?, lease_expires_at = NULL WHERE run_id = ?",
            (end.status, ts(at), run_id),
        )
    threads.settle(
        conn,
        thread_id,
        at,
        other_run_in_flight=_has_inflight(conn, thread_id, run_id),
        resting_status=end.thread_status,
        error=end.error,
        values=end.values,
        interrupts=end.interrupts,
    )
    return True


def requeue(conn: sqlite3.Connection, run_id: str, lease_id: str, delay_secs: float) -> bool:
    at = now()
    cur = conn.execute(
        "UPDATE runs SET status = 'pending', available_at = ?, lease_id = NULL, "
        "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
        "WHERE run_id = ? AND status = 'running' AND lease_id = ?",
        (ts(at + timedelta(seconds=max(0.0, float(delay_secs)))), ts(at), run_id, lease_id),
    )
    return cur.rowcount > 0


def fail_exhausted(conn: sqlite3.Connection, max_attempts: int) -> list[Record]:
    at = now()
    now_ts = ts(at)
    rows = conn.execute(
        "SELECT run_id, thread_id, attempt FROM runs WHERE status IN ('pending', 'running') "
        "AND status = 'running' AND lease_expires_at <= ? AND attempt >= ? "
        "ORDER BY created_at, run_id",
        (now_ts, int(max_attempts)),
    ).fetchall()
    failed: list[Record] = []
    for run_id, thread_id, attempt in rows:
        conn.execute(
            "UPDATE runs SET status = 'error', updated_at = ?, lease_expires_at = NULL WHERE run_id = ?",
            (now_ts, run_id),
        )
        threads.settle(
            conn,
            thread_id,
            at,
            other_run_in_flight=_has_inflight(conn, thread_id, run_id),
            resting_status="error",
            error=rules.retries_exhausted_error(run_id, attempt, int(max_attempts)),
        )
        failed.append(get(conn, run_id))  # type: ignore[arg-type]
    return failed


def next_wakeup(conn: sqlite3.Connection) -> datetime | None:
    (at,) = conn.execute(
        "SELECT min(available_at) FROM runs WHERE status = 'pending' AND available_at > ?",
        (ts(now()),),
    ).fetchone()
    return dt(at)
