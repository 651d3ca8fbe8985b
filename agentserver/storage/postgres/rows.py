"""What the resource modules share: the column lists and SQL fragments their statements are
built from, and the conversions between records (dicts of wire fields) and rows/parameters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from agentserver.storage.base import Record
from agentserver.utils import dumps

# ---- SQL shared by several resource modules --------------------------------------------------
ASSISTANT_COLS = "assistant_id, graph_id, config, context, metadata, name, description, version, created_at, updated_at"
THREAD_COLS = (
    'thread_id, created_at, updated_at, state_updated_at, metadata, status, config, "values", '
    "interrupts, error, ttl_strategy, ttl_minutes, expires_at"
)
RUN_COLS = (
    "run_id, thread_id, assistant_id, metadata, status, kwargs, multitask_strategy, created_at, "
    "updated_at, attempt, available_at, lease_owner, lease_id, lease_expires_at"
)
RUN_COLS_R = ", ".join(f"runs.{c.strip()}" for c in RUN_COLS.split(","))

# A thread was touched: bump updated_at and push its TTL expiry (TTL counts from the last update).
TOUCH_THREAD = (
    "updated_at = now(), expires_at = CASE WHEN threads.ttl_minutes IS NULL THEN NULL "
    "ELSE now() + threads.ttl_minutes * interval '1 minute' END"
)

SQL_THREAD_LOCK = "SELECT thread_id FROM threads WHERE thread_id = %s FOR UPDATE"


# ---- parameters ------------------------------------------------------------------------------
def json_param(value: Any) -> Jsonb | None:
    """A JSONB parameter (orjson); Python None is SQL NULL."""
    return None if value is None else Jsonb(value, dumps=dumps)


def ttl_param(ttl: Any) -> tuple[str | None, float | None]:
    """(strategy, minutes) of a wire TTL: None, {"strategy", "ttl"} or a number of minutes."""
    if ttl is None:
        return None, None
    if isinstance(ttl, (int, float)):
        return "delete", float(ttl)
    minutes = ttl.get("ttl")
    if minutes is None:
        return None, None
    return ttl.get("strategy") or "delete", float(minutes)


def thread_params(thread_id: str, thread: Record) -> dict[str, Any]:
    """The parameters of a thread insert (`threads.SQL_THREAD_INSERT`, `runs.SQL_THREAD_ENSURE`)."""
    strategy, minutes = ttl_param(thread.get("ttl"))
    return {
        "thread_id": thread_id,
        "created_at": thread.get("created_at"),
        "updated_at": thread.get("updated_at"),
        "state_updated_at": thread.get("state_updated_at"),
        "metadata": json_param(thread.get("metadata") or {}),
        "status": thread.get("status") or "idle",
        "config": json_param(thread.get("config") or {}),
        "values": json_param(thread.get("values")),
        "interrupts": json_param(thread.get("interrupts") or {}),
        "error": json_param(thread.get("error")),
        "ttl_strategy": strategy,
        "ttl_minutes": minutes,
    }


def uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


# ---- rows -> records -------------------------------------------------------------------------
def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _minutes(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def assistant_record(row: dict[str, Any]) -> Record:
    return {
        "assistant_id": row["assistant_id"],
        "graph_id": row["graph_id"],
        "config": row["config"],
        "context": row["context"],
        "metadata": row["metadata"],
        "name": row["name"],
        "description": row["description"],
        "version": row["version"],
        "created_at": utc(row["created_at"]),
        "updated_at": utc(row["updated_at"]),
    }


def thread_record(row: dict[str, Any]) -> Record:
    strategy = row["ttl_strategy"]
    return {
        "thread_id": row["thread_id"],
        "created_at": utc(row["created_at"]),
        "updated_at": utc(row["updated_at"]),
        "state_updated_at": utc(row["state_updated_at"]),
        "metadata": row["metadata"],
        "status": row["status"],
        "config": row["config"],
        "values": row["values"],
        "interrupts": row["interrupts"],
        "error": row["error"],
        "ttl": (
            {"strategy": strategy, "ttl": _minutes(row["ttl_minutes"])}
            if strategy is not None and row["ttl_minutes"] is not None
            else None
        ),
        "expires_at": utc(row["expires_at"]),
    }


def run_record(row: dict[str, Any]) -> Record:
    lease_id = row["lease_id"]
    return {
        "run_id": row["run_id"],
        "thread_id": row["thread_id"],
        "assistant_id": row["assistant_id"],
        "metadata": row["metadata"],
        "status": row["status"],
        "kwargs": row["kwargs"],
        "multitask_strategy": row["multitask_strategy"],
        "created_at": utc(row["created_at"]),
        "updated_at": utc(row["updated_at"]),
        "attempt": row["attempt"],
        "available_at": utc(row["available_at"]),
        "lease_owner": row["lease_owner"],
        "lease_id": str(lease_id) if lease_id is not None else None,
        "lease_expires_at": utc(row["lease_expires_at"]),
    }
