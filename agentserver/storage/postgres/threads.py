"""Threads on Postgres: create, read, update (metadata, TTL), state mirror, delete (its runs go
with it, `ON DELETE CASCADE`), search and TTL expiry. What runs do to their thread (busy on
create, settled on finish) is in `runs.py`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg.rows import DictRow

from agentserver.errors import Conflict, NotFound
from agentserver.storage.base import Record, ThreadQuery
from agentserver.storage.postgres.db import Db
from agentserver.storage.postgres.rows import (
    THREAD_COLS,
    TOUCH_THREAD,
    json_param,
    thread_params,
    thread_record,
    ttl_param,
)
from agentserver.storage.postgres.search import order_by, search_page

# ---- SQL ---------------------------------------------------------------------------------------
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


class ThreadQueries(Db):
    """The thread methods of `PostgresStorage`."""

    async def thread_create(self, thread: Record, *, if_exists: str = "raise") -> Record:
        params = thread_params(thread["thread_id"], thread)

        async def q(cur: AsyncCursor[DictRow]) -> dict[str, Any] | None:
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
        return thread_record(row)

    async def thread_get(self, thread_id: str) -> Record | None:
        row = await self._one(SQL_THREAD_GET, (thread_id,))
        return thread_record(row) if row else None

    async def thread_update(self, thread_id: str, *, metadata: dict | None = None, ttl: Record | None = None) -> Record:
        strategy, minutes = ttl_param(ttl)
        row = await self._one(
            SQL_THREAD_UPDATE,
            {
                "thread_id": thread_id,
                "metadata": json_param(metadata) if metadata else None,
                "set_ttl": ttl is not None,
                "ttl_strategy": strategy,
                "ttl_minutes": minutes,
            },
        )
        if row is None:
            raise NotFound(f"Thread '{thread_id}' not found")
        return thread_record(row)

    async def thread_set_state(
        self, thread_id: str, *, values: Any, interrupts: dict | None, status: str | None = None
    ) -> None:
        row = await self._one(
            SQL_THREAD_SET_STATE,
            {
                "thread_id": thread_id,
                "values": json_param(values),
                "interrupts": json_param(interrupts or {}),
                "status": status,
            },
        )
        if row is None:
            raise NotFound(f"Thread '{thread_id}' not found")

    async def thread_delete(self, thread_id: str) -> bool:
        return await self._one(SQL_THREAD_DELETE, (thread_id,)) is not None

    async def thread_search(self, query: ThreadQuery) -> tuple[list[Record], int]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if query.ids is not None:
            where.append("thread_id = ANY(%(ids)s)")
            params["ids"] = [str(i) for i in query.ids]
        if query.metadata:
            where.append("metadata @> %(metadata)s")
            params["metadata"] = json_param(query.metadata)
        if query.values:
            where.append('"values" @> %(values)s')
            params["values"] = json_param(query.values)
        if query.status:
            where.append("status = %(status)s")
            params["status"] = query.status
        order = order_by(THREAD_SORTS.get(query.sort_by, THREAD_SORTS["created_at"]), query.sort_order)
        rows, total = await search_page(self, "threads", THREAD_COLS, where, params, order, query.limit, query.offset)
        return [thread_record(r) for r in rows], total

    async def thread_expired(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        rows = await self._all(SQL_THREAD_EXPIRED, {"now": now, "limit": max(0, limit)})
        return [(r["thread_id"], r["ttl_strategy"]) for r in rows]
