"""`PostgresStorage`: the pool, setup (migrations, LangGraph's checkpointer and store) and close,
composed with the resource mixins that hold the SQL (`assistants`, `threads`, `runs`, `queue`)."""

from __future__ import annotations

from typing import Any

from langgraph.store.base import TTLConfig
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.postgres.base import PostgresIndexConfig

from agentserver.storage.base import Storage
from agentserver.storage.postgres.assistants import AssistantQueries
from agentserver.storage.postgres.checkpointer import PostgresCheckpointer
from agentserver.storage.postgres.migrate import migrate
from agentserver.storage.postgres.pool import (
    DEFAULT_POOL_MAX_SIZE,
    DictPool,
    PoolHealth,
    create_pool,
)
from agentserver.storage.postgres.queue import QueueQueries
from agentserver.storage.postgres.runs import RunQueries
from agentserver.storage.postgres.threads import ThreadQueries


class PostgresStorage(AssistantQueries, ThreadQueries, RunQueries, QueueQueries, Storage):
    """`Storage` on Postgres. One instance (and one pool) per event loop.

    `pool_max_size` bounds the connections of this instance's pool (shared with LangGraph's
    checkpointer and store). Pass `pool` to share a pool you created (with
    `pool.create_pool`, opened or not); the storage then does not close it.
    """

    def __init__(
        self,
        uri: str,
        *,
        pool_max_size: int = DEFAULT_POOL_MAX_SIZE,
        pool: DictPool | None = None,
        pool_min_size: int | None = None,
        store_index: PostgresIndexConfig | None = None,
        store_ttl: TTLConfig | None = None,
    ) -> None:
        self.uri = uri
        self.pool_max_size = pool_max_size
        self._owns_pool = pool is None
        self._pool: DictPool = pool or create_pool(
            uri, max_size=pool_max_size, min_size=pool_min_size, name="agentserver"
        )
        self._store_index = store_index
        self._store_ttl = store_ttl
        self._checkpointer: Any = None
        self._store: Any = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def pool(self) -> DictPool:
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
        pool = create_pool(self.uri, max_size=pool_size, min_size=0, name="agentserver-job-loop")
        await pool.open(wait=False)
        checkpointer = PostgresCheckpointer(pool)
        store = AsyncPostgresStore(pool, index=self._store_index, ttl=self._store_ttl)

        async def aclose() -> None:
            await pool.health.aclose()
            await pool.close()

        return checkpointer, store, aclose

    async def __aenter__(self) -> PostgresStorage:
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
