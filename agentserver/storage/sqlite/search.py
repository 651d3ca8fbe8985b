"""Searches on SQLite: JSON containment filters with Postgres `@>` semantics, and thread
search plans.

Filters: a metadata / values filter becomes SQLite JSON predicates (`json_type`,
`json_extract`) on the stored JSON text; what SQLite's path syntax cannot express (odd keys,
arrays) is decided in Python by `agentserver_json_contains`, registered on the connection.

Thread metadata search: triggers (see `migrations/0001_initial.sql`) keep `thread_meta`, one row
per top-level scalar metadata value of every thread (key, kind, SQL value, the thread's
created_at, thread_id), in step with every write of `threads`, and `thread_meta_counts`, the
threads per entry. A filter's top-level scalar entries are index lookups there: the most
selective one drives the page (in created_at order straight from the index), the others are
probes, and only nested objects/arrays keep the JSON predicates, on the narrowed rows. Totals
come from the trigger-maintained counters (`row_counts`: all threads, threads per status), so an
unfiltered or status-only page never scans the table. Pages are two-phase (thread ids first,
whole rows for the page only; see `threads.search`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from agentserver.storage.base import ThreadQuery
from agentserver.storage.sqlite.codec import js
from agentserver.utils import loads

THREAD_SORTS = {"thread_id", "status", "created_at", "updated_at", "state_updated_at"}


# ---- JSON containment filters (Postgres `@>` semantics) ------------------------------------
def json_contains(doc: Any, filt: Any) -> bool:
    """Does `doc` contain `filt`, as Postgres' jsonb `@>` decides? Objects: every key of the
    filter present with a contained value; arrays: every filter element contained in some
    element; scalars: equal, with booleans never equal to numbers."""
    if isinstance(filt, dict):
        return isinstance(doc, dict) and all(k in doc and json_contains(doc[k], v) for k, v in filt.items())
    if isinstance(filt, (list, tuple)):
        return isinstance(doc, list) and all(any(json_contains(d, f) for d in doc) for f in filt)
    if isinstance(filt, bool) or isinstance(doc, bool):
        return isinstance(doc, bool) and isinstance(filt, bool) and doc == filt
    if isinstance(filt, (int, float)):
        return isinstance(doc, (int, float)) and doc == filt
    return doc == filt


def sqlite_json_contains(doc: str | None, filt: str) -> int:
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
                params.extend([path, js({key: sub})])
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
    params.extend([path, js(value)])
    return f"agentserver_json_contains({col} -> ?, ?)"


def filter_sql(col: str, filt: dict[str, Any] | None, params: list[Any]) -> str | None:
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
    row = conn.execute("SELECT n FROM thread_meta_counts WHERE key = ? AND kind = ? AND value = ?", term).fetchone()
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
class SearchPlan:
    page_sql: str  # the page's thread ids, in order
    page_params: list[Any]
    count_sql: str | None  # None when `total` is known
    count_params: list[Any]
    total: int | None


def thread_search_plan(conn: sqlite3.Connection, q: ThreadQuery) -> SearchPlan:
    """Plan a thread search from the trigger-maintained counts (no scan): the most selective
    metadata term drives (a thread_meta range, in created_at order) unless the status or an id
    list is narrower; other terms are probes; nested parts stay JSON predicates."""
    limit = max(0, int(q.limit))
    offset = max(0, int(q.offset))
    sort = q.sort_by if q.sort_by in THREAD_SORTS else "created_at"
    order = "ASC" if str(q.sort_order).lower() == "asc" else "DESC"
    all_threads = _counter(conn, "threads")
    status_n = _counter(conn, _STATUS_COUNT + q.status) if q.status is not None else None
    terms, rest = _split_metadata(q.metadata)
    driver: _MetaTerm | None = None
    driver_n = 0
    if terms:
        counts = [_term_count(conn, t) for t in terms]
        if min(counts) == 0 or status_n == 0:
            return SearchPlan("SELECT NULL AS thread_id WHERE 0", [], None, [], 0)
        # a term every thread matches (graph_id with one graph) filters nothing
        kept = [(n, t) for n, t in zip(counts, terms, strict=False) if n < all_threads]
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
            need_t = bool(rest or q.values) or (not for_count and sort not in ("created_at", "thread_id"))
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
                params.append(js([str(i) for i in q.ids]))
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
        meta = filter_sql("t.metadata", rest, params)
        if meta:
            where.append(meta)
        vals = filter_sql("t.vals", q.values, params)
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
            return SearchPlan(page_sql, page_params, None, [], total)
        if len(terms) == 1 and q.status is None:
            return SearchPlan(page_sql, page_params, None, [], driver_n)
    count_source, count_params, _, _ = plan(True)
    return SearchPlan(page_sql, page_params, f"SELECT count(*) FROM {count_source}", count_params, None)
