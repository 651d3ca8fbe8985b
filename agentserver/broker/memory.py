"""The in-process broker: the embedded shape, or any single process.

Everything lives in plain Python structures guarded by one `threading.Lock`, so a job that runs
on another event loop in another thread (`BG_JOB_ISOLATED_LOOPS`) may publish, send control
actions, notify or wait like one on the main loop. A waiter is an `asyncio.Future` of the loop it
waits on; whoever wakes it resolves it directly when it runs on that loop, else through
`loop.call_soon_threadsafe`. Nothing polls: subscribers sleep on such futures, the only timers
are the idle timer of a waiting subscriber and one expiry timer per finished log.
"""

from __future__ import annotations

import asyncio
import threading
from asyncio import events as _aio_events
from collections.abc import AsyncIterator, Awaitable, Callable

from agentserver.broker.base import Broker, Event
from agentserver.broker.common import ControlWatcher, parse_after, resolve, wake_futures, when_due
from agentserver.errors import Unavailable
from agentserver.settings import Settings

# A run's log keeps at most this many events (like the Redis stream's MAXLEN): the oldest go
# first, trimmed by TRIM_CHUNK at a time so trimming stays amortised O(1) per publish.
MAX_EVENTS_PER_RUN = 100_000
TRIM_CHUNK = 10_000
# Events handed to a subscriber per lock acquisition.
READ_BATCH = 512

_get_running_loop = _aio_events._get_running_loop  # C fast path; None when no loop runs


