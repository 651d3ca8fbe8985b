"""Small helpers shared by every layer: ids, time, JSON."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562) as a string."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def now() -> datetime:
    return datetime.now(UTC)


def isoformat(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.isoformat()


def parse_dt(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _default(obj: Any) -> Any:
    """orjson fallback: LangChain messages, pydantic models, dataclasses, sets, interrupts..."""
    from langgraph.types import Send

    if isinstance(obj, Send):
        return {"node": obj.node, "args": obj.arg}
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "to_json") and callable(obj.to_json):
        try:
            data = obj.to_json()
            if isinstance(data, dict) and data.get("type") == "constructor":
                return data.get("kwargs", data)
            return data
        except Exception:  # noqa: BLE001 - fall through to the generic forms
            pass
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

# The integers orjson (and so the official server's JSON parser) keeps as integers.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class NumberOutOfRange(ValueError):
    """A number JSON cannot carry: an integer beyond a double's range, NaN or an infinity."""

    def __init__(self, problem: str, path: tuple[str, ...] = ()) -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{'.'.join(path)}: {problem}" if path else problem)

    def at(self, key: Any) -> NumberOutOfRange:
        return NumberOutOfRange(self.problem, (str(key), *self.path))


def json_numbers(value: Any) -> Any:
    """`value` with every integer beyond 64 bits turned into a float, as the official server
    stores it (orjson reads such an integer as a float), so that it can be encoded, stored and
    compared on both backends. Raises NumberOutOfRange, naming where, for a number no JSON
    reader reads back: NaN, an infinity, an integer beyond a double's range. Copies only the
    containers that change; anything but dicts, lists, tuples and numbers is left as it is."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            raise NumberOutOfRange(
                f"integer of {len(str(abs(value)))} digits is out of range (at most about 1.8e308)"
            ) from None
    if isinstance(value, float):
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        raise NumberOutOfRange(f"{value} is not a JSON number (it must be finite)")
    if isinstance(value, dict):
        changed: Any = None
        for key, item in value.items():
            try:
                new = json_numbers(item)
            except NumberOutOfRange as exc:
                raise exc.at(key) from None
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, (list, tuple)):
        changed = None
        for i, item in enumerate(value):
            try:
                new = json_numbers(item)
            except NumberOutOfRange as exc:
                raise exc.at(i) from None
            if new is not item:
                if changed is None:
                    changed = list(value)
                changed[i] = new
        return value if changed is None else changed
    return value


def _default_numbers(obj: Any) -> Any:
    return json_numbers(_default(obj))


def dumps(obj: Any) -> bytes:
    """JSON bytes (orjson). An integer beyond 64 bits, which orjson refuses, is written as a
    float (see json_numbers): the one place where both storage backends and every response
    encode JSON."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTS)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    return orjson.dumps(json_numbers(obj), default=_default_numbers, option=_OPTS)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which JSON (and Postgres jsonb) allow
        return json.loads(data)
