"""The search page shared by assistant and thread search: filters, sort, one page and the
number of matches (no count query when the first page already holds them all)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncCursor
from psycopg.rows import DictRow

from agentserver.storage.postgres.db import Db


def order_by(columns: tuple[str, ...], order: str) -> str:
    direction = "ASC" if str(order).lower() == "asc" else "DESC"
    return ", ".join(f"{c} {direction}" for c in columns)


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_page(
    db: Db,
    table: str,
    cols: str,
    where: list[str],
    params: dict[str, Any],
    order: str,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of `table` (rows of `cols`) matching all of `where`, and the number of matches."""
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    page_sql = f"SELECT {cols} FROM {table} {clause} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
    count_sql = f"SELECT count(*) AS n FROM {table} {clause}"
    params = {**params, "limit": max(0, limit), "offset": max(0, offset)}

    async def q(cur: AsyncCursor[DictRow]) -> tuple[list[dict[str, Any]], int]:
        await cur.execute(page_sql, params)
        rows = await cur.fetchall()
        if offset == 0 and len(rows) < limit:
            return rows, len(rows)  # the whole result fits in this page
        await cur.execute(count_sql, params)
        count = await cur.fetchone()
        assert count is not None  # an aggregate: always one row
        return rows, count["n"]

    return await db._read(q)
