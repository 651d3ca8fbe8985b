"""Control actions over Redis: each run's pending action (a key, kept until the run ends or
`control_ttl` passes), its pub/sub channel, and the watchers of this process. A watcher is
subscribed first, then the key is read, so an action sent in between is seen either way; when
the pub/sub connection comes back, every watched key is read again (a message may have been
missed while it was down)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import cast

from agentserver.broker.common import ControlWatcher
from agentserver.broker.redis.hub import PubSubHub
from agentserver.broker.redis.keys import Keys
from agentserver.broker.redis.retry import BACKOFF_MAX, BACKOFF_MIN, RETRYABLE, backoff
from agentserver.errors import Unavailable
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


class Controls:
    """The control side of one broker; lives on the broker's home loop. `spawn` runs a
    background task that the broker cancels when it closes."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        hub: PubSubHub,
        keys: Keys,
        ttl: int,
        spawn: Callable[[Coroutine], None],
    ) -> None:
        self.redis = redis
        self.hub = hub
        self.keys = keys
        self.ttl = ttl
        self.watchers: dict[str, list[ControlWatcher]] = {}
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._spawn = spawn

    async def send(self, run_id: str, action: str) -> None:
        try:
            await self.redis.set(self.keys.control(run_id), action, ex=self.ttl)
            await self.redis.publish(self.keys.control_channel(run_id), action)
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc

    async def get(self, run_id: str) -> str | None:
        try:
            return await self._read(run_id)
        except RETRYABLE as exc:
            raise Unavailable(f"redis is unreachable: {exc!r}") from exc

    async def _read(self, run_id: str) -> str | None:
        """The run's pending action, if any."""
        # the client does not decode responses (no decode_responses): GET replies bytes or None
        value = cast(bytes | None, await self.redis.get(self.keys.control(run_id)))
        return value.decode() if value is not None else None

    async def watch(self, run_id: str, watcher: ControlWatcher) -> None:
        watchers = self.watchers.setdefault(run_id, [])
        watchers.append(watcher)
        handler = self._handlers.get(run_id)
        if handler is None:

            def handler(data: bytes, run_id: str = run_id) -> None:
                for w in self.watchers.get(run_id, ()):
                    w.deliver(data.decode())

            self._handlers[run_id] = handler
        # subscribed first, then read the key: an action sent in between is seen either way
        await self.hub.add(self.keys.control_channel(run_id), handler)
        try:
            action = await self._read(run_id)
        except RETRYABLE:
            self._spawn(self.recheck([run_id]))
            return
        if action is not None:
            watcher.deliver(action)

    async def unwatch(self, run_id: str, watcher: ControlWatcher) -> None:
        watchers = self.watchers.get(run_id)
        if not watchers or watcher not in watchers:
            return
        watchers.remove(watcher)
        if not watchers:
            del self.watchers[run_id]
            handler = self._handlers.pop(run_id, None)
            if handler is not None:
                self.hub.remove(self.keys.control_channel(run_id), handler)

    def recheck_all(self) -> None:
        """The pub/sub connection came back: read every watched run's key again."""
        if self.watchers:
            self._spawn(self.recheck(list(self.watchers)))

    async def recheck(self, run_ids: list[str]) -> None:
        delay = BACKOFF_MIN
        todo = list(run_ids)
        while todo:
            run_id = todo[0]
            if run_id not in self.watchers:
                todo.pop(0)
                continue
            try:
                action = await self._read(run_id)
            except RETRYABLE:
                await asyncio.sleep(backoff(delay))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            todo.pop(0)
            if action is not None:
                for w in self.watchers.get(run_id, ()):
                    w.deliver(action)

    def close(self) -> None:
        """Stop every watcher (the broker is closing)."""
        for watchers in self.watchers.values():
            for w in watchers:
                w.stopped = True
        self.watchers.clear()
