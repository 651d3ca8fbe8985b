"""Recognise errors of backing services that mean "unavailable right now" (HTTP 503)."""

from __future__ import annotations


def is_unavailable(exc: BaseException) -> bool:
    """A backing service's error, or a connection error or timeout of any kind."""
    return is_backend_unavailable(exc) or isinstance(exc, (ConnectionError, TimeoutError))


def is_backend_unavailable(exc: BaseException) -> bool:
    """Postgres or Redis unreachable (not a connection error of a graph's own code)."""
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
    return False


def is_invalid_data(exc: BaseException) -> bool:
    """Postgres refused a value the client sent (SQLSTATE class 22, "data exception"): a NUL
    character in a string, a number out of a column's range... A 422, not a server error."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.DataError)
