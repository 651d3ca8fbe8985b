"""`EmbeddedStorage`: the storage port on SQLite files in one local directory.

Layout of the directory (created if missing):
  * `agentserver.sqlite`  assistants (+ versions), threads, runs (the queue); its schema is the
    versioned files of `migrations/` (see `schema.py`);
  * `checkpoints.sqlite`  LangGraph checkpoints, kept by `DurableMemorySaver`
    (memory in front, group-committed write-behind journal behind; see `saver.py`);
  * `store.sqlite`        the long-term memory store (`AsyncSqliteStore`).

Threading: one dedicated thread owns the `agentserver.sqlite` connection; every call hops there
with `loop.run_in_executor`, so the event loop never blocks and statements never interleave.
Every write is one `BEGIN IMMEDIATE` transaction, which also serialises writers of other
processes that might open the same file (the checkpointer's lock file forbids that in practice).
The class only composes: each method runs a function of `assistants`, `threads`, `runs` or
`search` (plain functions taking the connection) on that thread, reading or in a transaction.

Durability: WAL mode with `synchronous=NORMAL`: a committed transaction survives a crash of the
process (not necessarily an OS crash or power loss).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore, TTLConfig

from agentserver.errors import Unavailable
from agentserver.storage.base import (
    AssistantQuery,
    Claimed,
    CreateRunResult,
    Record,
    RunEnd,
    Storage,
    ThreadQuery,
)
from agentserver.storage.sqlite import assistants, runs, schema, threads
from agentserver.storage.sqlite.saver import DurableMemorySaver
from agentserver.storage.sqlite.search import sqlite_json_contains

if TYPE_CHECKING:
    from langgraph.store.sqlite.base import SqliteIndexConfig

T = TypeVar("T")

DB_FILE = "agentserver.sqlite"
CHECKPOINTS_FILE = "checkpoints.sqlite"
STORE_FILE = "store.sqlite"


def _ping_db(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the database file


class EmbeddedStorage(Storage):
    """SQLite storage on local disk. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ".agentserver",
        *,
        store_index: SqliteIndexConfig | None = None,
        store_ttl: TTLConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self._store_index = store_index
        self._store_ttl = store_ttl
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the executor thread only
        self._checkpointer = DurableMemorySaver(self.path / CHECKPOINTS_FILE)
        self._store: Any = None
        self._store_conn: Any = None
        self._setup_lock = asyncio.Lock()
        self._open = False

    # ---- lifecycle -------------------------------------------------------------------------
    async def setup(self) -> None:
        async with self._setup_lock:
            if self._open:
                return
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentserver-sqlite")
            try:
                await self._call(self._open_db)
                await self._checkpointer.asetup()
                self._store, self._store_conn = await self._open_store()
            except BaseException:
                await self._teardown()
                raise
            self._open = True

    async def close(self) -> None:
        async with self._setup_lock:
            self._open = False
            await self._teardown()

    async def _teardown(self) -> None:
        if self._store is not None:
            task = getattr(self._store, "_task", None)
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - cancelled on purpose
                    pass
            self._store = None
        if self._store_conn is not None:
            await self._store_conn.close()
            self._store_conn = None
        await self._checkpointer.aclose()
        if self._executor is not None:
            if self._conn is not None:
                await self._call(self._close_db)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _open_db(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path / DB_FILE), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA cache_size=-131072")  # up to 128 MiB of pages, as used
            conn.execute("PRAGMA mmap_size=268435456")  # reads through the OS page cache
            conn.create_function("agentserver_json_contains", 2, sqlite_json_contains, deterministic=True)
            schema.migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _open_store(self) -> tuple[Any, Any]:
        import aiosqlite
        from langgraph.store.sqlite.aio import AsyncSqliteStore

        conn = await aiosqlite.connect(str(self.path / STORE_FILE), isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=10000")
            store = AsyncSqliteStore(conn, index=self._store_index, ttl=self._store_ttl)
            await store.setup()
        except BaseException:
            await conn.close()
            raise
        return store, conn

    async def open_loop_resources(self, pool_size: int):
        """For BG_JOB_ISOLATED_LOOPS: the checkpointer works from any loop; the store gets a
        connection of its own on the calling loop."""
        store, conn = await self._open_store()

        async def aclose() -> None:
            task = getattr(store, "_task", None)
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - cancelled on purpose
                    pass
            await conn.close()

        return self._checkpointer, store, aclose

    @property
    def checkpointer(self) -> BaseCheckpointSaver:
        return self._checkpointer

    @property
    def store(self) -> BaseStore:
        if self._store is None:
            raise RuntimeError("EmbeddedStorage.setup() must be awaited before using the store")
        return self._store

    async def checkpoint_barrier(self) -> None:
        await self._checkpointer.flush()

    async def ping(self) -> None:
        if not self._open:
            raise Unavailable("embedded storage is not open")
        await self._read(_ping_db)

    # ---- plumbing --------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise Unavailable("embedded storage is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as exc:
            msg = str(exc).lower()
            if "locked" in msg or "busy" in msg or "disk" in msg or "unable to open" in msg:
                raise Unavailable(f"embedded database unavailable: {exc}") from exc
            raise

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._read_on_thread, fn, args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._tx_on_thread, fn, args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable("embedded storage is closed")
        return self._conn

    def _read_on_thread(self, fn: Callable[..., T], args: tuple) -> T:
        return fn(self._db(), *args)

    def _tx_on_thread(self, fn: Callable[..., T], args: tuple) -> T:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ---- assistants (assistants.py) --------------------------------------------------------
    async def assistant_create(self, assistant: Record, *, if_exists: str = "raise") -> Record:
        return await self._write(assistants.create, assistant, if_exists)

    async def assistant_get(self, assistant_id: str) -> Record | None:
        return await self._read(assistants.get, assistant_id)

    async def assistant_update(self, assistant_id: str, changes: Record) -> Record:
        return await self._write(assistants.update, assistant_id, changes)

    async def assistant_delete(self, assistant_id: str) -> bool:
        return await self._write(assistants.delete, assistant_id)

    async def assistant_search(self, query: AssistantQuery) -> tuple[list[Record], int]:
        return await self._read(assistants.search, query)

    async def assistant_versions(
        self, assistant_id: str, *, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        return await self._read(assistants.versions, assistant_id, metadata, limit, offset)

    async def assistant_set_latest(self, assistant_id: str, version: int) -> Record:
        return await self._write(assistants.set_latest, assistant_id, version)

    # ---- threads (threads.py, search.py) ---------------------------------------------------
    async def thread_create(self, thread: Record, *, if_exists: str = "raise") -> Record:
        return await self._write(threads.create, thread, if_exists)

    async def thread_get(self, thread_id: str) -> Record | None:
        return await self._read(threads.get, thread_id)

    async def thread_update(self, thread_id: str, *, metadata: dict | None = None, ttl: Record | None = None) -> Record:
        return await self._write(threads.update, thread_id, metadata, ttl)

    async def thread_set_state(
        self, thread_id: str, *, values: Any, interrupts: dict | None, status: str | None = None
    ) -> None:
        await self._write(threads.set_state, thread_id, values, interrupts, status)

    async def thread_delete(self, thread_id: str) -> bool:
        return await self._write(threads.delete, thread_id)

    async def thread_search(self, query: ThreadQuery) -> tuple[list[Record], int]:
        return await self._read(threads.search, query)

    async def thread_expired(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        return await self._read(threads.expired, now, limit)

    # ---- runs, the queue (runs.py) ---------------------------------------------------------
    async def run_create(
        self,
        run: Record,
        *,
        thread: Record | None,
        if_not_exists: str = "reject",
        multitask_strategy: str = "enqueue",
    ) -> CreateRunResult:
        return await self._write(runs.create, run, thread, if_not_exists, multitask_strategy)

    async def run_get(self, run_id: str, thread_id: str | None = None) -> Record | None:
        return await self._read(runs.get, run_id, thread_id)

    async def run_list(self, thread_id: str, *, status: str | None, limit: int, offset: int) -> list[Record]:
        return await self._read(runs.list_runs, thread_id, status, limit, offset)

    async def run_delete(self, run_id: str, thread_id: str | None = None) -> bool:
        return await self._write(runs.delete, run_id, thread_id)

    async def run_inflight(self, *, thread_id: str | None = None, status: str = "all") -> list[Record]:
        return await self._read(runs.inflight, thread_id, status)

    async def claim_runs(self, worker_id: str, limit: int, lease_secs: float, max_attempts: int) -> list[Claimed]:
        if limit <= 0:
            return []
        return await self._write(runs.claim, worker_id, limit, lease_secs, max_attempts)

    async def renew_leases(self, worker_id: str, lease_ids: Sequence[str], lease_secs: float) -> set[str]:
        wanted = {str(x) for x in lease_ids}
        if not wanted:
            return set()
        return await self._write(runs.renew_leases, worker_id, wanted, lease_secs)

    async def run_finish(self, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
        return await self._write(runs.finish, run_id, lease_id, end)

    async def run_requeue(self, run_id: str, lease_id: str, *, delay_secs: float = 0.0) -> bool:
        return await self._write(runs.requeue, run_id, lease_id, delay_secs)

    async def fail_exhausted(self, max_attempts: int) -> list[Record]:
        return await self._write(runs.fail_exhausted, max_attempts)

    async def next_wakeup(self) -> datetime | None:
        return await self._read(runs.next_wakeup)
