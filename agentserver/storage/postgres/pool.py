"""Postgres connection pools: creation, sizing, health tracking and transient-error retries.

One `AsyncConnectionPool` per event loop is shared by our own queries and LangGraph's
checkpointer and store. Connections are in autocommit mode with `dict_row` rows and
`prepare_threshold=0` (what LangGraph's Postgres classes expect), JSON decoded by orjson; our
multi-statement work runs inside explicit `conn.transaction()` blocks.

Outages. psycopg_pool alone recovers slowly (exponential reconnect backoff from 1 s, and a
broken idle connection costs each borrower a 1 s back-off sleep). `ResilientPool` adds:
  * a `check` on every borrow (`AsyncConnectionPool.check_connection`); a failed check, a
    connection error in a query, or a failed reconnection reports the connection lost;
  * on a loss, one probe connection decides if the server is reachable, and the idle
    connections are all checked at once (`pool.check()`), so broken ones are dropped together;
  * while the server is unreachable, borrowers wait at most `OUTAGE_ACQUIRE_TIMEOUT` (the ones
    already waiting are cut short too), then `run_with_retries` raises `Unavailable`;
  * short reconnect attempts (`RECONNECT_TIMEOUT`), so a slot never sleeps long in back-off
    and the pool is serving again within about a second after the server returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from agentserver.errors import Unavailable
from agentserver.utils import loads

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Our connections all make dict rows (`connection_kwargs`), which LangGraph's classes expect too.
DictConnection: TypeAlias = AsyncConnection[DictRow]
DictPool: TypeAlias = AsyncConnectionPool[AsyncConnection[DictRow]]

DEFAULT_POOL_MAX_SIZE = 150
# How long a borrower waits for a free connection while the database is healthy (pool busy).
POOL_TIMEOUT = 30.0
# How long a borrower waits while the database is known to be unreachable.
OUTAGE_ACQUIRE_TIMEOUT = 1.0
# How long the pool keeps retrying one lost connection slot before giving the slot back
# (a later borrower grows the pool again, with a fresh, immediate attempt).
RECONNECT_TIMEOUT = 0.5
# libpq connect timeout (seconds, integer) unless the URI sets one.
CONNECT_TIMEOUT = 5
# Transient-error retries inside the storage.
RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY = 0.025

# SQLSTATEs that mean "this connection or server went away" (class 08 and operator intervention).
_CONNECTION_STATES = {"57P01", "57P02", "57P03"}
# SQLSTATEs that mean "run the transaction again".
_RETRY_STATES = {"40001", "40P01"}


def pool_size_per_loop(total: int, loops: int) -> int:
    """Split a process's connection budget (`LANGGRAPH_POSTGRES_POOL_MAX_SIZE`) between
    `loops` pools (one per isolated event loop). Never below 2: a run needs one connection for
    its checkpoints while the job holds another for queue bookkeeping."""
    return max(2, total // max(1, loops))


def connection_kwargs(uri: str) -> dict[str, Any]:
    """Connection options shared by the pool and the migration connection."""
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    try:
        params = conninfo_to_dict(uri)
    except psycopg.ProgrammingError:
        params = {}
    if "connect_timeout" not in params:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    return kwargs


class PoolHealth:
    """Whether the database looks reachable, and the borrowers to cut short when it is not."""

    # a connection returned to the pool less than this long ago is lent without a round trip;
    # a broken one is caught by the query itself (retried by the storage, reported via lost())
    FRESH_SECS = 5.0

    def __init__(self) -> None:
        self.pool: DictPool | None = None
        self.healthy = True
        self._returned: weakref.WeakKeyDictionary[DictConnection, float] = weakref.WeakKeyDictionary()
        self.waiters: set[asyncio.Timeout] = set()
        self._probe: asyncio.Task | None = None

    # Called by the pool ------------------------------------------------------------------
    async def check(self, conn: DictConnection) -> None:
        """The pool's `check` callback: psycopg's own check, reporting the outcome.

        For our autocommit connections this is `AsyncConnectionPool.check_connection` (an empty
        query) without its server-side prepare: with `prepare_threshold=0` psycopg would
        prepare the empty statement on every borrow, and never cache it. Connections that were
        in use moments ago are not checked again."""
        returned = self._returned.get(conn)
        if self.healthy and returned is not None and time.monotonic() - returned < self.FRESH_SECS:
            return
        try:
            if conn.autocommit:
                await conn.execute("", prepare=False)
            else:
                await AsyncConnectionPool.check_connection(conn)
        except Exception:
            self.lost()
            raise
        self.healthy = True

    async def configure(self, conn: DictConnection) -> None:
        """The pool's `configure` callback: a new connection. JSON columns are decoded with
        orjson (for our queries and LangGraph's alike), set once here rather than per cursor."""
        set_json_loads(loads, conn)
        self.healthy = True

    def returned(self, conn: DictConnection) -> None:
        """A connection came back to the pool (psycopg_pool rolls back one left in a
        transaction, and drops a broken one)."""
        self._returned[conn] = time.monotonic()

    async def reconnect_failed(self, pool: AsyncConnectionPool[Any]) -> None:
        self.mark_unreachable()

    # Called by us --------------------------------------------------------------------------
    def ok(self) -> None:
        self.healthy = True

    def lost(self) -> None:
        """A connection broke: probe the server (once at a time) and purge the idle ones."""
        if self._probe is None or self._probe.done():
            try:
                self._probe = asyncio.get_running_loop().create_task(self._probe_and_purge())
            except RuntimeError:  # no running loop (interpreter shutdown)
                self.healthy = False

    def mark_unreachable(self) -> None:
        self.healthy = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTAGE_ACQUIRE_TIMEOUT
        for cm in list(self.waiters):
            when = cm.when()
            if when is None or when > deadline:
                cm.reschedule(deadline)

    async def _probe_and_purge(self) -> None:
        pool = self.pool
        if pool is None:
            return
        try:
            conninfo = pool.conninfo if isinstance(pool.conninfo, str) else ""
            kwargs = dict(pool.kwargs) if isinstance(pool.kwargs, dict) else {}
            kwargs["connect_timeout"] = min(int(kwargs.get("connect_timeout") or 2), 2)
            try:
                probe = await AsyncConnection.connect(conninfo, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure means unreachable
                logger.warning("postgres unreachable: %s", exc)
                self.mark_unreachable()
            else:
                await probe.close()
            if not pool.closed:
                await pool.check()
        except Exception as exc:  # noqa: BLE001 - the probe must never crash the caller
            logger.debug("postgres pool purge failed: %s", exc)

    async def aclose(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)


class ResilientPool(DictPool):
    """An `AsyncConnectionPool` that tracks the health of its database (see the module doc).

    It notes when each connection comes back here rather than in a `reset` callback: with one,
    psycopg_pool hands every returned connection to a background task, a hop per query."""

    health: PoolHealth

    async def putconn(self, conn: DictConnection) -> None:
        self.health.returned(conn)
        await super().putconn(conn)


def create_pool(
    uri: str,
    *,
    max_size: int = DEFAULT_POOL_MAX_SIZE,
    min_size: int | None = None,
    name: str | None = None,
    timeout: float = POOL_TIMEOUT,
) -> ResilientPool:
    """A pool for `uri`, not yet open: `await pool.open()` (in the loop that will use it)."""
    max_size = max(1, int(max_size))
    if min_size is None:
        min_size = min(2, max_size)
    health = PoolHealth()
    pool = ResilientPool(
        uri,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs=connection_kwargs(uri),
        open=False,
        name=name,
        timeout=timeout,
        reconnect_timeout=RECONNECT_TIMEOUT,
        check=health.check,
        configure=health.configure,
        reconnect_failed=health.reconnect_failed,
    )
    health.pool = pool
    pool.health = health
    return pool


async def acquire(pool: DictPool) -> DictConnection:
    """Borrow a connection; while the database is unreachable, give up quickly
    (`TimeoutError` / `PoolTimeout`)."""
    health: PoolHealth | None = getattr(pool, "health", None)
    if health is None:
        return await pool.getconn()
    limit = pool.timeout if health.healthy else min(pool.timeout, OUTAGE_ACQUIRE_TIMEOUT)
    async with asyncio.timeout(limit) as cm:
        health.waiters.add(cm)
        try:
            # asyncio.timeout rules (it can be cut short); the pool's own limit is a backstop.
            return await pool.getconn(timeout=limit + 1.0)
        finally:
            health.waiters.discard(cm)


@asynccontextmanager
async def connection(pool: DictPool) -> AsyncIterator[DictConnection]:
    conn = await acquire(pool)
    try:
        yield conn
    finally:
        await pool.putconn(conn)


def is_connection_error(exc: BaseException) -> bool:
    """The connection or the server went away (the work may be retried on another one)."""
    if isinstance(exc, (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith("08") or state in _CONNECTION_STATES
    return isinstance(exc, psycopg.InterfaceError) and "closed" in str(exc)


def is_retriable(exc: BaseException) -> bool:
    """Serialization failures and deadlocks: the transaction was rolled back, run it again."""
    return isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) in _RETRY_STATES


async def run_with_retries(
    pool: DictPool,
    fn: Callable[[DictConnection], Awaitable[T]],
    *,
    attempts: int = RETRY_ATTEMPTS,
    retry_on: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run `fn(conn)` on a pooled connection, again on transient errors (lost connection,
    admin shutdown, serialization failure, deadlock, or `retry_on(exc)`), with a short jittered
    backoff. Raise `Unavailable` when the database stays unreachable or keeps failing."""
    health: PoolHealth | None = getattr(pool, "health", None)
    last: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(RETRY_BASE_DELAY * (2 ** (attempt - 1)) * (0.5 + random.random()))
        try:
            conn = await acquire(pool)
        except PoolClosed as exc:
            raise Unavailable("The database connection pool is closed") from exc
        except (PoolTimeout, TimeoutError) as exc:
            if health is not None and health.healthy:
                raise Unavailable("The database is overloaded: no free connection") from exc
            raise Unavailable("The database is unavailable") from exc
        try:
            result = await fn(conn)
        except Exception as exc:  # noqa: BLE001 - classified below
            if is_connection_error(exc):
                if health is not None:
                    health.lost()
            elif not (is_retriable(exc) or (retry_on is not None and retry_on(exc))):
                raise
            last = exc
            logger.info("transient database error (attempt %d/%d): %s", attempt + 1, attempts, exc)
            continue
        finally:
            await pool.putconn(conn)
        if health is not None:
            health.ok()
        return result
    raise Unavailable(f"The database is unavailable: {describe(last)}") from last


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, (TimeoutError, PoolTimeout)):
        return "no connection could be made in time"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
