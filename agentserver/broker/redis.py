"""The Redis broker: the scaled shape (API servers and queue workers share one Redis).

Keys and channels (every one starts with `REDIS_KEY_PREFIX`; `{run_id}` is a cluster hash tag,
so a run's keys live in one slot):

    <prefix>stream:{<run_id>}     the run's event log, a Redis Stream with ids `0-<seq>`
    <prefix>control:{<run_id>}    the pending control action of the run (string)
    <prefix>control:<run_id>      pub/sub channel: control actions as they are sent
    <prefix>thread:<thread_id>    pub/sub channel: `[run_id, what]` notifications
    <prefix>wake                  pub/sub channel: "runs may be ready"

Publishing is write-behind: `publish` numbers the event, appends it to the run's in-process
buffer and returns; one flusher task per run writes batches with a Lua script that checks the
stream's top id first. The publisher keeps every event of the runs it is publishing (bounded),
so when Redis lost them (restart, failover, expiry of a silent run) the flusher re-adds them with
the same ids, and a reader that resumes from its last id neither misses nor repeats an event.
A Redis outage never raises into the run: the flusher retries with backoff, `publish` only waits
once a run has too much unwritten data (backpressure), `finish_stream` waits a little.

Readers use `XREAD BLOCK` on a pooled connection each (the pool is `REDIS_MAX_CONNECTIONS`, a
share of it is kept for non-blocking commands). Control, thread and wake channels share one
long-lived pub/sub connection per process that reconnects by itself, re-subscribes, then
re-checks pending control actions, wakes the local waiters and verifies the logs being published.

Redis connections belong to the event loop that ran `setup()`; calls from another loop
(`BG_JOB_ISOLATED_LOOPS`) hop to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from asyncio import events as _aio_events
from collections import deque
from itertools import islice
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine

import orjson
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import NoScriptError, RedisError

from agentserver.broker.base import DONE, Broker, Event
from agentserver.broker.memory import ControlWatcher, parse_after, wake_futures, when_due
from agentserver.errors import Unavailable
from agentserver.settings import Settings

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
# `finish_stream` waits this long for the end marker to be written, then leaves it to the flusher.
FINISH_WAIT_SECS = 5.0
# A run's publisher state with nothing unwritten and no publish for this long is dropped (its
# worker lost the run without finishing the stream).
ABANDONED_AFTER_SECS = 3600.0
SWEEP_EVERY_SECS = 60.0
# Retry backoff for every reconnecting loop (seconds, doubled up to the cap, with jitter).
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
# Pub/sub keepalive: PING when idle this long; reconnect if no PONG comes within PONG_TIMEOUT.
PING_EVERY_SECS = 5.0
PONG_TIMEOUT_SECS = 10.0
# How long `watch_control` / `thread_events` wait for their SUBSCRIBE to be confirmed.
SUBSCRIBE_WAIT_SECS = 5.0
# Events per XREAD.
READ_COUNT = 512
# `setup()` gives Redis this long to answer before failing.
SETUP_WAIT_SECS = 10.0

RETRYABLE = (RedisError, OSError, asyncio.TimeoutError)


def _wake_message(at: float | None) -> bytes:
    """A wake-up on the wake channel: the moment to wake at (`time.time()`), or "1" for now.
    Each process keeps its own timer for a future one."""
    return b"1" if at is None else repr(float(at)).encode()

_get_running_loop = _aio_events._get_running_loop

# KEYS: stream, control key. ARGV: expected top seq, ttl, maxlen, "1" if the batch holds the end
# marker, writer token, then (seq, event, data) triples. Appends the batch only if the stream's
# top is the expected one; else returns the actual top and the writer token stored on it.
FLUSH_LUA = """
local top = 0
local topw = false
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  top = tonumber(string.match(last[1][1], '^0%-(%d+)$')) or -1
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'w' then topw = f[i + 1] end
  end
end
if top ~= tonumber(ARGV[1]) then
  return {0, top, topw}
