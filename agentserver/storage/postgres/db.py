"""How the resource modules run their statements: on a pooled connection, with the transient
error retries of `pool.run_with_retries`, outside a transaction (`_read`) or inside one (`_tx`,
optionally pipelined). `PostgresStorage` and its resource mixins all derive from `Db`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row

from agentserver.storage.postgres.pool import DictConnection, DictPool, run_with_retries

T = TypeVar("T")


def cursor(conn: DictConnection) -> AsyncCursor[DictRow]:
    return conn.cursor(row_factory=dict_row, binary=True)


class Db:
    """The pool and the ways of using it; the resource mixins' only dependency."""

    _pool: DictPool

    async def _read(
        self,
        fn: Callable[[AsyncCursor[DictRow]], Awaitable[T]],
        *,
        retry_on: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """One or more statements outside an explicit transaction (each is atomic)."""

        async def work(conn: DictConnection) -> T:
            async with cursor(conn) as cur:
                return await fn(cur)

        return await run_with_retries(self._pool, work, retry_on=retry_on)

    async def _tx(
        self,
        fn: Callable[[AsyncCursor[DictRow]], Awaitable[T]],
        *,
        retry_on: Callable[[BaseException], bool] | None = None,
        pipeline: bool = False,
    ) -> T:
        """`fn` in one transaction, run again from scratch on transient errors. With
        `pipeline`, statements go out without waiting for each other's results (BEGIN, the
        statements up to the first fetch, then COMMIT: two round trips)."""

        async def work(conn: DictConnection) -> T:
            if pipeline:
                async with conn.pipeline():
                    async with conn.transaction():
                        async with cursor(conn) as cur:
                            return await fn(cur)
            async with conn.transaction():
                async with cursor(conn) as cur:
                    return await fn(cur)

        return await run_with_retries(self._pool, work, retry_on=retry_on)

    async def _one(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        async def q(cur: AsyncCursor[DictRow]) -> dict[str, Any] | None:
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
        async def q(cur: AsyncCursor[DictRow]) -> list[dict[str, Any]]:
            await cur.execute(sql, params)
            return await cur.fetchall()

        return await self._read(q, retry_on=retry_on)
