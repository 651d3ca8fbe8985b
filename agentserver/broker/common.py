"""What both brokers share: helpers beside the port, so neither broker imports the other.

`base.py` stays the contract (the abstract `Broker` and the types it speaks in, `Event` and
`DONE`): what any broker must do. This module holds the concrete pieces that `memory.py` and
`redis/` both build on, and that the API uses to reject a bad `Last-Event-ID` before it
subscribes:

* `parse_after`: an event id as a subscriber's start position (the wire form of `subscribe`'s
  `after`);
* `wake_futures` / `resolve`: resolving waiters that may belong to other event loops
  (`BG_JOB_ISOLATED_LOOPS`);
* `ControlWatcher`: one `watch_control` registration, delivered on its own loop;
* `when_due`: the local end of `Broker.wake_workers(at)`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from asyncio import events as _aio_events
from collections.abc import Awaitable, Callable

import structlog

from agentserver.errors import InvalidInput

log = structlog.get_logger(__name__)

_get_running_loop = _aio_events._get_running_loop  # C fast path; None when no loop runs


def parse_after(after: str | None) -> int | None:
    """A subscriber's start position as the sequence number of the last event it has seen
    ("-1" / "0": none seen, 0); None stays None (live join). Also accepts the Redis form "0-<seq>"."""
    if after is None:
        return None
    text = after.strip()
    try:
        if text.startswith("0-") and len(text) > 2:
            value = int(text[2:])
        else:
            value = int(text)
    except ValueError:
        raise InvalidInput(f"invalid event id {after!r}") from None
    if value < -1:
        raise InvalidInput(f"invalid event id {after!r}")
    return max(value, 0)


def resolve(fut: asyncio.Future, value: object) -> None:
    """Resolve `fut` unless it is done already (on the future's own loop)."""
    if not fut.done():
        fut.set_result(value)


def when_due(loop: asyncio.AbstractEventLoop, at: float | None, wake: Callable[[], None]) -> None:
    """Call `wake` now, or on `loop` when `at` (a `time.time()` timestamp) comes: the local end
    of `Broker.wake_workers(at)`."""
    delay = 0.0 if at is None else at - time.time()
    if delay > 0:
        loop.call_later(delay, wake)
    else:
        wake()


def wake_futures(futures: list[asyncio.Future], value: object = True) -> None:
    """Resolve waiters that may belong to different loops (thread-safe)."""
    current = _get_running_loop()
    for fut in futures:
        loop = fut.get_loop()
        if loop is current:
            if not fut.done():
                fut.set_result(value)
        else:
            try:
                loop.call_soon_threadsafe(resolve, fut, value)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


class ControlWatcher:
    """One `watch_control` registration: runs the callback on the loop that registered it, once
    per distinct action."""

    __slots__ = ("loop", "callback", "last", "stopped", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[str], Awaitable[None] | None]) -> None:
        self.loop = loop
        self.callback = callback
        self.last: str | None = None
        self.stopped = False
        self._tasks: set[asyncio.Future] = set()

    def deliver(self, action: str) -> None:
        """Thread-safe: schedule the callback on the watcher's loop."""
        if self.stopped:
            return
        if self.loop is _get_running_loop():
            self.loop.call_soon(self._fire, action)
        else:
            try:
                self.loop.call_soon_threadsafe(self._fire, action)
            except RuntimeError:
                pass

    def _fire(self, action: str) -> None:
        if self.stopped or action == self.last:
            return
        self.last = action
        try:
            result = self.callback(action)
        except Exception:  # noqa: BLE001 - a failing callback must not break delivery to others
            log.exception("control callback failed", action=action)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("control callback failed", exc_info=task.exception())
