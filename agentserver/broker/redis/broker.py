"""`RedisBroker`: the `Broker` port over Redis, composed of the pub/sub hub (`hub.py`), the
publisher (`publisher.py`), the control watchers (`control.py`), the key names (`keys.py`) and
the stream commands (`scripts.py`); what it does itself: reading the logs, thread
notifications, wake-ups, and the hop to its home loop.

Readers use `XREAD BLOCK` on a pooled connection each (the pool is `REDIS_MAX_CONNECTIONS`, a
share of it is kept for non-blocking commands). When the pub/sub connection comes back, the broker
re-checks pending control actions, wakes the local waiters and has the publisher verify the logs
it is writing.

Redis connections belong to the event loop that ran `setup()`; calls from another loop
(`BG_JOB_ISOLATED_LOOPS`) hop to it.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import events as _aio_events
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
import structlog

from agentserver.broker.base import DONE, Broker, Event
from agentserver.broker.common import ControlWatcher, parse_after, wake_futures, when_due
from agentserver.broker.redis.control import Controls
from agentserver.broker.redis.hub import PubSubHub
from agentserver.broker.redis.keys import Keys, seq_of, wake_at, wake_message
from agentserver.broker.redis.publisher import Publisher, PubState
from agentserver.broker.redis.retry import BACKOFF_MAX, BACKOFF_MIN, RETRYABLE, backoff
from agentserver.broker.redis.scripts import stream_top
from agentserver.errors import Unavailable
from agentserver.settings import Settings
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

log = structlog.get_logger(__name__)

# `finish_stream` waits this long for the end marker to be written, then leaves it to the flusher.
FINISH_WAIT_SECS = 5.0
# Events per XREAD.
READ_COUNT = 512
# `setup()` gives Redis this long to answer before failing.
SETUP_WAIT_SECS = 10.0

_get_running_loop = _aio_events._get_running_loop

T = TypeVar("T")

NOT_SET_UP = "RedisBroker.setup() has not run (or the broker is closed)"


def _ready(part: T | None) -> T:
    """A part of the broker made by `setup()` (the client, the loop, the publisher...)."""
    if part is None:
        raise RuntimeError(NOT_SET_UP)
    return part


class _LoopBridge:
    """Iterate an async iterator that lives on another loop."""

    def __init__(self, agen: Any, home: asyncio.AbstractEventLoop) -> None:
        self._agen = agen
        self._home = home

    def __aiter__(self) -> _LoopBridge:
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


class RedisBroker(Broker):
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_uri:
            raise ValueError("RedisBroker needs REDIS_URI")
        self.settings = settings
        self.uri: str = settings.redis_uri
        self.prefix = settings.redis_key_prefix
        self.keys = Keys(self.prefix)
        self.ttl = int(settings.resumable_stream_ttl_seconds)
        self.control_ttl = max(1, int(settings.bg_job_timeout_secs) + self.ttl)
        self.redis: Redis | RedisCluster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: PubSubHub | None = None
        self._publisher: Publisher | None = None
        self._pubs: dict[str, PubState] = {}  # the publisher's states (read by `publish`)
        self._readers: asyncio.Semaphore | None = None
        self._wake_waiters: list[asyncio.Future] = []
        self._wake_pending = False
        self._controls: Controls | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- keys --------------------------------------------------------------------------------
    def stream_key(self, run_id: str) -> str:
        return self.keys.stream(run_id)

    def control_key(self, run_id: str) -> str:
        return self.keys.control(run_id)

    def control_channel(self, run_id: str) -> str:
        return self.keys.control_channel(run_id)

    def thread_channel(self, thread_id: str) -> str:
        return self.keys.thread_channel(thread_id)

    @property
    def wake_channel(self) -> str:
        return self.keys.wake_channel

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
            self.redis = RedisCluster.from_url(self.uri, max_connections=s.redis_max_connections, retry=retry)
        else:
            pool = BlockingConnectionPool.from_url(
                self.uri, max_connections=s.redis_max_connections, timeout=60, retry=retry, protocol=2
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
                await asyncio.sleep(backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
        # keep a share of the pool for non-blocking commands (publish, control...)
        reserve = min(max(1, s.redis_max_connections // 10), 50)
        self._readers = asyncio.Semaphore(max(1, s.redis_max_connections - reserve))
        self._publisher = Publisher(self.redis, self.keys, self.ttl)
        self._pubs = self._publisher.states
        self._hub = PubSubHub(self.redis)
        self._controls = Controls(self.redis, self._hub, self.keys, self.control_ttl, self._spawn)
        self._hub.handlers[self.wake_channel] = {self._on_wake_message}
        self._hub.on_reconnect.append(self._after_reconnect)
        self._hub.start()
        try:
            await asyncio.wait_for(self._hub.ready.wait(), SETUP_WAIT_SECS)
        except TimeoutError:
            log.warning("redis pubsub not connected yet; retrying in the background")
        self._publisher.start()

    async def close(self) -> None:
        if self._loop is None:
            return
        if self._loop is not _get_running_loop():
            return await self._on_home(self.close())
        if self._publisher is not None:
            await self._publisher.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._hub is not None:
            await self._hub.stop()
        wake_futures(self._wake_waiters, False)
        self._wake_waiters = []
        if self._controls is not None:
            self._controls.close()
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

    def _client(self) -> Redis | RedisCluster:
        # not `_ready(self.redis)`: its type would be inferred as the two clients' common base
        if self.redis is None:
            raise RuntimeError(NOT_SET_UP)
        return self.redis

    def _foreign(self) -> bool:
        if self._loop is None:
            raise RuntimeError(NOT_SET_UP)
        return _get_running_loop() is not self._loop

    async def _on_home(self, coro: Coroutine) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, _ready(self._loop)))

    def _spawn(self, coro: Coroutine) -> None:
        task = _ready(self._loop).create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _after_reconnect(self) -> None:
        """The pub/sub connection came back: whatever happened in between may have been missed."""
        self._wake_local()
        _ready(self._publisher).verify_all()
        _ready(self._controls).recheck_all()

    # ---- run event log ---------------------------------------------------------------------
    async def publish(self, run_id: str, event: str, data: bytes) -> str:
        if self._foreign():
            return await self._on_home(self.publish(run_id, event, data))
        # the publisher's fast path, inline (publish is the hottest call of a run)
        st = self._pubs.get(run_id)
        if st is None or not st.ready.is_set():
            st = await _ready(self._publisher).state(run_id)
        if not st.room.is_set():
            await st.room.wait()
        return str(st.append(event, data))

    async def finish_stream(self, run_id: str) -> None:
        if self._foreign():
            return await self._on_home(self.finish_stream(run_id))
        finished = await _ready(self._publisher).finish(run_id)
        try:
            await asyncio.wait_for(asyncio.shield(finished), FINISH_WAIT_SECS)
        except TimeoutError:
            log.warning("redis is slow or down: the end of the run's stream is written later", run_id=run_id)

    def subscribe(
        self, run_id: str, after: str | None = None, *, idle_secs: float = 5.0
    ) -> AsyncIterator[Event | None]:
        agen = self._subscribe(run_id, parse_after(after), idle_secs)
        if self._loop is not None and _get_running_loop() not in (None, self._loop):
            return _LoopBridge(agen, self._loop)
        return agen

    async def _subscribe(self, run_id: str, pos: int | None, idle_secs: float) -> AsyncIterator[Event | None]:
        if self._loop is None:
            raise RuntimeError(NOT_SET_UP)
        loop = asyncio.get_running_loop()
        key = self.stream_key(run_id)
        done = DONE.encode()
        last_yield = loop.time()
        delay = BACKOFF_MIN
        checked = False  # whether the log was looked at once without blocking
        while True:
            # XREAD's reply, [[key, [(entry id, fields)...]]] (redis-py types it loosely)
            res: Any = None
            try:
                if not checked:
                    if pos is None:  # live join: start after the current top
                        top, fields = await stream_top(self.redis, key)
                        if fields is not None and fields.get(b"e") == done:
                            return
                        pos = top
                    else:
                        res = await self._client().xread({key: f"0-{pos}"}, count=READ_COUNT)
                        if not res:
                            top, fields = await stream_top(self.redis, key)
                            if fields is not None and fields.get(b"e") == done and top <= pos:
                                return  # the log ended before `after`
                    checked = True
                else:
                    remaining = last_yield + idle_secs - loop.time()
                    if remaining >= 0.001:
                        async with _ready(self._readers):
                            async with asyncio.timeout(remaining + 10.0):
                                res = await self._client().xread(
                                    {key: f"0-{pos}"}, count=READ_COUNT, block=max(1, int(remaining * 1000))
                                )
            except RETRYABLE as exc:
                # Redis restarting or unreachable: retry from the last id yielded
                log.debug("redis read failed; retrying", run_id=run_id, error=repr(exc))
                await asyncio.sleep(backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                if loop.time() - last_yield >= idle_secs:
                    yield None
                    last_yield = loop.time()
                continue
            delay = BACKOFF_MIN
            if res:
                assert pos is not None  # a log is only read from a known position
                for _key, entries in res:
                    for entry_id, entry in entries:
                        seq = seq_of(entry_id)
                        if seq <= pos:
                            continue
                        pos = seq
                        name = entry.get(b"e", b"")
                        if name == done:
                            return
                        yield Event(str(seq), name.decode(), entry.get(b"d", b""))
                last_yield = loop.time()
            elif checked and loop.time() - last_yield >= idle_secs - 0.001:
                yield None
                last_yield = loop.time()

    async def stream_done(self, run_id: str) -> bool:
        if self._foreign():
            return await self._on_home(self.stream_done(run_id))
        if _ready(self._publisher).ended(run_id):
            return True
        try:
            _, fields = await stream_top(self.redis, self.stream_key(run_id))
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc
        return fields is not None and fields.get(b"e") == DONE.encode()

    # ---- control ---------------------------------------------------------------------------
    async def send_control(self, run_id: str, action: str) -> None:
        if self._foreign():
            return await self._on_home(self.send_control(run_id, action))
        await _ready(self._controls).send(run_id, action)

    async def get_control(self, run_id: str) -> str | None:
        if self._foreign():
            return await self._on_home(self.get_control(run_id))
        return await _ready(self._controls).get(run_id)

    async def watch_control(
        self, run_id: str, callback: Callable[[str], Awaitable[None] | None]
    ) -> Callable[[], Awaitable[None]]:
        watcher = ControlWatcher(asyncio.get_running_loop(), callback)
        if self._foreign():
            await self._on_home(_ready(self._controls).watch(run_id, watcher))
        else:
            await _ready(self._controls).watch(run_id, watcher)

        async def stop() -> None:
            watcher.stopped = True
            if self._loop is None:
                return
            if self._foreign():
                await self._on_home(_ready(self._controls).unwatch(run_id, watcher))
            else:
                await _ready(self._controls).unwatch(run_id, watcher)

        return stop

    # ---- thread notifications --------------------------------------------------------------
    async def notify_thread(self, thread_id: str, run_id: str, what: str) -> None:
        if self._foreign():
            return await self._on_home(self.notify_thread(thread_id, run_id, what))
        try:
            await self._client().publish(self.thread_channel(thread_id), orjson.dumps([run_id, what]))
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
            raise RuntimeError(NOT_SET_UP)
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def handler(data: bytes) -> None:
            try:
                run_id, what = orjson.loads(data)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                log.warning("malformed thread notification", thread_id=thread_id)
                return
            queue.put_nowait((run_id, what))

        channel = self.thread_channel(thread_id)
        await _ready(self._hub).add(channel, handler)
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
            await self._client().publish(self.wake_channel, wake_message(at))
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
            pipe = self._client().pipeline(transaction=False)
            pipe.publish(self.wake_channel, wake_message(at))
            pipe.publish(self.thread_channel(thread_id), orjson.dumps([run_id, "created"]))
            await pipe.execute()
        except RETRYABLE as exc:
            # the workers' sweep finds the run anyway; thread streams re-read their runs
            log.warning("redis run_queued failed", run_id=run_id, error=repr(exc))
            self._wake_at(at)

    def _on_wake_message(self, data: bytes) -> None:
        try:
            at = wake_at(data)
        except ValueError:
            log.warning("malformed wake-up message", data=data[:40])
            at = None
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

        def expire() -> None:
            if not fut.done():
                fut.set_result(False)

        timer = loop.call_later(timeout, expire)
        try:
            return await fut
        finally:
            timer.cancel()
            if fut.cancelled() or fut.result() is False:
                try:
                    self._wake_waiters.remove(fut)
                except ValueError:
                    pass
