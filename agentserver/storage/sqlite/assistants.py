"""Assistants on SQLite: `assistants` holds the current version of each, `assistant_versions`
every version. Functions take the connection (on the storage's thread, inside the
transaction the storage opened for writes)."""

from __future__ import annotations

import sqlite3
from typing import Any

from agentserver.errors import Conflict, NotFound
from agentserver.storage.base import AssistantQuery, Record
from agentserver.storage.sqlite.codec import (
    ASSISTANT_COLS,
    VERSION_COLS,
    assistant_row,
    js,
    ts,
    version_row,
)
from agentserver.storage.sqlite.search import filter_sql
from agentserver.utils import now

SORTS = {"assistant_id", "graph_id", "name", "created_at", "updated_at"}


def get(conn: sqlite3.Connection, assistant_id: str) -> Record | None:
    row = conn.execute(f"SELECT {ASSISTANT_COLS} FROM assistants WHERE assistant_id = ?", (assistant_id,)).fetchone()
    return assistant_row(row) if row else None


def create(conn: sqlite3.Connection, a: Record, if_exists: str) -> Record:
    existing = get(conn, a["assistant_id"])
    if existing is not None:
        if if_exists == "do_nothing":
            return existing
        raise Conflict(f"Assistant {a['assistant_id']} already exists")
    at = ts(a.get("created_at") or now())
    updated = ts(a.get("updated_at")) or at
    graph_id = a["graph_id"]
    fields = (
        graph_id,
        js(a.get("config") or {}),
        js(a.get("context") or {}),
        js(a.get("metadata") or {}),
        a.get("name") if a.get("name") is not None else graph_id,
        a.get("description"),
    )
    conn.execute(
        f"INSERT INTO assistants ({ASSISTANT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
        (a["assistant_id"], *fields, at, updated),
    )
    conn.execute(
        f"INSERT INTO assistant_versions ({VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
        (a["assistant_id"], *fields, at),
    )
    return get(conn, a["assistant_id"])  # type: ignore[return-value]


def update(conn: sqlite3.Connection, assistant_id: str, changes: Record) -> Record:
    current = get(conn, assistant_id)
    if current is None:
        raise NotFound(f"Assistant {assistant_id} not found")
    new = dict(current)
    for key in ("graph_id", "config", "context", "name", "description"):
        if changes.get(key) is not None:
            new[key] = changes[key]
    if changes.get("metadata") is not None:
        new["metadata"] = {**(current["metadata"] or {}), **changes["metadata"]}
    (max_version,) = conn.execute(
        "SELECT max(version) FROM assistant_versions WHERE assistant_id = ?", (assistant_id,)
    ).fetchone()
    version = (max_version or 0) + 1
    at = ts(now())
    fields = (
        new["graph_id"],
        js(new["config"] or {}),
        js(new["context"] or {}),
        js(new["metadata"] or {}),
        new["name"],
        new["description"],
    )
    conn.execute(
        f"INSERT INTO assistant_versions ({VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (assistant_id, *fields, version, at),
    )
    conn.execute(
        "UPDATE assistants SET graph_id = ?, config = ?, context = ?, metadata = ?, name = ?, "
        "description = ?, version = ?, updated_at = ? WHERE assistant_id = ?",
        (*fields, version, at, assistant_id),
    )
    return get(conn, assistant_id)  # type: ignore[return-value]


def delete(conn: sqlite3.Connection, assistant_id: str) -> bool:
    cur = conn.execute("DELETE FROM assistants WHERE assistant_id = ?", (assistant_id,))
    conn.execute("DELETE FROM assistant_versions WHERE assistant_id = ?", (assistant_id,))
    return cur.rowcount > 0


def search(conn: sqlite3.Connection, q: AssistantQuery) -> tuple[list[Record], int]:
    where: list[str] = []
    params: list[Any] = []
    if q.graph_id is not None:
        where.append("graph_id = ?")
        params.append(q.graph_id)
    if q.name:
        escaped = q.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("name LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    meta = filter_sql("metadata", q.metadata, params)
    if meta:
        where.append(meta)
    sort = q.sort_by if q.sort_by in SORTS else "created_at"
    order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
    tiebreak = "" if sort == "assistant_id" else f", assistant_id {order}"
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    rows = conn.execute(
        f"SELECT {ASSISTANT_COLS} FROM assistants{clause} ORDER BY {sort} {order}{tiebreak} LIMIT ? OFFSET ?",
        (*params, max(0, int(q.limit)), max(0, int(q.offset))),
    ).fetchall()
    if where:
        (total,) = conn.execute(f"SELECT count(*) FROM assistants{clause}", params).fetchone()
    else:
        (total,) = conn.execute("SELECT n FROM row_counts WHERE name = 'assistants'").fetchone()
    return [assistant_row(r) for r in rows], total


def versions(
    conn: sqlite3.Connection, assistant_id: str, metadata: dict | None, limit: int, offset: int
) -> list[Record]:
    params: list[Any] = [assistant_id]
    meta = filter_sql("metadata", metadata, params)
    rows = conn.execute(
        f"SELECT {VERSION_COLS} FROM assistant_versions WHERE assistant_id = ?"
        + (f" AND {meta}" if meta else "")
        + " ORDER BY version DESC LIMIT ? OFFSET ?",
        (*params, max(0, int(limit)), max(0, int(offset))),
    ).fetchall()
    return [version_row(r) for r in rows]


def set_latest(conn: sqlite3.Connection, assistant_id: str, version: int) -> Record:
    row = conn.execute(
        "SELECT graph_id, config, context, metadata, name, description "
        "FROM assistant_versions WHERE assistant_id = ? AND version = ?",
        (assistant_id, int(version)),
    ).fetchone()
    if row is None:
        if get(conn, assistant_id) is None:
            raise NotFound(f"Assistant {assistant_id} not found")
        raise NotFound(f"Assistant {assistant_id} has no version {version}")
    cur = conn.execute(
        "UPDATE assistants SET graph_id = ?, config = ?, context = ?, metadata = ?, name = ?, "
        "description = ?, version = ?, updated_at = ? WHERE assistant_id = ?",
        (*row, int(version), ts(now()), assistant_id),
    )
    if cur.rowcount == 0:
        raise NotFound(f"Assistant {assistant_id} not found")
    return get(conn, assistant_id)  # type: ignore[return-value]
