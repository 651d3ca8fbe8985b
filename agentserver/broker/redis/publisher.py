"""The publishing side of the run event logs: write-behind, and what Redis lost is re-added.

Publishing numbers the event (`PubState.append`), appends it to the run's in-process buffer and
returns; one flusher task per run writes batches with the flush script (`scripts.py`), which
checks the stream's top id first. The publisher keeps every event of the runs it is publishing (bounded),
so when Redis lost them (restart, failover, expiry of a silent run) the flusher re-adds them with
the same ids, and a reader that resumes from its last id neither misses nor repeats an event.
A Redis outage never raises into the run: the flusher retries with backoff, `publish` only waits
once a run has too much unwritten data (backpressure).

The bookkeeping of one run (`PubState`: numbering, unwritten and kept events, and what a flush
reply means for them) needs no Redis; the `Publisher` runs the flushers and owns the states.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from itertools import islice
from typing import Any

import structlog

from agentserver.broker.base import DONE
from agentserver.broker.redis import scripts
from agentserver.broker.redis.keys import Keys
from agentserver.broker.redis.retry import BACKOFF_MAX, BACKOFF_MIN, RETRYABLE, backoff
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

log = structlog.get_logger(__name__)

# Stream cap (XADD MAXLEN ~): the oldest events of a very long run drop out of replay.
STREAM_MAXLEN = 100_000
# What the publisher keeps of a run's written events, to re-add them after Redis lost them.
KEEP_MAX_EVENTS = STREAM_MAXLEN
KEEP_MAX_BYTES = 64 * 1024 * 1024
# Unwritten events of a run beyond which `publish` waits (Redis down or too slow).
PENDING_MAX_EVENTS = 10_000
PENDING_MAX_BYTES = 32 * 1024 * 1024
# One flush (one script call).
FLUSH_MAX_EVENTS = 512
FLUSH_MAX_BYTES = 1024 * 1024
# A run's publisher state with nothing unwritten and no publish for this long is dropped (its
# worker lost the run without finishing the stream).
ABANDONED_AFTER_SECS = 3600.0
SWEEP_EVERY_SECS = 60.0


def _size(event: str, data: bytes) -> int:
    return len(event) + len(data) + 48


class PubState:
    """What this process publishes to one run."""

    __slots__ = (
        "run_id",
        "key",
        "ckey",
        "token",
        "seq",
        "top",
        "pending",
        "pending_bytes",
        "kept",
        "kept_bytes",
        "verify",
        "done_seq",
        "touched",
        "ready",
        "wakeup",
        "room",
        "finished",
        "task",
    )

    def __init__(self, run_id: str, key: str, ckey: str, token: str) -> None:
        self.run_id = run_id
        self.key = key
        self.ckey = ckey
        self.token = token
        self.seq = 0  # last number handed out
        self.top = 0  # last number known to be in the stream
        self.pending: deque[tuple[int, str, bytes]] = deque()  # handed out, not yet written
        self.pending_bytes = 0
        self.kept: deque[tuple[int, str, bytes]] = deque()  # written, kept for re-adding
        self.kept_bytes = 0
        self.verify = False  # check the stream's top even with nothing to write
        self.done_seq: int | None = None
        self.touched = time.monotonic()
        self.ready = asyncio.Event()  # the starting number is known
        self.wakeup = asyncio.Event()  # work for the flusher
        self.room = asyncio.Event()  # below the pending limits
        self.room.set()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None

    def append(self, event: str, data: bytes) -> int:
        """Number an event and queue it for the flusher; return its number."""
        self.seq += 1
        self.pending.append((self.seq, event, data))
        self.pending_bytes += _size(event, data)
        self.touched = time.monotonic()
        if len(self.pending) >= PENDING_MAX_EVENTS or self.pending_bytes >= PENDING_MAX_BYTES:
            self.room.clear()
        self.wakeup.set()
        return self.seq

    def settle(self, reply: list[Any], expected: int, last: int) -> None:
        """Apply the flush script's reply to a batch written on top of `expected` whose last
        number is `last` (`expected` for an empty batch: a mere check of the top)."""
        ok, top, writer = int(reply[0]), int(reply[1]), reply[2] if len(reply) > 2 else None
        if ok:
            self.confirm(last)
        elif top < expected:
            self.rewind(top)
        elif writer is not None and writer.decode() == self.token:
            self.confirm(top)  # an earlier flush landed but its reply was lost
        else:
            self.rebase(top)

    def confirm(self, upto: int) -> None:
        """Everything up to `upto` is in the stream: keep it (bounded) for re-adding."""
        pending, kept = self.pending, self.kept
        while pending and pending[0][0] <= upto:
            item = pending.popleft()
            size = _size(item[1], item[2])
            self.pending_bytes -= size
            kept.append(item)
            self.kept_bytes += size
        self.top = upto
        while kept and (len(kept) > KEEP_MAX_EVENTS or self.kept_bytes > KEEP_MAX_BYTES):
            item = kept.popleft()
            self.kept_bytes -= _size(item[1], item[2])
        if len(pending) < PENDING_MAX_EVENTS and self.pending_bytes < PENDING_MAX_BYTES:
            self.room.set()

    def rewind(self, top: int) -> None:
        """The stream lost what came after `top` (Redis restarted, failed over, or the key
        expired): write the kept events again, with their ids."""
        moved = 0
        while self.kept and self.kept[-1][0] > top:
            item = self.kept.pop()
            size = _size(item[1], item[2])
            self.kept_bytes -= size
            self.pending.appendleft(item)
            self.pending_bytes += size
            moved += 1
        log.warning(
            "redis lost events of a run; writing them again", run_id=self.run_id, from_seq=top + 1, events=moved
        )
        self.top = top

    def rebase(self, top: int) -> None:
        """Someone else appended to the stream (an earlier attempt of the run): number what is
        still unwritten after it."""
        delta = top - self.top
        log.warning("another publisher appended to the run's stream; renumbering", run_id=self.run_id, top=top)
        self.pending = deque((seq + delta, event, data) for seq, event, data in self.pending)
        self.seq += delta
        if self.done_seq is not None:
            self.done_seq += delta
        self.top = top


class Publisher:
    """Every run this process publishes to: their states and one flusher task each. Lives on
    the broker's home loop."""

    def __init__(self, redis: Redis | RedisCluster, keys: Keys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.states: dict[str, PubState] = {}
        self._loop = asyncio.get_running_loop()
        self._token = os.urandom(6).hex()
        self._count = 0
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        self._sweeper = self._loop.create_task(self._sweep(), name="redis-broker-sweeper")

    async def close(self) -> None:
        """Write what is still unwritten, briefly; then stop every flusher."""
        states = list(self.states.values())
        if states:
            waits = [st.finished for st in states if st.done_seq is not None and not st.finished.done()]
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and any(st.pending for st in states):
                await asyncio.sleep(0.02)
            if waits:
                await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()))
        for st in states:
            if st.task is not None:
                st.task.cancel()
        tasks = [st.task for st in states if st.task is not None]
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.states.clear()

    async def finish(self, run_id: str) -> asyncio.Future[None]:
        """Append the end marker (once); return the future that resolves when it is written."""
        st = await self.state(run_id)
        if st.done_seq is None:
            st.done_seq = st.append(DONE, b"")
        return st.finished

    def ended(self, run_id: str) -> bool:
        """True if this process appended the run's end marker (written or not yet)."""
        st = self.states.get(run_id)
        return st is not None and st.done_seq is not None

    def verify_all(self) -> None:
        """Redis may have restarted: have every flusher check its stream's top."""
        for st in self.states.values():
            st.verify = True
            st.wakeup.set()

    async def state(self, run_id: str) -> PubState:
        """The run's state, made on first use: it continues the numbering found in the stream,
        and starts the run's flusher. `RedisBroker.publish` looks in `states` first."""
        st = self.states.get(run_id)
        if st is not None:
            if not st.ready.is_set():
                await st.ready.wait()
            return st
        self._count += 1
        st = PubState(run_id, self.keys.stream(run_id), self.keys.control(run_id), f"{self._token}.{self._count}")
        self.states[run_id] = st
        try:
            # continue the numbering of an earlier attempt (another worker) if there is one; if
            # Redis is unreachable now, the flusher finds out and renumbers what is unwritten
            async with asyncio.timeout(2.0):
                top, fields = await scripts.stream_top(self.redis, st.key)
            st.top = st.seq = top
            if fields is not None and fields.get(b"e") == DONE.encode():
                st.done_seq = top  # already finished (finish_stream called again)
        except RETRYABLE:
            st.verify = True
        finally:
            st.ready.set()
        st.task = self._loop.create_task(self._flusher(st), name=f"redis-broker-flush-{run_id}")
        return st

    async def _flusher(self, st: PubState) -> None:
        delay = BACKOFF_MIN
        failures = 0
        while True:
            if not st.pending and not st.verify:
                if st.done_seq is not None and st.top >= st.done_seq:
                    self._drop(st)
                    return
                st.wakeup.clear()
                await st.wakeup.wait()
                continue
            batch: list[tuple[int, str, bytes]] = []
            size = 0
            for item in islice(st.pending, FLUSH_MAX_EVENTS):
                if batch and size + len(item[2]) > FLUSH_MAX_BYTES:
                    break
                batch.append(item)
                size += len(item[2])
            expected = st.top
            st.verify = False
            args: list[Any] = [expected, self.ttl, STREAM_MAXLEN, "0", st.token]
            for seq, event, data in batch:
                args += (seq, event, data)
                if seq == st.done_seq:
                    args[3] = "1"
            try:
                res = await scripts.flush(self.redis, st.key, st.ckey, args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never raise into the run: retry
                st.verify = True
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning(
                        "redis publish failed; retrying",
                        run_id=st.run_id,
                        error=repr(exc),
                        failures=failures,
                        unwritten=len(st.pending),
                    )
                await asyncio.sleep(backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if failures:
                log.info("redis publish recovered", run_id=st.run_id, failures=failures)
                failures = 0
                delay = BACKOFF_MIN
            st.settle(res, expected, batch[-1][0] if batch else expected)

    def _drop(self, st: PubState) -> None:
        if self.states.get(st.run_id) is st:
            del self.states[st.run_id]
        if not st.finished.done():
            st.finished.set_result(None)
        st.room.set()
        if st.task is not None and st.task is not asyncio.current_task():
            st.task.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_SECS)
            cutoff = time.monotonic() - ABANDONED_AFTER_SECS
            for run_id, st in list(self.states.items()):
                if not st.pending and st.touched < cutoff:
                    log.info("dropping the publisher state of an abandoned run", run_id=run_id)
                    self._drop(st)
