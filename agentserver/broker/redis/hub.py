"""One pub/sub connection per process, shared by every channel listener (control, thread and
wake channels). It reconnects by itself, re-subscribes to every channel, and, once the
subscriptions are confirmed again, calls its `on_reconnect` hooks: whatever was published while
it was down has been missed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from agentserver.broker.redis.retry import BACKOFF_MAX, BACKOFF_MIN, RETRYABLE, backoff
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = structlog.get_logger(__name__)

# Pub/sub keepalive: PING when idle this long; reconnect if no PONG comes within PONG_TIMEOUT.
PING_EVERY_SECS = 5.0
PONG_TIMEOUT_SECS = 10.0
# How long `watch_control` / `thread_events` wait for their SUBSCRIBE to be confirmed.
SUBSCRIBE_WAIT_SECS = 5.0


class PubSubHub:
    """One pub/sub connection per process, shared by every channel listener. Its connections
    are made like those of `redis` (the broker's client): same node(s), same credentials."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
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
        if handlers is None:
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
        except TimeoutError:
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
        redis = self.redis
        cls: type[AbstractConnection]
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
            await asyncio.sleep(backoff(delay))
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
