"""Threads on SQLite: the `threads` table (values are stored in `vals`), their TTL, search
pages, and how a thread settles once one of its runs ended. Functions take the connection (on
the storage's thread, inside the transaction the storage opened for writes)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from agentserver.errors import Conflict, NotFound
from agentserver.storage import rules
from agentserver.storage.base import Record, ThreadQuery
from agentserver.storage.sqlite.codec import (
    THREAD_COLS,
    expires,
    js,
    js_or_null,
    load,
    normalize_ttl,
    thread_row,
    ts,
)
from agentserver.storage.sqlite.search import THREAD_SORTS, thread_search_plan
from agentserver.utils import loads, now

# `expires_at` of a thread written at `?`: its TTL clock restarts.
_RESTART_TTL = (
    "expires_at = CASE WHEN ttl IS NULL THEN NULL ELSE ? + CAST(json_extract(ttl, '$.ttl') * 60000000 AS INTEGER) END"
)


def get(conn: sqlite3.Connection, thread_id: str) -> Record | None:
    row = conn.execute(f"SELECT {THREAD_COLS} FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
    return thread_row(row) if row else None


def insert(conn: sqlite3.Connection, t: Record, at: datetime) -> None:
    ttl = normalize_ttl(t.get("ttl"))
    created = t.get("created_at") or at
    updated = t.get("updated_at") or created
    conn.execute(
        f"INSERT INTO threads ({THREAD_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            t["thread_id"],
            ts(created),
            ts(updated),
            ts(t.get("state_updated_at") or updated),
            js(t.get("metadata") or {}),
            t.get("status") or "idle",
            js(t.get("config") or {}),
            js_or_null(t.get("values")),
            js(t.get("interrupts") or {}),
            js_or_null(t.get("error")),
            js_or_null(ttl),
            expires(ttl, at),
        ),
    )


def create(conn: sqlite3.Connection, t: Record, if_exists: str) -> Record:
    existing = get(conn, t["thread_id"])
    if existing is not None:
        if if_exists == "do_nothing":
            return existing
        raise Conflict(f"Thread {t['thread_id']} already exists")
    insert(conn, t, now())
    return get(conn, t["thread_id"])  # type: ignore[return-value]


def update(conn: sqlite3.Connection, thread_id: str, metadata: dict | None, ttl: Record | None) -> Record:
    row = conn.execute("SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
    if row is None:
        raise NotFound(f"Thread {thread_id} not found")
    merged = {**loads(row[0]), **(metadata or {})}
    new_ttl = normalize_ttl(ttl) if ttl is not None else load(row[1])
    at = now()
    conn.execute(
        "UPDATE threads SET metadata = ?, ttl = ?, expires_at = ?, updated_at = ? WHERE thread_id = ?",
        (js(merged), js_or_null(new_ttl), expires(new_ttl, at), ts(at), thread_id),
    )
    return get(conn, thread_id)  # type: ignore[return-value]


def set_state(
    conn: sqlite3.Connection, thread_id: str, values: Any, interrupts: dict | None, status: str | None
) -> None:
    at = now()
    cur = conn.execute(
        "UPDATE threads SET vals = ?, interrupts = ?, status = coalesce(?, status), "
        f"state_updated_at = ?, updated_at = ?, {_RESTART_TTL} WHERE thread_id = ?",
        (js_or_null(values), js(interrupts or {}), status, ts(at), ts(at), ts(at), thread_id),
    )
    if cur.rowcount == 0:
        raise NotFound(f"Thread {thread_id} not found")


def settle(
    conn: sqlite3.Connection,
    thread_id: str,
    at: datetime,
    *,
    other_run_in_flight: bool,
    resting_status: str,
    error: Any,
    values: Any = None,
    interrupts: dict | None = None,
) -> None:
    """After one of its runs ended (`rules.settled_status`): busy while another run is in
    flight, else `resting_status`; values/interrupts mirrored only when given; the run's error;
    the TTL clock restarts."""
    status = rules.settled_status(other_run_in_flight, resting_status)
    sets = ["status = ?", "error = ?", "updated_at = ?"]
    params: list[Any] = [status, js_or_null(error), ts(at)]
    if values is not None:
        sets.append("vals = ?")
        params.append(js(values))
    if interrupts is not None:
        sets.append("interrupts = ?")
        params.append(js(interrupts))
    if values is not None or interrupts is not None:
        sets.append("state_updated_at = ?")
        params.append(ts(at))
    sets.append(_RESTART_TTL)
    params.append(ts(at))
    conn.execute(f"UPDATE threads SET {', '.join(sets)} WHERE thread_id = ?", (*params, thread_id))


def delete(conn: sqlite3.Connection, thread_id: str) -> bool:
    """The thread and its runs (checkpoints are the checkpointer's)."""
    conn.execute("DELETE FROM runs WHERE thread_id = ?", (thread_id,))
    cur = conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
    return cur.rowcount > 0


def search(conn: sqlite3.Connection, q: ThreadQuery) -> tuple[list[Record], int]:
    plan = thread_search_plan(conn, q)
    sort = q.sort_by if q.sort_by in THREAD_SORTS else "created_at"
    order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
    tiebreak = "" if sort == "thread_id" else f", r.thread_id {order}"
    # Two phases: the page's ids (index-only where possible), then whole rows for them only.
    cols = ", ".join("r." + c.strip() for c in THREAD_COLS.split(","))
    rows = conn.execute(
        f"SELECT {cols} FROM ({plan.page_sql}) AS p CROSS JOIN threads AS r "
        f"ON r.thread_id = p.thread_id ORDER BY r.{sort} {order}{tiebreak}",
        plan.page_params,
    ).fetchall()
    total = plan.total
    if total is None:
        limit, offset = max(0, int(q.limit)), max(0, int(q.offset))
        if 0 < len(rows) < limit or (not rows and offset == 0 and limit > 0):
            total = offset + len(rows)  # the page holds the last match
        else:
            (total,) = conn.execute(plan.count_sql, plan.count_params).fetchone()  # type: ignore[arg-type]
    return [thread_row(r) for r in rows], total


def expired(conn: sqlite3.Connection, at: datetime, limit: int) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT thread_id, ttl FROM threads WHERE expires_at IS NOT NULL AND expires_at <= ? "
        "AND status <> 'busy' ORDER BY expires_at LIMIT ?",
        (ts(at), int(limit)),
    ).fetchall()
    return [(tid, (load(ttl) or {}).get("strategy") or "delete") for tid, ttl in rows]
