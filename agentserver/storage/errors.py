"""Recognise errors of backing services that mean "unavailable right now" (HTTP 503)."""

from __future__ import annotations


def is_unavailable(exc: BaseException) -> bool:
    try:
        import psycopg
        import psycopg_pool

        if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import redis.exceptions

        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))
