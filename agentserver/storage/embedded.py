"""The embedded storage: SQLite files in one local directory (the `dev` shape).

Layout of the directory (created if missing):
  * `agentserver.sqlite`  assistants (+ versions), threads, runs (the queue);
  * `checkpoints.sqlite`  LangGraph checkpoints, kept by `DurableMemorySaver`
    (memory in front, group-committed write-behind journal behind; see its module);
  * `store.sqlite`        the long-term memory store (`AsyncSqliteStore`).

Threading: one dedicated thread owns the `agentserver.sqlite` connection; every call hops there
with `loop.run_in_executor`, so the event loop never blocks and statements never interleave.
Every write is one `BEGIN IMMEDIATE` transaction, which also serialises writers of other
processes that might open the same file (the checkpointer's lock file forbids that in practice).

Durability: WAL mode with `synchronous=NORMAL`: a committed transaction survives a crash of the
process (not necessarily an OS crash or power loss).

Encoding: timestamps are integer microseconds since the Unix epoch (UTC), turned back into
timezone-aware datetimes in records; JSON fields are stored as JSON text, so metadata / values
filters run in SQLite (`json_extract`, `json_type`, `json_each`) with Postgres `@>` semantics.
Thread and assistant totals come from trigger-maintained counters (threads also per status), so
an unfiltered or status-only page never scans the table.

Thread metadata search: triggers keep `thread_meta`, one row per top-level scalar metadata value
of every thread (key, kind, SQL value, the thread's created_at, thread_id), in step with every
write of `threads`. A filter's top-level scalar entries are index lookups there: the most
selective one drives the page (in created_at order straight from the index), the others are
probes, and only nested objects/arrays keep the JSON predicates, on the narrowed rows. Pages are
two-phase (thread ids first, whole rows for the page only).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

from agentserver.errors import Conflict, NotFound, Unavailable
from agentserver.storage.base import (
    AssistantQuery,
    Claimed,
    CreateRunResult,
    Record,
    RunEnd,
    Storage,
    ThreadQuery,
)
from agentserver.storage.embedded_checkpointer import DurableMemorySaver
from agentserver.utils import dumps, loads, now, uuid7

T = TypeVar("T")

DB_FILE = "agentserver.sqlite"
CHECKPOINTS_FILE = "checkpoints.sqlite"
STORE_FILE = "store.sqlite"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)

# 2: thread_meta (+ counts) and per-status thread counters. `CREATE ... IF NOT EXISTS` never
# replaces an object: changing a trigger or table definition needs a new version whose migration
# drops and recreates it.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assistants (
    assistant_id TEXT PRIMARY KEY,
    graph_id TEXT NOT NULL,
    config TEXT NOT NULL,
    context TEXT NOT NULL,
    metadata TEXT NOT NULL,
    name TEXT,
    description TEXT,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS assistants_created ON assistants (created_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_updated ON assistants (updated_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_graph ON assistants (graph_id, created_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_name ON assistants (name, assistant_id);

CREATE TABLE IF NOT EXISTS assistant_versions (
    assistant_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    graph_id TEXT NOT NULL,
    config TEXT NOT NULL,
    context TEXT NOT NULL,
    metadata TEXT NOT NULL,
    name TEXT,
    description TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (assistant_id, version)
);

CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state_updated_at INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    vals TEXT,
    interrupts TEXT NOT NULL,
    error TEXT,
    ttl TEXT,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS threads_created ON threads (created_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_updated ON threads (updated_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_state_updated ON threads (state_updated_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_status ON threads (status, created_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_expires ON threads (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    assistant_id TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    multitask_strategy TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_id TEXT,
    lease_expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS runs_thread_status ON runs (thread_id, status, created_at, run_id);
CREATE INDEX IF NOT EXISTS runs_thread_created ON runs (thread_id, created_at, run_id);
CREATE INDEX IF NOT EXISTS runs_inflight ON runs (created_at, run_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS runs_lease ON runs (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_available ON runs (available_at) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS row_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO row_counts VALUES ('threads', 0), ('assistants', 0);
CREATE TRIGGER IF NOT EXISTS threads_count_ins AFTER INSERT ON threads
    BEGIN UPDATE row_counts SET n = n + 1 WHERE name = 'threads'; END;
CREATE TRIGGER IF NOT EXISTS threads_count_del AFTER DELETE ON threads
    BEGIN UPDATE row_counts SET n = n - 1 WHERE name = 'threads'; END;
CREATE TRIGGER IF NOT EXISTS assistants_count_ins AFTER INSERT ON assistants
    BEGIN UPDATE row_counts SET n = n + 1 WHERE name = 'assistants'; END;
CREATE TRIGGER IF NOT EXISTS assistants_count_del AFTER DELETE ON assistants
    BEGIN UPDATE row_counts SET n = n - 1 WHERE name = 'assistants'; END;

-- threads per status: row_counts 'threads.status:<status>'
CREATE TRIGGER IF NOT EXISTS threads_status_count_ins AFTER INSERT ON threads BEGIN
    INSERT INTO row_counts VALUES ('threads.status:' || NEW.status, 1)
        ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS threads_status_count_del AFTER DELETE ON threads BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'threads.status:' || OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS threads_status_count_upd AFTER UPDATE OF status ON threads
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'threads.status:' || OLD.status;
    INSERT INTO row_counts VALUES ('threads.status:' || NEW.status, 1)
        ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;

-- Top-level scalar metadata of every thread. kind: 's' text, 'n' number (integer or real, equal
-- when numerically equal, as json_extract compares), 't' true, 'f' false, 'z' null; value: the
-- SQL value json_extract gives (0 for t/f/z). `value` has no affinity: text stays text.
CREATE TABLE IF NOT EXISTS thread_meta (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (key, kind, value, created_at, thread_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thread_meta_thread ON thread_meta (thread_id);
CREATE TRIGGER IF NOT EXISTS thread_meta_ins AFTER INSERT ON threads BEGIN
    INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)
    {meta_rows_new};
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_upd AFTER UPDATE OF metadata, created_at, thread_id ON threads
    WHEN OLD.metadata IS NOT NEW.metadata OR OLD.created_at IS NOT NEW.created_at
        OR OLD.thread_id IS NOT NEW.thread_id BEGIN
    -- only the entries that changed: unchanged ones keep their pages clean
    DELETE FROM thread_meta WHERE thread_id = OLD.thread_id
        AND (key, kind, value, created_at, thread_id) NOT IN ({meta_rows_new});
    INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)
    {meta_rows_new};
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_del AFTER DELETE ON threads BEGIN
    DELETE FROM thread_meta WHERE thread_id = OLD.thread_id;
END;
-- threads per (key, kind, value) of thread_meta (numerically equal numbers share a row)
CREATE TABLE IF NOT EXISTS thread_meta_counts (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (key, kind, value)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS thread_meta_count_ins AFTER INSERT ON thread_meta BEGIN
    INSERT INTO thread_meta_counts VALUES (NEW.key, NEW.kind, NEW.value, 1)
        ON CONFLICT (key, kind, value) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_count_del AFTER DELETE ON thread_meta BEGIN
    UPDATE thread_meta_counts SET n = n - 1
        WHERE key = OLD.key AND kind = OLD.kind AND value = OLD.value;
    DELETE FROM thread_meta_counts
        WHERE key = OLD.key AND kind = OLD.kind AND value = OLD.value AND n <= 0;
END;
"""

