"""Assistants on Postgres: versioned (`assistant_versions` keeps every version, `assistants` the
current one), searched with the shared search page."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor
from psycopg.rows import DictRow

from agentserver.errors import Conflict, NotFound
from agentserver.storage.base import AssistantQuery, Record
from agentserver.storage.postgres.db import Db
from agentserver.storage.postgres.rows import (
    ASSISTANT_COLS,
    assistant_record,
    json_param,
)
from agentserver.storage.postgres.search import like_pattern, order_by, search_page

# ---- SQL ---------------------------------------------------------------------------------------
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
SQL_ASSISTANT_NEXT_VERSION = "SELECT COALESCE(max(version), 0) + 1 AS v FROM assistant_versions WHERE assistant_id = %s"
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


class AssistantQueries(Db):
    """The assistant methods of `PostgresStorage`."""

    async def assistant_create(self, assistant: Record, *, if_exists: str = "raise") -> Record:
        params = {
            "assistant_id": assistant["assistant_id"],
            "graph_id": assistant["graph_id"],
            "config": json_param(assistant.get("config") or {}),
            "context": json_param(assistant.get("context")),
            "metadata": json_param(assistant.get("metadata") or {}),
            "name": assistant.get("name"),
            "description": assistant.get("description"),
            "created_at": assistant.get("created_at"),
            "updated_at": assistant.get("updated_at"),
        }

        async def q(cur: AsyncCursor[DictRow]) -> dict[str, Any] | None:
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
        return assistant_record(row)

    async def assistant_get(self, assistant_id: str) -> Record | None:
        row = await self._one(SQL_ASSISTANT_GET, (assistant_id,))
        return assistant_record(row) if row else None

    async def assistant_update(self, assistant_id: str, changes: Record) -> Record:
        async def q(cur: AsyncCursor[DictRow]) -> dict[str, Any]:
            await cur.execute(SQL_ASSISTANT_GET_FOR_UPDATE, (assistant_id,))
            current = await cur.fetchone()
            if current is None:
                raise NotFound(f"Assistant '{assistant_id}' not found")
            await cur.execute(SQL_ASSISTANT_NEXT_VERSION, (assistant_id,))
            next_version = await cur.fetchone()
            assert next_version is not None  # an aggregate: always one row
            version = next_version["v"]
            merged = dict(current["metadata"] or {})
            if changes.get("metadata"):
                merged.update(changes["metadata"])
            fields = {
                "assistant_id": assistant_id,
                "version": version,
                "graph_id": changes.get("graph_id") or current["graph_id"],
                "config": json_param(changes["config"] if changes.get("config") is not None else current["config"]),
                "context": json_param(changes["context"] if "context" in changes else current["context"]),
                "metadata": json_param(merged),
                "name": changes["name"] if "name" in changes else current["name"],
                "description": (changes["description"] if "description" in changes else current["description"]),
            }
            await cur.execute(SQL_ASSISTANT_VERSION_INSERT, fields)
            await cur.execute(SQL_ASSISTANT_UPDATE, fields)
            updated = await cur.fetchone()
            assert updated is not None  # the row is locked FOR UPDATE by this transaction
            return updated

        return assistant_record(await self._tx(q))

    async def assistant_delete(self, assistant_id: str) -> bool:
        return await self._one(SQL_ASSISTANT_DELETE, (assistant_id,)) is not None

    async def assistant_search(self, query: AssistantQuery) -> tuple[list[Record], int]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if query.graph_id is not None:
            where.append("graph_id = %(graph_id)s")
            params["graph_id"] = query.graph_id
        if query.name:
            where.append("name ILIKE %(name)s")
            params["name"] = like_pattern(query.name)
        if query.metadata:
            where.append("metadata @> %(metadata)s")
            params["metadata"] = json_param(query.metadata)
        order = order_by(ASSISTANT_SORTS.get(query.sort_by, ASSISTANT_SORTS["created_at"]), query.sort_order)
        rows, total = await search_page(
            self, "assistants", ASSISTANT_COLS, where, params, order, query.limit, query.offset
        )
        return [assistant_record(r) for r in rows], total

    async def assistant_versions(
        self, assistant_id: str, *, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        filters = "AND metadata @> %(metadata)s" if metadata else ""
        rows = await self._all(
            SQL_ASSISTANT_VERSIONS.format(filters=filters),
            {
                "assistant_id": assistant_id,
                "metadata": json_param(metadata) if metadata else None,
                "limit": max(0, limit),
                "offset": max(0, offset),
            },
        )
        return [assistant_record(r) for r in rows]

    async def assistant_set_latest(self, assistant_id: str, version: int) -> Record:
        row = await self._one(SQL_ASSISTANT_SET_LATEST, {"assistant_id": assistant_id, "version": version})
        if row is None:
            if await self.assistant_get(assistant_id) is None:
                raise NotFound(f"Assistant '{assistant_id}' not found")
            raise NotFound(f"Assistant '{assistant_id}' has no version {version}")
        return assistant_record(row)