end
local n = #ARGV
for i = 6, n, 3 do
  if i + 2 == n then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. ARGV[i],
               'e', ARGV[i + 1], 'd', ARGV[i + 2], 'w', ARGV[5])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. ARGV[i],
               'e', ARGV[i + 1], 'd', ARGV[i + 2])
  end
end
if n >= 6 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
end
return {1, top, false}
"""
FLUSH_SHA = hashlib.sha1(FLUSH_LUA.encode()).hexdigest()


def _seq_of(entry_id: bytes | str) -> int:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    ms, _, seq = entry_id.partition("-")
    return int(seq) if ms == "0" else -1


def _backoff(delay: float) -> float:
    return delay * (0.5 + random.random() / 2)


class _PubState:
    """What this process publishes to one run."""

    __slots__ = (
        "run_id", "key", "ckey", "token", "seq", "top", "pending", "pending_bytes", "kept",
        "kept_bytes", "verify", "done_seq", "touched", "ready", "wakeup", "room", "finished",
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


def _size(event: str, data: bytes) -> int:
    return len(event) + len(data) + 48


class _LoopBridge:
    """Iterate an async iterator that lives on another loop."""

    def __init__(self, agen: Any, home: asyncio.AbstractEventLoop) -> None:
        self._agen = agen
        self._home = home

    def __aiter__(self) -> "_LoopBridge":
        return self

    async def __anext__(self) -> Any:
        agen = self._agen

        async def step() -> Any:
            return await agen.__anext__()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step(), self._home))

    async def aclose(self) -> None:
        agen = self._agen

        async def close() -> None:
            await agen.aclose()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), self._home))


class _PubSubHub:
    """One pub/sub connection per process, shared by every channel listener."""

    def __init__(self, broker: "RedisBroker") -> None:
        self.broker = broker
        self.handlers: dict[str, set[Callable[[bytes], None]]] = {}
        self.live: set[str] = set()  # subscribed on the current connection (confirmed)
        self.confirm: dict[str, list[asyncio.Future]] = {}
        self.conn: Any = None
        self.task: asyncio.Task | None = None
        self.send_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.connections = 0
        self.on_reconnect: list[Callable[[], None]] = []
        self._node_index = 0
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="redis-broker-pubsub")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def add(self, channel: str, handler: Callable[[bytes], None], *, wait: bool = True) -> bool:
        """Listen to `channel`. With `wait`, return once Redis confirmed the subscription (True),
        or after SUBSCRIBE_WAIT_SECS (False: Redis is unreachable; the subscription is made when
        the connection is back)."""
        handlers = self.handlers.get(channel)
        new = handlers is None
        if new:
            handlers = self.handlers[channel] = set()
        handlers.add(handler)
        if channel in self.live:
            return True
        fut = asyncio.get_running_loop().create_future()
        self.confirm.setdefault(channel, []).append(fut)
        if new:
            await self._send("SUBSCRIBE", channel)
        if not wait:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(fut), SUBSCRIBE_WAIT_SECS)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiting = self.confirm.get(channel)
            if waiting and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self.confirm[channel]

    def remove(self, channel: str, handler: Callable[[bytes], None]) -> None:
        handlers = self.handlers.get(channel)
        if not handlers:
            return
        handlers.discard(handler)
        if not handlers:
            del self.handlers[channel]
            if self.conn is not None:
                self._spawn(self._send("UNSUBSCRIBE", channel))

    async def _send(self, *args: str) -> None:
        conn = self.conn
        if conn is None:
            return  # the (re)connection subscribes to every channel in self.handlers
        try:
            async with self.send_lock:
                if conn is self.conn:
                    await conn.send_command(*args, check_health=False)
        except RETRYABLE as exc:
            # the reader sees the broken connection too and reconnects
            log.debug("redis pubsub send failed", command=args[0], error=repr(exc))

    def _connection(self) -> Any:
        redis = self.broker.redis
        if isinstance(redis, RedisCluster):
            nodes = redis.get_nodes()
            node = nodes[self._node_index % len(nodes)]
            self._node_index += 1
            cls, kwargs = node.connection_class, dict(node.connection_kwargs)
        else:
            pool = redis.connection_pool
            cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
        # RESP2 for the plain [kind, channel, data] pub/sub replies read below; maintenance
        # push notifications need RESP3, so they are off on this connection
        kwargs.update(retry=Retry(NoBackoff(), 0), socket_timeout=PONG_TIMEOUT_SECS, protocol=2)
        if "maint_notifications_config" in kwargs:
            kwargs["maint_notifications_config"] = None
        if "oss_cluster_maint_notifications_handler" in kwargs:
            kwargs["oss_cluster_maint_notifications_handler"] = None
        return cls(**kwargs)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN
        failures = 0
        while True:
            conn = None
            try:
                conn = self._connection()
                await conn.connect()
                async with self.send_lock:
                    self.conn = conn
                    if self.handlers:
                        await conn.send_command("SUBSCRIBE", *self.handlers, check_health=False)
                    # the PONG tells that every SUBSCRIBE above is in effect
                    await conn.send_command("PING", check_health=False)
                ping_sent: float | None = loop.time()
                barrier = True
                while True:
                    resp = await conn.read_response(timeout=PING_EVERY_SECS)
                    if resp is None:
                        now = loop.time()
                        if ping_sent is not None:
                            if now - ping_sent > PONG_TIMEOUT_SECS:
                                raise ConnectionError("redis pubsub: no PONG")
                        else:
                            async with self.send_lock:
                                await conn.send_command("PING", check_health=False)
                            ping_sent = now
                        continue
                    if isinstance(resp, list) and len(resp) >= 2:
                        kind = resp[0]
                        if kind == b"message":
                            self._dispatch(resp[1].decode(), resp[2])
                            continue
                        if kind == b"pong":
                            resp = b"PONG"
                        elif kind == b"subscribe":
                            self._subscribed(resp[1].decode())
                            continue
                        elif kind == b"unsubscribe":
                            self._unsubscribed(resp[1].decode())
                            continue
                    if resp == b"PONG":
                        ping_sent = None
                        if barrier:
                            barrier = False
                            delay = BACKOFF_MIN
                            failures = 0
                            self.connections += 1
                            self.ready.set()
                            if self.connections > 1:
                                log.info("redis pubsub reconnected")
                                for hook in self.on_reconnect:
                                    hook()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("redis pubsub connection lost; reconnecting", error=repr(exc), failures=failures)
            finally:
                if self.conn is conn:
                    self.conn = None
                self.live.clear()
                if conn is not None:
                    try:
                        await conn.disconnect(nowait=True)
                    except Exception:  # noqa: BLE001
                        pass
            await asyncio.sleep(_backoff(delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _dispatch(self, channel: str, data: bytes) -> None:
        for handler in list(self.handlers.get(channel, ())):
            try:
                handler(data)
            except Exception:  # noqa: BLE001
                log.exception("redis pubsub handler failed", channel=channel)

    def _subscribed(self, channel: str) -> None:
        self.live.add(channel)
        for fut in self.confirm.pop(channel, ()):
            if not fut.done():
                fut.set_result(None)
        if channel not in self.handlers:  # removed while the SUBSCRIBE was in flight
            self._spawn(self._send("UNSUBSCRIBE", channel))

    def _unsubscribed(self, channel: str) -> None:
        self.live.discard(channel)
        if channel in self.handlers:  # added again while the UNSUBSCRIBE was in flight
            self._spawn(self._send("SUBSCRIBE", channel))


class RedisBroker(Broker):
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_uri:
            raise ValueError("RedisBroker needs REDIS_URI")
        self.settings = settings
        self.prefix = settings.redis_key_prefix
        self.ttl = int(settings.resumable_stream_ttl_seconds)
        self.control_ttl = max(1, int(settings.bg_job_timeout_secs) + self.ttl)
        self.redis: Redis | RedisCluster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: _PubSubHub | None = None
        self._pubs: dict[str, _PubState] = {}
        self._token = os.urandom(6).hex()
        self._states = 0
        self._readers: asyncio.Semaphore | None = None
        self._wake_waiters: list[asyncio.Future] = []
        self._wake_pending = False
        self._watchers: dict[str, list[ControlWatcher]] = {}
        self._control_handlers: dict[str, Callable[[bytes], None]] = {}
        self._sweeper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- keys --------------------------------------------------------------------------------
    def stream_key(self, run_id: str) -> str:
        return f"{self.prefix}stream:{{{run_id}}}"

    def control_key(self, run_id: str) -> str:
        return f"{self.prefix}control:{{{run_id}}}"

    def control_channel(self, run_id: str) -> str:
        return f"{self.prefix}control:{run_id}"

    def thread_channel(self, thread_id: str) -> str:
        return f"{self.prefix}thread:{thread_id}"

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}wake"

    # ---- lifecycle -------------------------------------------------------------------------
    async def ping(self) -> None:
        if self.redis is None:
            raise Unavailable("redis broker is closed")
        try:
            await self.redis.ping()
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc

    async def setup(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        retry = Retry(ExponentialBackoff(cap=0.25, base=0.02), 2)
        if s.redis_cluster:
            self.redis = RedisCluster.from_url(s.redis_uri, max_connections=s.redis_max_connections, retry=retry)
        else:
            pool = BlockingConnectionPool.from_url(
                s.redis_uri, max_connections=s.redis_max_connections, timeout=60, retry=retry, protocol=2
            )
            self.redis = Redis(connection_pool=pool)
        deadline = time.monotonic() + SETUP_WAIT_SECS
        delay = BACKOFF_MIN
        while True:
            try:
                if isinstance(self.redis, RedisCluster):
                    await self.redis.initialize()
                await self.redis.ping()
                break
            except RETRYABLE as exc:
                if time.monotonic() > deadline:
                    await self._close_client()
                    self._loop = None
                    raise Unavailable(f"redis is unreachable: {exc!r}") from exc
                await asyncio.sleep(_backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
        # keep a share of the pool for non-blocking commands (publish, control...)
        reserve = min(max(1, s.redis_max_connections // 10), 50)
        self._readers = asyncio.Semaphore(max(1, s.redis_max_connections - reserve))
        self._hub = _PubSubHub(self)
        self._hub.handlers[self.wake_channel] = {self._on_wake_message}
        self._hub.on_reconnect.append(self._after_reconnect)
        self._hub.start()
        try:
            await asyncio.wait_for(self._hub.ready.wait(), SETUP_WAIT_SECS)
        except asyncio.TimeoutError:
            log.warning("redis pubsub not connected yet; retrying in the background")
        self._sweeper = self._loop.create_task(self._sweep(), name="redis-broker-sweeper")

    async def close(self) -> None:
        if self._loop is None:
            return
        if self._loop is not _get_running_loop():
            return await self._on_home(self.close())
        states = list(self._pubs.values())
        if states:  # write what is still unwritten, briefly
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
        tasks.extend(self._tasks)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pubs.clear()
        if self._hub is not None:
            await self._hub.stop()
        wake_futures(self._wake_waiters, False)
        self._wake_waiters = []
        for watchers in self._watchers.values():
            for w in watchers:
                w.stopped = True
        self._watchers.clear()
        await self._close_client()
        self._loop = None

    async def _close_client(self) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.aclose()
            if isinstance(self.redis, Redis):
                await self.redis.connection_pool.disconnect()
        except Exception:  # noqa: BLE001
            pass
        self.redis = None

    def _foreign(self) -> bool:
        if self._loop is None:
            raise RuntimeError("RedisBroker.setup() has not run (or the broker is closed)")
        return _get_running_loop() is not self._loop

    async def _on_home(self, coro: Coroutine) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _spawn(self, coro: Coroutine) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_SECS)
            cutoff = time.monotonic() - ABANDONED_AFTER_SECS
            for run_id, st in list(self._pubs.items()):
                if not st.pending and st.touched < cutoff:
                    log.info("dropping the publisher state of an abandoned run", run_id=run_id)
                    self._drop(st)

    def _after_reconnect(self) -> None:
        """The pub/sub connection came back: whatever happened in between may have been missed."""
        self._wake_local()
        for st in self._pubs.values():
            st.verify = True
            st.wakeup.set()
        if self._watchers:
            self._spawn(self._recheck_controls(list(self._watchers)))

    # ---- run event log: publishing -----------------------------------------------------------
    async def _state(self, run_id: str) -> _PubState:
        st = self._pubs.get(run_id)
        if st is not None:
            if not st.ready.is_set():
                await st.ready.wait()
            return st
        self._states += 1
        st = _PubState(run_id, self.stream_key(run_id), self.control_key(run_id), f"{self._token}.{self._states}")
        self._pubs[run_id] = st
        try:
            # continue the numbering of an earlier attempt (another worker) if there is one; if
            # Redis is unreachable now, the flusher finds out and renumbers what is unwritten
            async with asyncio.timeout(2.0):
                top, fields = await self._top(st.key)
            st.top = st.seq = top
            if fields is not None and fields.get(b"e") == DONE.encode():
                st.done_seq = top  # already finished (finish_stream called again)
        except RETRYABLE:
            st.verify = True
        finally:
            st.ready.set()
        st.task = self._loop.create_task(self._flusher(st), name=f"redis-broker-flush-{run_id}")
        return st

    def _append(self, st: _PubState, event: str, data: bytes) -> int:
        st.seq += 1
        st.pending.append((st.seq, event, data))
        st.pending_bytes += _size(event, data)
        st.touched = time.monotonic()
        if len(st.pending) >= PENDING_MAX_EVENTS or st.pending_bytes >= PENDING_MAX_BYTES:
            st.room.clear()
        st.wakeup.set()
        return st.seq

    async def publish(self, run_id: str, event: str, data: bytes) -> str:
        if self._foreign():
            return await self._on_home(self.publish(run_id, event, data))
        st = self._pubs.get(run_id)
        if st is None or not st.ready.is_set():
            st = await self._state(run_id)
        if not st.room.is_set():
            await st.room.wait()
        return str(self._append(st, event, data))

    async def finish_stream(self, run_id: str) -> None:
        if self._foreign():
            return await self._on_home(self.finish_stream(run_id))
        st = await self._state(run_id)
        if st.done_seq is None:
            st.done_seq = self._append(st, DONE, b"")
        try:
            await asyncio.wait_for(asyncio.shield(st.finished), FINISH_WAIT_SECS)
        except asyncio.TimeoutError:
            log.warning("redis is slow or down: the end of the run's stream is written later", run_id=run_id)

    async def _flusher(self, st: _PubState) -> None:
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
                try:
                    res = await self.redis.evalsha(FLUSH_SHA, 2, st.key, st.ckey, *args)
                except NoScriptError:
                    res = await self.redis.eval(FLUSH_LUA, 2, st.key, st.ckey, *args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never raise into the run: retry
                st.verify = True
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning(
                        "redis publish failed; retrying",
                        run_id=st.run_id, error=repr(exc), failures=failures, unwritten=len(st.pending),
                    )
                await asyncio.sleep(_backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if failures:
                log.info("redis publish recovered", run_id=st.run_id, failures=failures)
                failures = 0
                delay = BACKOFF_MIN
            ok, top, writer = int(res[0]), int(res[1]), res[2] if len(res) > 2 else None
            if ok:
                self._confirm(st, batch[-1][0] if batch else expected)
            elif top < expected:
                self._rewind(st, top)
            elif writer is not None and writer.decode() == st.token:
                self._confirm(st, top)  # an earlier flush landed but its reply was lost
            else:
                self._rebase(st, top)

    def _confirm(self, st: _PubState, upto: int) -> None:
        pending, kept = st.pending, st.kept
        while pending and pending[0][0] <= upto:
            item = pending.popleft()
            size = _size(item[1], item[2])
            st.pending_bytes -= size
            kept.append(item)
            st.kept_bytes += size
        st.top = upto
        while kept and (len(kept) > KEEP_MAX_EVENTS or st.kept_bytes > KEEP_MAX_BYTES):
            item = kept.popleft()
            st.kept_bytes -= _size(item[1], item[2])
        if len(pending) < PENDING_MAX_EVENTS and st.pending_bytes < PENDING_MAX_BYTES:
            st.room.set()

    def _rewind(self, st: _PubState, top: int) -> None:
        """The stream lost what came after `top` (Redis restarted, failed over, or the key
        expired): write the kept events again, with their ids."""
        moved = 0
        while st.kept and st.kept[-1][0] > top:
            item = st.kept.pop()
            size = _size(item[1], item[2])
            st.kept_bytes -= size
            st.pending.appendleft(item)
            st.pending_bytes += size
            moved += 1
        log.warning("redis lost events of a run; writing them again", run_id=st.run_id, from_seq=top + 1, events=moved)
        st.top = top

    def _rebase(self, st: _PubState, top: int) -> None:
        """Someone else appended to the stream (an earlier attempt of the run): number what is
        still unwritten after it."""
        delta = top - st.top
        log.warning("another publisher appended to the run's stream; renumbering", run_id=st.run_id, top=top)
        st.pending = deque((seq + delta, event, data) for seq, event, data in st.pending)
        st.seq += delta
        if st.done_seq is not None:
            st.done_seq += delta
        st.top = top

    def _drop(self, st: _PubState) -> None:
        if self._pubs.get(st.run_id) is st:
            del self._pubs[st.run_id]
        if not st.finished.done():
            st.finished.set_result(None)
        st.room.set()
        if st.task is not None and st.task is not asyncio.current_task():
            st.task.cancel()

    # ---- run event log: reading --------------------------------------------------------------
    async def _top(self, key: str) -> tuple[int, dict | None]:
        entries = await self.redis.xrevrange(key, "+", "-", count=1)
        if not entries:
            return 0, None
        entry_id, fields = entries[0]
        return _seq_of(entry_id), fields

    def subscribe(
        self, run_id: str, after: str | None = None, *, idle_secs: float = 5.0
    ) -> AsyncIterator[Event | None]:
        agen = self._subscribe(run_id, parse_after(after), idle_secs)
        if self._loop is not None and _get_running_loop() not in (None, self._loop):
            return _LoopBridge(agen, self._loop)
        return agen

    async def _subscribe(self, run_id: str, pos: int | None, idle_secs: float) -> AsyncIterator[Event | None]:
        if self._loop is None:
            raise RuntimeError("RedisBroker.setup() has not run (or the broker is closed)")
        loop = asyncio.get_running_loop()
        key = self.stream_key(run_id)
        done = DONE.encode()
        last_yield = loop.time()
        delay = BACKOFF_MIN
        checked = False  # whether the log was looked at once without blocking
        while True:
            res = None
            try:
                if not checked:
                    if pos is None:  # live join: start after the current top
                        top, fields = await self._top(key)
                        if fields is not None and fields.get(b"e") == done:
                            return
                        pos = top
                    else:
                        res = await self.redis.xread({key: f"0-{pos}"}, count=READ_COUNT)
                        if not res:
                            top, fields = await self._top(key)
                            if fields is not None and fields.get(b"e") == done and top <= pos:
                                return  # the log ended before `after`
                    checked = True
                else:
                    remaining = last_yield + idle_secs - loop.time()
                    if remaining >= 0.001:
                        async with self._readers:
                            async with asyncio.timeout(remaining + 10.0):
                                res = await self.redis.xread(
                                    {key: f"0-{pos}"}, count=READ_COUNT, block=max(1, int(remaining * 1000))
                                )
            except RETRYABLE as exc:
                # Redis restarting or unreachable: retry from the last id yielded
                log.debug("redis read failed; retrying", run_id=run_id, error=repr(exc))
                await asyncio.sleep(_backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                if loop.time() - last_yield >= idle_secs:
                    yield None
                    last_yield = loop.time()
                continue
            delay = BACKOFF_MIN
            if res:
                for _key, entries in res:
                    for entry_id, fields in entries:
                        seq = _seq_of(entry_id)
                        if seq <= pos:
                            continue
                        pos = seq
                        name = fields.get(b"e", b"")
                        if name == done:
                            return
                        yield Event(str(seq), name.decode(), fields.get(b"d", b""))
                last_yield = loop.time()
            elif checked and loop.time() - last_yield >= idle_secs - 0.001:
                yield None
                last_yield = loop.time()

    async def stream_done(self, run_id: str) -> bool:
        if self._foreign():
            return await self._on_home(self.stream_done(run_id))
        st = self._pubs.get(run_id)
        if st is not None and st.done_seq is not None:
            return True
        try:
            _, fields = await self._top(self.stream_key(run_id))
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc
        return fields is not None and fields.get(b"e") == DONE.encode()

    # ---- control ---------------------------------------------------------------------------
    async def send_control(self, run_id: str, action: str) -> None:
        if self._foreign():
            return await self._on_home(self.send_control(run_id, action))
        try:
            await self.redis.set(self.control_key(run_id), action, ex=self.control_ttl)
            await self.redis.publish(self.control_channel(run_id), action)
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc

    async def get_control(self, run_id: str) -> str | None:
        if self._foreign():
            return await self._on_home(self.get_control(run_id))
        try:
            value = await self.redis.get(self.control_key(run_id))
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc
        return value.decode() if value is not None else None

    async def watch_control(
        self, run_id: str, callback: Callable[[str], Awaitable[None] | None]
    ) -> Callable[[], Awaitable[None]]:
        watcher = ControlWatcher(asyncio.get_running_loop(), callback)
        if self._foreign():
            await self._on_home(self._watch(run_id, watcher))
        else:
            await self._watch(run_id, watcher)

        async def stop() -> None:
            watcher.stopped = True
            if self._loop is None:
                return
            if self._foreign():
                await self._on_home(self._unwatch(run_id, watcher))
            else:
                await self._unwatch(run_id, watcher)

        return stop

    async def _watch(self, run_id: str, watcher: ControlWatcher) -> None:
        watchers = self._watchers.setdefault(run_id, [])
        watchers.append(watcher)
        handler = self._control_handlers.get(run_id)
        if handler is None:
            def handler(data: bytes, run_id: str = run_id) -> None:
                for w in self._watchers.get(run_id, ()):
                    w.deliver(data.decode())

            self._control_handlers[run_id] = handler
        # subscribed first, then read the key: an action sent in between is seen either way
        await self._hub.add(self.control_channel(run_id), handler)
        try:
            action = await self.redis.get(self.control_key(run_id))
        except RETRYABLE:
            self._spawn(self._recheck_controls([run_id]))
            return
        if action is not None:
            watcher.deliver(action.decode())

    async def _unwatch(self, run_id: str, watcher: ControlWatcher) -> None:
        watchers = self._watchers.get(run_id)
        if not watchers or watcher not in watchers:
            return
        watchers.remove(watcher)
        if not watchers:
            del self._watchers[run_id]
            handler = self._control_handlers.pop(run_id, None)
            if handler is not None:
                self._hub.remove(self.control_channel(run_id), handler)

    async def _recheck_controls(self, run_ids: list[str]) -> None:
        delay = BACKOFF_MIN
        todo = list(run_ids)
        while todo:
            run_id = todo[0]
            if run_id not in self._watchers:
                todo.pop(0)
                continue
            try:
                action = await self.redis.get(self.control_key(run_id))
            except RETRYABLE:
                await asyncio.sleep(_backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            todo.pop(0)
            if action is not None:
                for w in self._watchers.get(run_id, ()):
                    w.deliver(action.decode())

    # ---- thread notifications --------------------------------------------------------------
    async def notify_thread(self, thread_id: str, run_id: str, what: str) -> None:
        if self._foreign():
            return await self._on_home(self.notify_thread(thread_id, run_id, what))
        try:
            await self.redis.publish(self.thread_channel(thread_id), orjson.dumps([run_id, what]))
        except RETRYABLE as exc:
            # advisory: thread streams re-read the runs of the thread when they wake up
            log.warning("redis notify_thread failed", thread_id=thread_id, run_id=run_id, error=repr(exc))

    def thread_events(self, thread_id: str) -> AsyncIterator[tuple[str, str]]:
        agen = self._thread_events(thread_id)
        if self._loop is not None and _get_running_loop() not in (None, self._loop):
            return _LoopBridge(agen, self._loop)
        return agen

    async def _thread_events(self, thread_id: str) -> AsyncIterator[tuple[str, str]]:
        if self._loop is None:
            raise RuntimeError("RedisBroker.setup() has not run (or the broker is closed)")
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def handler(data: bytes) -> None:
            try:
                run_id, what = orjson.loads(data)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                log.warning("malformed thread notification", thread_id=thread_id)
                return
            queue.put_nowait((run_id, what))

        channel = self.thread_channel(thread_id)
        await self._hub.add(channel, handler)
        try:
            while True:
                yield await queue.get()
        finally:
            if self._hub is not None:
                self._hub.remove(channel, handler)

    # ---- queue wake-ups --------------------------------------------------------------------
    async def wake_workers(self, at: float | None = None) -> None:
        if self._foreign():
            return await self._on_home(self.wake_workers(at))
        try:
            await self.redis.publish(self.wake_channel, _wake_message(at))
        except RETRYABLE as exc:
            # the workers' sweep finds the run anyway; at least wake this process's
            log.warning("redis wake_workers failed", error=repr(exc))
            self._wake_at(at)

    async def run_queued(self, thread_id: str, run_id: str, at: float | None = None) -> None:
        if self._foreign():
            return await self._on_home(self.run_queued(thread_id, run_id, at))
        if isinstance(self.redis, RedisCluster):
            return await super().run_queued(thread_id, run_id, at)  # no keyless pipelines there
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.publish(self.wake_channel, _wake_message(at))
            pipe.publish(self.thread_channel(thread_id), orjson.dumps([run_id, "created"]))
            await pipe.execute()
        except RETRYABLE as exc:
            # the workers' sweep finds the run anyway; thread streams re-read their runs
            log.warning("redis run_queued failed", run_id=run_id, error=repr(exc))
            self._wake_at(at)

    def _on_wake_message(self, data: bytes) -> None:
        at = None
        if data != b"1":
            try:
                at = float(data)
            except ValueError:
                log.warning("malformed wake-up message", data=data[:40])
        self._wake_at(at)

    def _wake_at(self, at: float | None) -> None:
        """Wake this process's workers now, or when `at` comes (a timer on the home loop)."""
        if self._loop is None:
            self._wake_local()
        else:
            when_due(self._loop, at, self._wake_local)

    def _wake_local(self) -> None:
        waiters, self._wake_waiters = self._wake_waiters, []
        if not waiters:
            self._wake_pending = True
        wake_futures(waiters, True)

    async def wait_for_wake(self, timeout: float) -> bool:
        if self._foreign():
            return await self._on_home(self.wait_for_wake(timeout))
        if self._wake_pending:
            self._wake_pending = False
            return True
        if timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._wake_waiters.append(fut)
        timer = loop.call_later(timeout, lambda: fut.done() or fut.set_result(False))
        try:
            return await fut
        finally:
            timer.cancel()
            if fut.cancelled() or fut.result() is False:
                try:
                    self._wake_waiters.remove(fut)
                except ValueError:
                    pass