# The thread_meta rows of one thread's metadata (used by the triggers and the migration).
_META_ROWS = """SELECT j.key,
        CASE j.type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n'
                    WHEN 'true' THEN 't' WHEN 'false' THEN 'f' ELSE 'z' END,
        CASE WHEN j.type IN ('text', 'integer', 'real') THEN j.atom ELSE 0 END,
        {created_at}, {thread_id}
    FROM {source}json_each({metadata}) AS j
    WHERE json_type({metadata}) = 'object' AND j.type NOT IN ('object', 'array')"""

_SCHEMA = _SCHEMA.replace(
    "{meta_rows_new}",
    _META_ROWS.format(
        source="", created_at="NEW.created_at", thread_id="NEW.thread_id", metadata="NEW.metadata"
    ),
)

# Schema version 1 -> 2: fill thread_meta (its triggers fill thread_meta_counts) and the
# per-status counters from existing threads.
_MIGRATE_2 = (
    "DELETE FROM thread_meta;\n"
    "DELETE FROM thread_meta_counts;\n"
    "INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)\n"
    + _META_ROWS.format(
        source="threads AS t, ", created_at="t.created_at", thread_id="t.thread_id", metadata="t.metadata"
    )
    + ";\n"
    "DELETE FROM row_counts WHERE name LIKE 'threads.status:%';\n"
    "INSERT INTO row_counts SELECT 'threads.status:' || status, count(*) FROM threads "
    "GROUP BY status;\n"
)

_ASSISTANT_COLS = (
    "assistant_id, graph_id, config, context, metadata, name, description, version, "
    "created_at, updated_at"
)
_VERSION_COLS = (
    "assistant_id, graph_id, config, context, metadata, name, description, version, created_at"
)
_THREAD_COLS = (
    "thread_id, created_at, updated_at, state_updated_at, metadata, status, config, vals, "
    "interrupts, error, ttl, expires_at"
)
_RUN_COLS = (
    "run_id, thread_id, assistant_id, metadata, status, kwargs, multitask_strategy, created_at, "
    "updated_at, attempt, available_at, lease_owner, lease_id, lease_expires_at"
)

_ASSISTANT_SORTS = {"assistant_id", "graph_id", "name", "created_at", "updated_at"}
_THREAD_SORTS = {"thread_id", "status", "created_at", "updated_at", "state_updated_at"}

_REJECT_MESSAGE = (
    "Thread is already running a task. Wait for it to finish or choose a different multitask "
    "strategy."
)


