"""How records are stored in SQLite: timestamps, JSON text, and each table's columns with the
decoder of its rows.

Timestamps are integer microseconds since the Unix epoch (UTC), turned back into
timezone-aware datetimes in records; JSON fields are stored as JSON text (so filters run in
SQLite with `json_extract`, `json_type`, `json_each`; see `search.py`). The column lists below
are the order every `SELECT` of a whole row uses, and the decoders read rows in that order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agentserver.storage.base import Record
from agentserver.utils import dumps, loads

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

ASSISTANT_COLS = "assistant_id, graph_id, config, context, metadata, name, description, version, created_at, updated_at"
VERSION_COLS = "assistant_id, graph_id, config, context, metadata, name, description, version, created_at"
THREAD_COLS = (
    "thread_id, created_at, updated_at, state_updated_at, metadata, status, config, vals, "
    "interrupts, error, ttl, expires_at"
)
RUN_COLS = (
    "run_id, thread_id, assistant_id, metadata, status, kwargs, multitask_strategy, created_at, "
    "updated_at, attempt, available_at, lease_owner, lease_id, lease_expires_at"
)


# ---- values --------------------------------------------------------------------------------
def ts(at: datetime | None) -> int | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _US


def dt(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def js(value: Any) -> str:
    return dumps(value).decode()


def js_or_null(value: Any) -> str | None:
    return None if value is None else js(value)


def load(text: str | None) -> Any:
    return None if text is None else loads(text)


def expires(ttl: Record | None, at: datetime) -> int | None:
    """`expires_at` of a thread with TTL `ttl` written at `at`."""
    if not ttl:
        return None
    minutes = ttl.get("ttl")
    if minutes is None:
        return None
    return ts(at + timedelta(minutes=float(minutes)))


def normalize_ttl(ttl: Record | None) -> Record | None:
    if not ttl or ttl.get("ttl") is None:
        return None
    return {"strategy": ttl.get("strategy") or "delete", "ttl": ttl["ttl"]}


# ---- rows -> records -----------------------------------------------------------------------
def assistant_row(row: tuple) -> Record:
    return {
        "assistant_id": row[0],
        "graph_id": row[1],
        "config": loads(row[2]),
        "context": loads(row[3]),
        "metadata": loads(row[4]),
        "name": row[5],
        "description": row[6],
        "version": row[7],
        "created_at": dt(row[8]),
        "updated_at": dt(row[9]),
    }


def version_row(row: tuple) -> Record:
    """A version row has the assistant's columns but no updated_at: it is its created_at."""
    return assistant_row((*row[:9], row[8]))


def thread_row(row: tuple) -> Record:
    return {
        "thread_id": row[0],
        "created_at": dt(row[1]),
        "updated_at": dt(row[2]),
        "state_updated_at": dt(row[3]),
        "metadata": loads(row[4]),
        "status": row[5],
        "config": loads(row[6]),
        "values": load(row[7]),
        "interrupts": loads(row[8]),
        "error": load(row[9]),
        "ttl": load(row[10]),
        "expires_at": dt(row[11]),
    }


def run_row(row: tuple) -> Record:
    return {
        "run_id": row[0],
        "thread_id": row[1],
        "assistant_id": row[2],
        "metadata": loads(row[3]),
        "status": row[4],
        "kwargs": loads(row[5]),
        "multitask_strategy": row[6],
        "created_at": dt(row[7]),
        "updated_at": dt(row[8]),
        "attempt": row[9],
        "available_at": dt(row[10]),
        "lease_owner": row[11],
        "lease_id": row[12],
        "lease_expires_at": dt(row[13]),
    }