class _IdleTimer:
    """A subscriber's idle deadline. One timer per subscriber, re-armed lazily when it fires
    early, instead of one timer per wait: waits on a busy stream cost no timer at all."""

    __slots__ = ("loop", "deadline", "fut", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_secs: float) -> None:
        self.loop = loop
        self.deadline = loop.time() + idle_secs
        self.fut: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, fut: asyncio.Future) -> None:
        self.fut = fut
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self.timer = None
        fut = self.fut
        if fut is None:
            return
        if self.loop.time() >= self.deadline:
            if not fut.done():
                fut.set_result(False)
        else:
            self.timer = self.loop.call_at(self.deadline, self._fire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _RunLog:
    __slots__ = ("events", "base", "done", "waiters", "readers")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.base = 0  # sequence number of the event before events[0] (trimmed events)
        self.done = False
        self.waiters: list[asyncio.Future] = []
        self.readers = 0


class _ThreadSub:
    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def put(self, item: tuple[str, str]) -> None:
        if self.loop is _get_running_loop():
            self.queue.put_nowait(item)
        else:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
            except RuntimeError:
                pass


class MemoryBroker(Broker):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ttl = float(settings.resumable_stream_ttl_seconds)
        # a control action for a run that never finishes (never claimed, worker gone) goes away
        # once the run would have timed out anyway
        self.control_ttl = float(settings.bg_job_timeout_secs) + self.ttl
        self._lock = threading.Lock()
        self._logs: dict[str, _RunLog] = {}
        self._controls: dict[str, tuple[str, object]] = {}  # run_id -> (action, token)
        self._watchers: dict[str, list[ControlWatcher]] = {}
        self._thread_subs: dict[str, list[_ThreadSub]] = {}
        self._wake_waiters: list[asyncio.Future] = []
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # ---- lifecycle -------------------------------------------------------------------------
    async def setup(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def ping(self) -> None:
        if self._loop is None:  # in-process: up from setup() on
            raise Unavailable("the broker is not set up")

    async def close(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, set()
            waiters = [f for lg in self._logs.values() for f in lg.waiters]
            for lg in self._logs.values():
                lg.waiters = []
            waiters += self._wake_waiters
            self._wake_waiters = []
            for watchers in self._watchers.values():
                for w in watchers:
                    w.stopped = True
            self._logs.clear()
            self._controls.clear()
            self._watchers.clear()
        for handle in timers:
            handle.cancel()
        wake_futures(waiters, False)

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        """Run `fn(*args)` after `delay` on the broker's home loop (thread-safe), so a timer set
        from a short-lived job loop still fires."""
        home = self._loop
        current = _get_running_loop()
        if home is None or home.is_closed():
            home = self._loop = current
        if home is None:
            return

        def arm(loop: asyncio.AbstractEventLoop) -> None:
            handle: asyncio.TimerHandle | None = None

            def fire() -> None:
                with self._lock:
                    self._timers.discard(handle)
                fn(*args)

            handle = loop.call_later(delay, fire)
            with self._lock:
                self._timers.add(handle)

        if home is current:
            arm(home)
        else:
            try:
                home.call_soon_threadsafe(arm, home)
            except RuntimeError:  # the home loop closed: adopt the current one
                if current is not None:
                    home = self._loop = current
                    arm(home)

    # ---- run event log ---------------------------------------------------------------------
    async def publish(self, run_id: str, event: str, data: bytes) -> str:
        with self._lock:
            lg = self._logs.get(run_id)
            if lg is None:
                lg = self._logs[run_id] = _RunLog()
            events = lg.events
            event_id = str(lg.base + len(events) + 1)
            events.append(Event(event_id, event, data))
            if len(events) > MAX_EVENTS_PER_RUN + TRIM_CHUNK:
                del events[:TRIM_CHUNK]
                lg.base += TRIM_CHUNK
            waiters = lg.waiters
            if waiters:
                lg.waiters = []
        if waiters:
            wake_futures(waiters, True)
        return event_id

    async def finish_stream(self, run_id: str) -> None:
        with self._lock:
            lg = self._logs.get(run_id)
            if lg is None:
                lg = self._logs[run_id] = _RunLog()
            if lg.done:
                return
            lg.done = True
            waiters, lg.waiters = lg.waiters, []
            self._controls.pop(run_id, None)
        wake_futures(waiters, True)
        self._later(self.ttl, self._expire, run_id, lg)

    def _expire(self, run_id: str, lg: _RunLog) -> None:
        with self._lock:
            if self._logs.get(run_id) is lg:
                del self._logs[run_id]

    def subscribe(
        self, run_id: str, after: str | None = None, *, idle_secs: float = 5.0
    ) -> AsyncIterator[Event | None]:
        return self._subscribe(run_id, parse_after(after), idle_secs)

    async def _subscribe(self, run_id: str, pos: int | None, idle_secs: float) -> AsyncIterator[Event | None]:
        loop = asyncio.get_running_loop()
        lock = self._lock
        idle = _IdleTimer(loop, idle_secs)
        with lock:
            lg = self._logs.get(run_id)
            if lg is None:
                lg = self._logs[run_id] = _RunLog()
            lg.readers += 1
            if pos is None:
                pos = lg.base + len(lg.events)
        try:
            while True:
                with lock:
                    start = pos - lg.base
                    if start < 0:  # trimmed under us: go on from the oldest kept event
                        start = 0
                    batch = lg.events[start : start + READ_BATCH]
                    if not batch:
                        if lg.done:
                            return
                        fut = loop.create_future()
                        lg.waiters.append(fut)
                if batch:
                    pos = int(batch[-1].id)
                    for ev in batch:
                        yield ev
                    idle.deadline = loop.time() + idle_secs
                    continue
                idle.arm(fut)
                try:
                    woken = await fut
                finally:
                    idle.fut = None
                    if fut.cancelled() or fut.result() is False:
                        with lock:
                            try:
                                lg.waiters.remove(fut)
                            except ValueError:
                                pass
                if woken is False:
                    yield None
                    idle.deadline = loop.time() + idle_secs
        finally:
            idle.cancel()
            with lock:
                lg.readers -= 1
                if (
                    lg.readers == 0
                    and not lg.events
                    and not lg.done
                    and not lg.waiters
                    and self._logs.get(run_id) is lg
                ):
                    del self._logs[run_id]

    async def stream_done(self, run_id: str) -> bool:
        lg = self._logs.get(run_id)
        return lg is not None and lg.done

    # ---- control ---------------------------------------------------------------------------
    async def send_control(self, run_id: str, action: str) -> None:
        token = object()
        with self._lock:
            self._controls[run_id] = (action, token)
            watchers = list(self._watchers.get(run_id, ()))
        for w in watchers:
            w.deliver(action)
        self._later(self.control_ttl, self._expire_control, run_id, token)

    def _expire_control(self, run_id: str, token: object) -> None:
        with self._lock:
            entry = self._controls.get(run_id)
            if entry is not None and entry[1] is token:
                del self._controls[run_id]

    async def get_control(self, run_id: str) -> str | None:
        entry = self._controls.get(run_id)
        return entry[0] if entry is not None else None

    async def watch_control(
        self, run_id: str, callback: Callable[[str], Awaitable[None] | None]
    ) -> Callable[[], Awaitable[None]]:
        watcher = ControlWatcher(asyncio.get_running_loop(), callback)
        with self._lock:
            self._watchers.setdefault(run_id, []).append(watcher)
            entry = self._controls.get(run_id)
        if entry is not None:
            watcher.deliver(entry[0])

        async def stop() -> None:
            watcher.stopped = True
            with self._lock:
                watchers = self._watchers.get(run_id)
                if watchers and watcher in watchers:
                    watchers.remove(watcher)
                    if not watchers:
                        del self._watchers[run_id]

        return stop

    # ---- thread notifications --------------------------------------------------------------
    async def notify_thread(self, thread_id: str, run_id: str, what: str) -> None:
        with self._lock:
            subs = list(self._thread_subs.get(thread_id, ()))
        for sub in subs:
            sub.put((run_id, what))

    async def thread_events(self, thread_id: str) -> AsyncIterator[tuple[str, str]]:
        sub = _ThreadSub(asyncio.get_running_loop())
        with self._lock:
            self._thread_subs.setdefault(thread_id, []).append(sub)
        try:
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                subs = self._thread_subs.get(thread_id)
                if subs and sub in subs:
                    subs.remove(sub)
                    if not subs:
                        del self._thread_subs[thread_id]

    # ---- queue wake-ups --------------------------------------------------------------------
    async def wake_workers(self, at: float | None = None) -> None:
        when_due(asyncio.get_running_loop(), at, self._wake_all)

    def _wake_all(self) -> None:
        """Wake every waiter; with none waiting, the next `wait_for_wake` returns at once."""
        with self._lock:
            waiters, self._wake_waiters = self._wake_waiters, []
            if not waiters:
                self._wake_pending = True
        wake_futures(waiters, True)

    async def wait_for_wake(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._wake_pending:
                self._wake_pending = False
                return True
            if timeout <= 0:
                return False
            fut = loop.create_future()
            self._wake_waiters.append(fut)
        timer = loop.call_later(timeout, resolve, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            if not fut.done() or fut.cancelled() or fut.result() is False:
                with self._lock:
                    try:
                        self._wake_waiters.remove(fut)
                    except ValueError:
                        pass