# ---- encoding ------------------------------------------------------------------------------
def _ts(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _US


def _dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def _js(value: Any) -> str:
    return dumps(value).decode()


def _js_or_null(value: Any) -> str | None:
    return None if value is None else _js(value)


def _load(text: str | None) -> Any:
    return None if text is None else loads(text)


def _assistant(row: tuple) -> Record:
    return {
        "assistant_id": row[0],
        "graph_id": row[1],
        "config": loads(row[2]),
        "context": loads(row[3]),
        "metadata": loads(row[4]),
        "name": row[5],
        "description": row[6],
        "version": row[7],
        "created_at": _dt(row[8]),
        "updated_at": _dt(row[9]),
    }


def _version(row: tuple) -> Record:
    """A version row has the assistant's columns but no updated_at: it is its created_at."""
    return _assistant((*row[:9], row[8]))


def _thread(row: tuple) -> Record:
    return {
        "thread_id": row[0],
        "created_at": _dt(row[1]),
        "updated_at": _dt(row[2]),
        "state_updated_at": _dt(row[3]),
        "metadata": loads(row[4]),
        "status": row[5],
        "config": loads(row[6]),
        "values": _load(row[7]),
        "interrupts": loads(row[8]),
        "error": _load(row[9]),
        "ttl": _load(row[10]),
        "expires_at": _dt(row[11]),
    }


def _run(row: tuple) -> Record:
    return {
        "run_id": row[0],
        "thread_id": row[1],
        "assistant_id": row[2],
        "metadata": loads(row[3]),
        "status": row[4],
        "kwargs": loads(row[5]),
        "multitask_strategy": row[6],
        "created_at": _dt(row[7]),
        "updated_at": _dt(row[8]),
        "attempt": row[9],
        "available_at": _dt(row[10]),
        "lease_owner": row[11],
        "lease_id": row[12],
        "lease_expires_at": _dt(row[13]),
    }


def _expires(ttl: Record | None, at: datetime) -> int | None:
    if not ttl:
        return None
    minutes = ttl.get("ttl")
    if minutes is None:
        return None
    return _ts(at + timedelta(minutes=float(minutes)))


def _normalize_ttl(ttl: Record | None) -> Record | None:
    if not ttl or ttl.get("ttl") is None:
        return None
    return {"strategy": ttl.get("strategy") or "delete", "ttl": ttl["ttl"]}


# ---- JSON containment filters (Postgres `@>` semantics) ------------------------------------
def json_contains(doc: Any, filt: Any) -> bool:
    """Does `doc` contain `filt`, as Postgres' jsonb `@>` decides? Objects: every key of the
    filter present with a contained value; arrays: every filter element contained in some
    element; scalars: equal, with booleans never equal to numbers."""
    if isinstance(filt, dict):
        return isinstance(doc, dict) and all(
            k in doc and json_contains(doc[k], v) for k, v in filt.items()
        )
    if isinstance(filt, (list, tuple)):
        return isinstance(doc, list) and all(
            any(json_contains(d, f) for d in doc) for f in filt
        )
    if isinstance(filt, bool) or isinstance(doc, bool):
        return isinstance(doc, bool) and isinstance(filt, bool) and doc == filt
    if isinstance(filt, (int, float)):
        return isinstance(doc, (int, float)) and doc == filt
    return doc == filt


def _sqlite_json_contains(doc: str | None, filt: str) -> int:
    if doc is None:
        return 0
    try:
        return int(json_contains(loads(doc), loads(filt)))
    except Exception:  # noqa: BLE001 - malformed JSON never matches
        return 0


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _path_label(key: str) -> str | None:
    """A JSON path step for `key`, or None if SQLite's path syntax cannot express it."""
    if '"' in key or "\\" in key:
        return None
    return f'."{key}"'


def _containment_sql(col: str, path: str, value: Any, params: list[Any]) -> str:
    """SQL that is true when the JSON at `path` of column `col` contains `value`."""
    if isinstance(value, dict):
        if not value:
            params.append(path)
            return f"json_type({col}, ?) = 'object'"
        parts = []
        for key, sub in value.items():
            label = _path_label(str(key))
            if label is None:
                # fall back to Python for keys the JSON path syntax cannot name
                params.extend([path, _js({key: sub})])
                parts.append(f"agentserver_json_contains({col} -> ?, ?)")
            else:
                parts.append(_containment_sql(col, path + label, sub, params))
        return "(" + " AND ".join(parts) + ")"
    if value is None:
        params.append(path)
        return f"json_type({col}, ?) = 'null'"
    if isinstance(value, bool):
        params.append(path)
        return f"json_type({col}, ?) = '{'true' if value else 'false'}'"
    if isinstance(value, int) and _INT_MIN <= value <= _INT_MAX or isinstance(value, float):
        params.extend([path, path, value])
        return f"(json_type({col}, ?) IN ('integer', 'real') AND json_extract({col}, ?) = ?)"
    if isinstance(value, str):
        params.extend([path, path, value])
        return f"(json_type({col}, ?) = 'text' AND json_extract({col}, ?) = ?)"
    # arrays and anything unusual: exact semantics in Python on the sub-document
    params.extend([path, _js(value)])
    return f"agentserver_json_contains({col} -> ?, ?)"


def _filter_sql(col: str, filt: dict[str, Any] | None, params: list[Any]) -> str | None:
    if not filt:
        return None
    return _containment_sql(col, "$", filt, params)


# ---- thread search plans --------------------------------------------------------------------
_STATUS_COUNT = "threads.status:"

# (key, kind, value): a lookup in thread_meta (see the schema)
_MetaTerm = tuple[str, str, Any]


def _meta_term(key: Any, value: Any) -> _MetaTerm | None:
    """The thread_meta lookup that decides `{key: value}` containment for a top-level scalar,
    exactly as `_containment_sql` would; None for objects, arrays and out-of-range integers."""
    if value is None:
        return (str(key), "z", 0)
    if isinstance(value, bool):
        return (str(key), "t" if value else "f", 0)
    if isinstance(value, int):
        return (str(key), "n", value) if _INT_MIN <= value <= _INT_MAX else None
    if isinstance(value, float):
        return (str(key), "n", value)
    if isinstance(value, str):
        return (str(key), "s", value)
    return None


def _split_metadata(filt: dict[str, Any] | None) -> tuple[list[_MetaTerm], dict[str, Any]]:
    """Split a metadata filter into thread_meta lookups and the rest (nested objects, arrays)."""
    terms: list[_MetaTerm] = []
    rest: dict[str, Any] = {}
    for key, value in (filt or {}).items():
        term = _meta_term(key, value)
        if term is None:
            rest[key] = value
        else:
            terms.append(term)
    return terms, rest


def _term_count(conn: sqlite3.Connection, term: _MetaTerm) -> int:
    row = conn.execute(
        "SELECT n FROM thread_meta_counts WHERE key = ? AND kind = ? AND value = ?", term
    ).fetchone()
    return row[0] if row else 0


def _counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT n FROM row_counts WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def _probe_sql(term: _MetaTerm, alias: str, params: list[Any]) -> str:
    """True when the thread of row `alias` (with created_at, thread_id) matches `term`: one
    primary-key probe of thread_meta."""
    params.extend(term)
    return (
        "EXISTS (SELECT 1 FROM thread_meta AS x WHERE x.key = ? AND x.kind = ? AND x.value = ? "
        f"AND x.created_at = {alias}.created_at AND x.thread_id = {alias}.thread_id)"
    )


@dataclass
class _SearchPlan:
    page_sql: str  # the page's thread ids, in order
    page_params: list[Any]
    count_sql: str | None  # None when `total` is known
    count_params: list[Any]
    total: int | None


def _thread_search_plan(conn: sqlite3.Connection, q: ThreadQuery) -> _SearchPlan:
    """Plan a thread search from the trigger-maintained counts (no scan): the most selective
    metadata term drives (a thread_meta range, in created_at order) unless the status or an id
    list is narrower; other terms are probes; nested parts stay JSON predicates."""
    limit = max(0, int(q.limit))
    offset = max(0, int(q.offset))
    sort = q.sort_by if q.sort_by in _THREAD_SORTS else "created_at"
    order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
    all_threads = _counter(conn, "threads")
    status_n = _counter(conn, _STATUS_COUNT + q.status) if q.status is not None else None
    terms, rest = _split_metadata(q.metadata)
    driver: _MetaTerm | None = None
    driver_n = 0
    if terms:
        counts = [_term_count(conn, t) for t in terms]
        if min(counts) == 0 or status_n == 0:
            return _SearchPlan("SELECT NULL AS thread_id WHERE 0", [], None, [], 0)
        # a term every thread matches (graph_id with one graph) filters nothing
        kept = [(n, t) for n, t in zip(counts, terms) if n < all_threads]
        terms = [t for _, t in kept]
        if kept and q.ids is None:
            driver_n, driver = min(kept, key=lambda nt: nt[0])
            if status_n is not None and status_n < driver_n:
                driver = None  # the status index is narrower

    def plan(for_count: bool) -> tuple[str, list[Any], str, str]:
        """FROM ... WHERE ... of the page or the count; the ORDER BY and id columns."""
        params: list[Any] = []
        where: list[str] = []
        if driver is not None:
            need_t = bool(rest or q.values) or (
                not for_count and sort not in ("created_at", "thread_id")
            )
            source = "thread_meta AS m"
            if need_t:  # CROSS JOIN: m stays the outer loop
                source += " CROSS JOIN threads AS t ON t.thread_id = m.thread_id"
            where.append("m.key = ? AND m.kind = ? AND m.value = ?")
            params.extend(driver)
            for term in terms:
                if term is not driver:
                    where.append(_probe_sql(term, "m", params))
            if q.status is not None:
                if need_t:
                    where.append("t.status = ?")
                else:  # a probe of the covering status index, not a row read
                    where.append(
                        "EXISTS (SELECT 1 FROM threads AS s INDEXED BY threads_status "
                        "WHERE s.status = ? AND s.created_at = m.created_at "
                        "AND s.thread_id = m.thread_id)"
                    )
                params.append(q.status)
            key_col = "m." + sort if sort in ("created_at", "thread_id") else "t." + sort
            id_col = "m.thread_id"
        else:
            source = "threads AS t"
            if q.ids is not None:
                where.append("t.thread_id IN (SELECT value FROM json_each(?))")
                params.append(_js([str(i) for i in q.ids]))
            if q.status is not None:
                # The status index serves counts, narrow statuses and created_at order; a common
                # status is cheaper checked while walking the sort column's index.
                indexed = q.ids is None and (
                    for_count
                    or bool(terms)
                    or sort == "created_at"
                    or (status_n or 0) ** 2 <= (limit + offset) * all_threads
                )
                where.append("t.status = ?" if indexed else "+t.status = ?")
                params.append(q.status)
            for term in terms:
                where.append(_probe_sql(term, "t", params))
            key_col = "t." + sort
            id_col = "t.thread_id"
        meta = _filter_sql("t.metadata", rest, params)
        if meta:
            where.append(meta)
        vals = _filter_sql("t.vals", q.values, params)
        if vals:
            where.append(vals)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return source + clause, params, key_col, id_col

    source, params, key_col, id_col = plan(False)
    tiebreak = "" if sort == "thread_id" else f", {id_col} {order}"
    page_sql = f"SELECT {id_col} FROM {source} ORDER BY {key_col} {order}{tiebreak} LIMIT ? OFFSET ?"
    page_params = [*params, limit, offset]
    if q.ids is None and not rest and not q.values:
        if not terms:
            total = all_threads if q.status is None else status_n
            return _SearchPlan(page_sql, page_params, None, [], total)
        if len(terms) == 1 and q.status is None:
            return _SearchPlan(page_sql, page_params, None, [], driver_n)
    count_source, count_params, _, _ = plan(True)
    return _SearchPlan(
        page_sql, page_params, f"SELECT count(*) FROM {count_source}", count_params, None
    )


def _ping_db(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the database file


class EmbeddedStorage(Storage):
    """SQLite storage on local disk. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ".agentserver",
        *,
        store_index: dict[str, Any] | None = None,
        store_ttl: dict[str, Any] | None = None,
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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-131072")  # up to 128 MiB of pages, as used
        conn.execute("PRAGMA mmap_size=268435456")  # reads through the OS page cache
        conn.create_function("agentserver_json_contains", 2, _sqlite_json_contains, deterministic=True)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{self.path / DB_FILE} has schema version {version}, newer than this server "
                f"({SCHEMA_VERSION}): upgrade agentserver"
            )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # (re)build the derived search tables whenever they are new; idempotent
        fresh = not {"thread_meta", "thread_meta_counts"} <= tables
        migrate = _MIGRATE_2 if version < 2 or fresh else ""
        conn.executescript(
            "BEGIN IMMEDIATE;" + _SCHEMA + migrate + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )
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

    # ---- assistants ------------------------------------------------------------------------
    async def assistant_create(self, assistant: Record, *, if_exists: str = "raise") -> Record:
        return await self._write(self._assistant_create, assistant, if_exists)

    @staticmethod
    def _assistant_get(conn: sqlite3.Connection, assistant_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {_ASSISTANT_COLS} FROM assistants WHERE assistant_id = ?", (assistant_id,)
        ).fetchone()
        return _assistant(row) if row else None

    def _assistant_create(self, conn: sqlite3.Connection, a: Record, if_exists: str) -> Record:
        existing = self._assistant_get(conn, a["assistant_id"])
        if existing is not None:
            if if_exists == "do_nothing":
                return existing
            raise Conflict(f"Assistant {a['assistant_id']} already exists")
        at = _ts(a.get("created_at") or now())
        updated = _ts(a.get("updated_at")) or at
        graph_id = a["graph_id"]
        fields = (
            graph_id,
            _js(a.get("config") or {}),
            _js(a.get("context") or {}),
            _js(a.get("metadata") or {}),
            a.get("name") if a.get("name") is not None else graph_id,
            a.get("description"),
        )
        conn.execute(
            f"INSERT INTO assistants ({_ASSISTANT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (a["assistant_id"], *fields, at, updated),
        )
        conn.execute(
            f"INSERT INTO assistant_versions ({_VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (a["assistant_id"], *fields, at),
        )
        return self._assistant_get(conn, a["assistant_id"])  # type: ignore[return-value]

    async def assistant_get(self, assistant_id: str) -> Record | None:
        return await self._read(self._assistant_get, assistant_id)

    async def assistant_update(self, assistant_id: str, changes: Record) -> Record:
        return await self._write(self._assistant_update, assistant_id, changes)

    def _assistant_update(self, conn: sqlite3.Connection, assistant_id: str, changes: Record) -> Record:
        current = self._assistant_get(conn, assistant_id)
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
        at = _ts(now())
        fields = (
            new["graph_id"],
            _js(new["config"] or {}),
            _js(new["context"] or {}),
            _js(new["metadata"] or {}),
            new["name"],
            new["description"],
        )
        conn.execute(
            f"INSERT INTO assistant_versions ({_VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (assistant_id, *fields, version, at),
        )
        conn.execute(
            "UPDATE assistants SET graph_id = ?, config = ?, context = ?, metadata = ?, name = ?, "
            "description = ?, version = ?, updated_at = ? WHERE assistant_id = ?",
            (*fields, version, at, assistant_id),
        )
        return self._assistant_get(conn, assistant_id)  # type: ignore[return-value]

    async def assistant_delete(self, assistant_id: str) -> bool:
        return await self._write(self._assistant_delete, assistant_id)

    @staticmethod
    def _assistant_delete(conn: sqlite3.Connection, assistant_id: str) -> bool:
        cur = conn.execute("DELETE FROM assistants WHERE assistant_id = ?", (assistant_id,))
        conn.execute("DELETE FROM assistant_versions WHERE assistant_id = ?", (assistant_id,))
        return cur.rowcount > 0

    async def assistant_search(self, query: AssistantQuery) -> tuple[list[Record], int]:
        return await self._read(self._assistant_search, query)

    @staticmethod
    def _assistant_search(conn: sqlite3.Connection, q: AssistantQuery) -> tuple[list[Record], int]:
        where: list[str] = []
        params: list[Any] = []
        if q.graph_id is not None:
            where.append("graph_id = ?")
            params.append(q.graph_id)
        if q.name:
            escaped = q.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("name LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        meta = _filter_sql("metadata", q.metadata, params)
        if meta:
            where.append(meta)
        sort = q.sort_by if q.sort_by in _ASSISTANT_SORTS else "created_at"
        order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
        tiebreak = "" if sort == "assistant_id" else f", assistant_id {order}"
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = conn.execute(
            f"SELECT {_ASSISTANT_COLS} FROM assistants{clause} "
            f"ORDER BY {sort} {order}{tiebreak} LIMIT ? OFFSET ?",
            (*params, max(0, int(q.limit)), max(0, int(q.offset))),
        ).fetchall()
        if where:
            (total,) = conn.execute(f"SELECT count(*) FROM assistants{clause}", params).fetchone()
        else:
            (total,) = conn.execute("SELECT n FROM row_counts WHERE name = 'assistants'").fetchone()
        return [_assistant(r) for r in rows], total

    async def assistant_versions(
        self, assistant_id: str, *, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        return await self._read(self._assistant_versions, assistant_id, metadata, limit, offset)

    @staticmethod
    def _assistant_versions(
        conn: sqlite3.Connection, assistant_id: str, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        params: list[Any] = [assistant_id]
        meta = _filter_sql("metadata", metadata, params)
        rows = conn.execute(
            f"SELECT {_VERSION_COLS} FROM assistant_versions WHERE assistant_id = ?"
            + (f" AND {meta}" if meta else "")
            + " ORDER BY version DESC LIMIT ? OFFSET ?",
            (*params, max(0, int(limit)), max(0, int(offset))),
        ).fetchall()
        return [_version(r) for r in rows]

    async def assistant_set_latest(self, assistant_id: str, version: int) -> Record:
        return await self._write(self._assistant_set_latest, assistant_id, version)

    def _assistant_set_latest(self, conn: sqlite3.Connection, assistant_id: str, version: int) -> Record:
        row = conn.execute(
            "SELECT graph_id, config, context, metadata, name, description "
            "FROM assistant_versions WHERE assistant_id = ? AND version = ?",
            (assistant_id, int(version)),
        ).fetchone()
        if row is None:
            if self._assistant_get(conn, assistant_id) is None:
                raise NotFound(f"Assistant {assistant_id} not found")
            raise NotFound(f"Assistant {assistant_id} has no version {version}")
        cur = conn.execute(
            "UPDATE assistants SET graph_id = ?, config = ?, context = ?, metadata = ?, name = ?, "
            "description = ?, version = ?, updated_at = ? WHERE assistant_id = ?",
            (*row, int(version), _ts(now()), assistant_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"Assistant {assistant_id} not found")
        return self._assistant_get(conn, assistant_id)  # type: ignore[return-value]

    # ---- threads ---------------------------------------------------------------------------
    @staticmethod
    def _thread_get(conn: sqlite3.Connection, thread_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        return _thread(row) if row else None

    @staticmethod
    def _thread_insert(conn: sqlite3.Connection, t: Record, at: datetime) -> None:
        ttl = _normalize_ttl(t.get("ttl"))
        created = t.get("created_at") or at
        updated = t.get("updated_at") or created
        conn.execute(
            f"INSERT INTO threads ({_THREAD_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t["thread_id"],
                _ts(created),
                _ts(updated),
                _ts(t.get("state_updated_at") or updated),
                _js(t.get("metadata") or {}),
                t.get("status") or "idle",
                _js(t.get("config") or {}),
                _js_or_null(t.get("values")),
                _js(t.get("interrupts") or {}),
                _js_or_null(t.get("error")),
                _js_or_null(ttl),
                _expires(ttl, at),
            ),
        )

    async def thread_create(self, thread: Record, *, if_exists: str = "raise") -> Record:
        return await self._write(self._thread_create, thread, if_exists)

    def _thread_create(self, conn: sqlite3.Connection, t: Record, if_exists: str) -> Record:
        existing = self._thread_get(conn, t["thread_id"])
        if existing is not None:
            if if_exists == "do_nothing":
                return existing
            raise Conflict(f"Thread {t['thread_id']} already exists")
        self._thread_insert(conn, t, now())
        return self._thread_get(conn, t["thread_id"])  # type: ignore[return-value]

    async def thread_get(self, thread_id: str) -> Record | None:
        return await self._read(self._thread_get, thread_id)

    async def thread_update(
        self, thread_id: str, *, metadata: dict | None = None, ttl: Record | None = None
    ) -> Record:
        return await self._write(self._thread_update, thread_id, metadata, ttl)

    def _thread_update(
        self, conn: sqlite3.Connection, thread_id: str, metadata: dict | None, ttl: Record | None
    ) -> Record:
        row = conn.execute(
            "SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Thread {thread_id} not found")
        merged = {**loads(row[0]), **(metadata or {})}
        new_ttl = _normalize_ttl(ttl) if ttl is not None else _load(row[1])
        at = now()
        conn.execute(
            "UPDATE threads SET metadata = ?, ttl = ?, expires_at = ?, updated_at = ? "
            "WHERE thread_id = ?",
            (_js(merged), _js_or_null(new_ttl), _expires(new_ttl, at), _ts(at), thread_id),
        )
        return self._thread_get(conn, thread_id)  # type: ignore[return-value]

    async def thread_set_state(
        self, thread_id: str, *, values: Any, interrupts: dict | None, status: str | None = None
    ) -> None:
        await self._write(self._thread_set_state, thread_id, values, interrupts, status)

    @staticmethod
    def _thread_set_state(
        conn: sqlite3.Connection, thread_id: str, values: Any, interrupts: dict | None, status: str | None
    ) -> None:
        at = now()
        cur = conn.execute(
            "UPDATE threads SET vals = ?, interrupts = ?, status = coalesce(?, status), "
            "state_updated_at = ?, updated_at = ?, expires_at = CASE WHEN ttl IS NULL THEN NULL "
            "ELSE ? + CAST(json_extract(ttl, '$.ttl') * 60000000 AS INTEGER) END "
            "WHERE thread_id = ?",
            (_js_or_null(values), _js(interrupts or {}), status, _ts(at), _ts(at), _ts(at), thread_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"Thread {thread_id} not found")

    async def thread_delete(self, thread_id: str) -> bool:
        return await self._write(self._thread_delete, thread_id)

    @staticmethod
    def _thread_delete(conn: sqlite3.Connection, thread_id: str) -> bool:
        conn.execute("DELETE FROM runs WHERE thread_id = ?", (thread_id,))
        cur = conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
        return cur.rowcount > 0

    async def thread_search(self, query: ThreadQuery) -> tuple[list[Record], int]:
        return await self._read(self._thread_search, query)

    @staticmethod
    def _thread_search(conn: sqlite3.Connection, q: ThreadQuery) -> tuple[list[Record], int]:
        plan = _thread_search_plan(conn, q)
        sort = q.sort_by if q.sort_by in _THREAD_SORTS else "created_at"
        order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
        tiebreak = "" if sort == "thread_id" else f", r.thread_id {order}"
        # Two phases: the page's ids (index-only where possible), then whole rows for them only.
        cols = ", ".join("r." + c.strip() for c in _THREAD_COLS.split(","))
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
        return [_thread(r) for r in rows], total

    async def thread_expired(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        return await self._read(self._thread_expired, now, limit)

    @staticmethod
    def _thread_expired(conn: sqlite3.Connection, at: datetime, limit: int) -> list[tuple[str, str]]:
        rows = conn.execute(
            "SELECT thread_id, ttl FROM threads WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "AND status <> 'busy' ORDER BY expires_at LIMIT ?",
            (_ts(at), int(limit)),
        ).fetchall()
        return [(tid, (_load(ttl) or {}).get("strategy") or "delete") for tid, ttl in rows]

    # ---- runs ------------------------------------------------------------------------------
    @staticmethod
    def _run_get(conn: sqlite3.Connection, run_id: str, thread_id: str | None = None) -> Record | None:
        if thread_id is None:
            row = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        else:
            row = conn.execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ? AND thread_id = ?", (run_id, thread_id)
            ).fetchone()
        return _run(row) if row else None

    @staticmethod
    def _inflight(conn: sqlite3.Connection, thread_id: str, exclude: str | None = None) -> list[Record]:
        rows = conn.execute(
            f"SELECT {_RUN_COLS} FROM runs WHERE thread_id = ? AND status IN ('pending', 'running') "
            "AND run_id <> ? ORDER BY created_at, run_id",
            (thread_id, exclude or ""),
        ).fetchall()
        return [_run(r) for r in rows]

    @staticmethod
    def _has_inflight(conn: sqlite3.Connection, thread_id: str, exclude: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM runs WHERE thread_id = ? AND status IN ('pending', 'running') "
                "AND run_id <> ? LIMIT 1",
                (thread_id, exclude),
            ).fetchone()
            is not None
        )

    async def run_create(
        self,
        run: Record,
        *,
        thread: Record | None,
        if_not_exists: str = "reject",
        multitask_strategy: str = "enqueue",
    ) -> CreateRunResult:
        return await self._write(self._run_create, run, thread, if_not_exists, multitask_strategy)

    def _run_create(
        self,
        conn: sqlite3.Connection,
        run: Record,
        thread: Record | None,
        if_not_exists: str,
        strategy: str,
    ) -> CreateRunResult:
        thread_id = run["thread_id"]
        at = now()
        row = conn.execute(
            "SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)
        ).fetchone()
        created_thread = row is None
        if created_thread:
            if if_not_exists != "create":
                raise NotFound(f"Thread {thread_id} not found")
            # with its graph metadata already, so the update below leaves metadata as is
            metadata = {**((thread or {}).get("metadata") or {}), **_graph_metadata(run, thread)}
            self._thread_insert(
                conn,
                {**(thread or {}), "thread_id": thread_id, "status": "busy", "metadata": metadata},
                at,
            )
            row = conn.execute(
                "SELECT metadata, ttl FROM threads WHERE thread_id = ?", (thread_id,)
            ).fetchone()
        to_cancel: list[Record] = []
        if not created_thread:
            inflight = self._inflight(conn, thread_id)
            if strategy == "reject" and inflight:
                raise Conflict(_REJECT_MESSAGE)
            if strategy in ("interrupt", "rollback"):
                to_cancel = inflight
        created = run.get("created_at") or at
        try:
            conn.execute(
                f"INSERT INTO runs ({_RUN_COLS}) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, 0, ?, "
                "NULL, NULL, NULL)",
                (
                    run["run_id"],
                    thread_id,
                    run.get("assistant_id"),
                    _js(run.get("metadata") or {}),
                    _js(run.get("kwargs") or {}),
                    run.get("multitask_strategy") or strategy,
                    _ts(created),
                    _ts(run.get("updated_at") or created),
                    _ts(run.get("available_at") or created),
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"Run {run['run_id']} already exists") from None
        metadata = loads(row[0])
        metadata.update(_graph_metadata(run, thread))
        ttl = _load(row[1])
        conn.execute(
            "UPDATE threads SET status = 'busy', metadata = ?, updated_at = ?, expires_at = ? "
            "WHERE thread_id = ?",
            (_js(metadata), _ts(at), _expires(ttl, at), thread_id),
        )
        return CreateRunResult(run=self._run_get(conn, run["run_id"]), to_cancel=to_cancel)  # type: ignore[arg-type]

    async def run_get(self, run_id: str, thread_id: str | None = None) -> Record | None:
        return await self._read(self._run_get, run_id, thread_id)

    async def run_list(
        self, thread_id: str, *, status: str | None, limit: int, offset: int
    ) -> list[Record]:
        return await self._read(self._run_list, thread_id, status, limit, offset)

    @staticmethod
    def _run_list(
        conn: sqlite3.Connection, thread_id: str, status: str | None, limit: int, offset: int
    ) -> list[Record]:
        if status is None:
            sql = f"SELECT {_RUN_COLS} FROM runs WHERE thread_id = ? "
            params: tuple = (thread_id,)
        else:
            sql = f"SELECT {_RUN_COLS} FROM runs WHERE thread_id = ? AND status = ? "
            params = (thread_id, status)
        rows = conn.execute(
            sql + "ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?",
            (*params, max(0, int(limit)), max(0, int(offset))),
        ).fetchall()
        return [_run(r) for r in rows]

    async def run_delete(self, run_id: str, thread_id: str | None = None) -> bool:
        return await self._write(self._run_delete, run_id, thread_id)

    def _run_delete(self, conn: sqlite3.Connection, run_id: str, thread_id: str | None) -> bool:
        run = self._run_get(conn, run_id, thread_id)
        if run is None:
            return False
        conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        if run["status"] in ("pending", "running") and not self._has_inflight(
            conn, run["thread_id"], run_id
        ):
            conn.execute(
                "UPDATE threads SET status = 'idle', updated_at = ? "
                "WHERE thread_id = ? AND status = 'busy'",
                (_ts(now()), run["thread_id"]),
            )
        return True

    async def run_inflight(self, *, thread_id: str | None = None, status: str = "all") -> list[Record]:
        return await self._read(self._run_inflight, thread_id, status)

    @staticmethod
    def _run_inflight(conn: sqlite3.Connection, thread_id: str | None, status: str) -> list[Record]:
        statuses = ("pending", "running") if status in (None, "all") else (status,)
        marks = ", ".join("?" for _ in statuses)
        if thread_id is None:
            rows = conn.execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE status IN ('pending', 'running') "
                f"AND status IN ({marks}) ORDER BY created_at, run_id",
                statuses,
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT {_RUN_COLS} FROM runs WHERE thread_id = ? "
                f"AND status IN ('pending', 'running') AND status IN ({marks}) "
                "ORDER BY created_at, run_id",
                (thread_id, *statuses),
            ).fetchall()
        return [_run(r) for r in rows]

    async def claim_runs(
        self, worker_id: str, limit: int, lease_secs: float, max_attempts: int
    ) -> list[Claimed]:
        if limit <= 0:
            return []
        return await self._write(self._claim_runs, worker_id, limit, lease_secs, max_attempts)

    def _claim_runs(
        self, conn: sqlite3.Connection, worker_id: str, limit: int, lease_secs: float, max_attempts: int
    ) -> list[Claimed]:
        at = now()
        ts = _ts(at)
        # Candidates, oldest first: available pending runs and expired leases with attempts
        # left, each the oldest in-flight run of its thread, on a thread with no live lease.
        rows = conn.execute(
            """
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
            """,
            {"now": ts, "max": int(max_attempts), "limit": int(limit)},
        ).fetchall()
        expires = _ts(at + timedelta(seconds=float(lease_secs)))
        claimed: list[Claimed] = []
        for run_id, attempt in rows:
            lease_id = uuid7()
            conn.execute(
                "UPDATE runs SET status = 'running', attempt = ?, lease_id = ?, lease_owner = ?, "
                "lease_expires_at = ?, updated_at = ? WHERE run_id = ?",
                (attempt + 1, lease_id, worker_id, expires, ts, run_id),
            )
            claimed.append(Claimed(run=self._run_get(conn, run_id), lease_id=lease_id, attempt=attempt + 1))  # type: ignore[arg-type]
        return claimed

    async def renew_leases(self, worker_id: str, lease_ids: Sequence[str], lease_secs: float) -> set[str]:
        wanted = {str(x) for x in lease_ids}
        if not wanted:
            return set()
        return await self._write(self._renew_leases, worker_id, wanted, lease_secs)

    @staticmethod
    def _renew_leases(
        conn: sqlite3.Connection, worker_id: str, wanted: set[str], lease_secs: float
    ) -> set[str]:
        expires = _ts(now() + timedelta(seconds=float(lease_secs)))
        held = {
            row[0]
            for row in conn.execute(
                "UPDATE runs SET lease_expires_at = ? WHERE lease_id IN "
                "(SELECT value FROM json_each(?)) AND lease_owner = ? AND status = 'running' "
                "RETURNING lease_id",
                (expires, _js(sorted(wanted)), worker_id),
            ).fetchall()
        }
        return wanted - held

    async def run_finish(self, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
        return await self._write(self._run_finish, run_id, lease_id, end)

    def _run_finish(self, conn: sqlite3.Connection, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
        row = conn.execute(
            "SELECT thread_id, status, lease_id FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
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
                (end.status, _ts(at), run_id),
            )
        self._settle_thread(conn, thread_id, run_id, at, end.thread_status, end.error,
                            values=end.values, interrupts=end.interrupts)
        return True

    def _settle_thread(
        self,
        conn: sqlite3.Connection,
        thread_id: str,
        run_id: str,
        at: datetime,
        resting_status: str,
        error: Any,
        *,
        values: Any = None,
        interrupts: dict | None = None,
    ) -> None:
        """After a run ended: busy if another run is in flight, else `resting_status`; mirror
        values/interrupts when given; restart the TTL clock."""
        status = "busy" if self._has_inflight(conn, thread_id, run_id) else resting_status
        sets = ["status = ?", "error = ?", "updated_at = ?"]
        params: list[Any] = [status, _js_or_null(error), _ts(at)]
        if values is not None:
            sets.append("vals = ?")
            params.append(_js(values))
        if interrupts is not None:
            sets.append("interrupts = ?")
            params.append(_js(interrupts))
        if values is not None or interrupts is not None:
            sets.append("state_updated_at = ?")
            params.append(_ts(at))
        sets.append(
            "expires_at = CASE WHEN ttl IS NULL THEN NULL "
            "ELSE ? + CAST(json_extract(ttl, '$.ttl') * 60000000 AS INTEGER) END"
        )
        params.append(_ts(at))
        conn.execute(
            f"UPDATE threads SET {', '.join(sets)} WHERE thread_id = ?", (*params, thread_id)
        )

    async def run_requeue(self, run_id: str, lease_id: str, *, delay_secs: float = 0.0) -> bool:
        return await self._write(self._run_requeue, run_id, lease_id, delay_secs)

    @staticmethod
    def _run_requeue(conn: sqlite3.Connection, run_id: str, lease_id: str, delay_secs: float) -> bool:
        at = now()
        cur = conn.execute(
            "UPDATE runs SET status = 'pending', available_at = ?, lease_id = NULL, "
            "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
            "WHERE run_id = ? AND status = 'running' AND lease_id = ?",
            (_ts(at + timedelta(seconds=max(0.0, float(delay_secs)))), _ts(at), run_id, lease_id),
        )
        return cur.rowcount > 0

    async def fail_exhausted(self, max_attempts: int) -> list[Record]:
        return await self._write(self._fail_exhausted, max_attempts)

    def _fail_exhausted(self, conn: sqlite3.Connection, max_attempts: int) -> list[Record]:
        at = now()
        ts = _ts(at)
        rows = conn.execute(
            "SELECT run_id, thread_id, attempt FROM runs WHERE status IN ('pending', 'running') "
            "AND status = 'running' AND lease_expires_at <= ? AND attempt >= ? "
            "ORDER BY created_at, run_id",
            (ts, int(max_attempts)),
        ).fetchall()
        failed: list[Record] = []
        for run_id, thread_id, attempt in rows:
            conn.execute(
                "UPDATE runs SET status = 'error', updated_at = ?, lease_expires_at = NULL "
                "WHERE run_id = ?",
                (ts, run_id),
            )
            error = {
                "error": "RetriesExhausted",
                "message": f"Run {run_id} was interrupted {attempt} times (max attempts "
                f"{max_attempts})",
            }
            self._settle_thread(conn, thread_id, run_id, at, "error", error)
            failed.append(self._run_get(conn, run_id))  # type: ignore[arg-type]
        return failed

    async def next_wakeup(self) -> datetime | None:
        return await self._read(self._next_wakeup)

    @staticmethod
    def _next_wakeup(conn: sqlite3.Connection) -> datetime | None:
        (ts,) = conn.execute(
            "SELECT min(available_at) FROM runs WHERE status = 'pending' AND available_at > ?",
            (_ts(now()),),
        ).fetchone()
        return _dt(ts)


def _graph_metadata(run: Record, thread: Record | None) -> dict[str, Any]:
    """graph_id / assistant_id to add to the thread's metadata: the run's assistant, and the
    graph id from the run's configurable (or the `thread` fields the caller passed)."""
    out: dict[str, Any] = {}
    thread_meta = (thread or {}).get("metadata") or {}
    configurable = (((run.get("kwargs") or {}).get("config") or {}).get("configurable")) or {}
    graph_id = run.get("graph_id") or configurable.get("graph_id") or thread_meta.get("graph_id")
    if graph_id is not None:
        out["graph_id"] = graph_id
    assistant_id = run.get("assistant_id") or thread_meta.get("assistant_id")
    if assistant_id is not None:
        out["assistant_id"] = assistant_id
    return out
