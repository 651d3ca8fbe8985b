"""How every loop of the Redis broker rides out an outage: what counts as transient, and the
backoff between attempts (the flusher, the readers, the pub/sub connection, `setup()`)."""

from __future__ import annotations

import asyncio
import random

from redis.exceptions import RedisError

# Retry backoff for every reconnecting loop (seconds, doubled up to the cap, with jitter).
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

RETRYABLE = (RedisError, OSError, asyncio.TimeoutError)


def backoff(delay: float) -> float:
    """`delay` with jitter: between half of it and all of it."""
    return delay * (0.5 + random.random() / 2)
