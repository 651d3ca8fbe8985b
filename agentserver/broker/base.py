"""The broker port: ephemeral run data that crosses processes.

* per run, an ordered event log (`publish` / `subscribe`), replayable from an event id for
  `RESUMABLE_STREAM_TTL_SECONDS`;
* per run, a control channel: cancel signals (`interrupt` / `rollback`) for the worker holding it;
* per thread, a notification when any run of it starts or ends (for `GET /threads/{id}/stream`);
* a queue wake-up: "a run is ready", so idle workers claim at once instead of polling.

Two implementations: `memory.MemoryBroker` (one process) and `redis.RedisBroker` (a package).
Both pass `tests/test_broker_conformance.py`. What both use (event id parsing, cross-loop
waiters, control watchers, timed wake-ups) lives beside this port, in `common.py`.

Every method may be called from any event loop of the process (jobs on isolated loops,
`BG_JOB_ISOLATED_LOOPS`); callbacks and iterators run on the loop that asked for them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentserver.utils import dumps


@dataclass(frozen=True)
class Event:
    id: str  # the run's sequence number as a decimal string: "1", "2", ... (SSE `id:`)
    event: str  # SSE event name ("values", "updates|sub:1", "error", ...)
    data: bytes  # compact JSON


# Control event that marks the end of a run's stream; never sent to clients.
DONE = "__done__"
# Internal event carrying a run's outcome (`announce_end`); published last, never sent to clients.
RESULT_EVENT = "__result__"


class Broker(ABC):
    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return if the broker can serve requests now; raise `Unavailable` otherwise
        (`GET /ok?check_db=1`)."""

    # ---- run event log ---------------------------------------------------------------------
    @abstractmethod
    async def publish(self, run_id: str, event: str, data: bytes) -> str:
        """Append an event to the run's log; return its id (the previous id + 1; a run retried
        by another worker goes on after the ids of the earlier attempt). Never raises for a
        transient outage of the backing service (it buffers; it may wait when the buffer is full)."""

    @abstractmethod
    async def finish_stream(self, run_id: str) -> None:
        """Append the DONE marker; subscribers end after it. The log expires after the TTL.
        Called once, when the run reached its final status: nothing is published after it.
        Also drops the run's pending control action. Calling it again is harmless."""

    @abstractmethod
    def subscribe(
        self, run_id: str, after: str | None = None, *, idle_secs: float = 5.0
    ) -> AsyncIterator[Event | None]:
        """Events of the run: when `after` is None, only those published from now on; when
        `after` is "-1" or "0", all of the log; otherwise those after that id. Ends after DONE
        (which is not yielded); if the log already ended, replays what `after` selects and
        ends. Yields `None` after `idle_secs` without an event, so the caller can send a
        heartbeat (or check whether the run is still alive). A log that does not exist (yet,
        or any more) is waited for, with `None`s.

        The subscription starts at the first `__anext__` (as for any async generator): "from
        now on" means from then. To miss nothing of a run just created, pass "0".
        Raises `InvalidInput` (at once) for an `after` that is not an event id."""

    @abstractmethod
    async def stream_done(self, run_id: str) -> bool:
        """True if the run's log has its DONE marker."""

    # ---- control ---------------------------------------------------------------------------
    @abstractmethod
    async def send_control(self, run_id: str, action: str) -> None:
        """Ask the worker running `run_id` to stop (`interrupt` or `rollback`). Kept until the
        run ends (`finish_stream`), so a worker that claims the run later still sees it; a later
        action replaces an earlier one."""

    @abstractmethod
    async def get_control(self, run_id: str) -> str | None:
        """The pending control action of a run, if any."""

    @abstractmethod
    async def watch_control(
        self, run_id: str, callback: Callable[[str], Awaitable[None] | None]
    ) -> Callable[[], Awaitable[None]]:
        """Call `callback(action)` when a control action arrives for the run, and at once if one
        is already pending. The callback runs on the caller's event loop, once per distinct
        action (a coroutine result is scheduled as a task). Returns an async function that stops
        watching (idempotent)."""

    # ---- thread notifications --------------------------------------------------------------
    @abstractmethod
    async def notify_thread(self, thread_id: str, run_id: str, what: str) -> None:
        """`what` is what happened to the run ("created", "started", "done"); the broker does not
        interpret it. Best effort: never raises for a transient outage."""

    @abstractmethod
    def thread_events(self, thread_id: str) -> AsyncIterator[tuple[str, str]]:
        """(run_id, what) notifications for the thread from now on (from the first
        `__anext__`); never ends by itself. Notifications may be lost while the backing service
        is unreachable: re-read the thread's runs when one arrives, not instead."""

    # ---- queue wake-ups --------------------------------------------------------------------
    @abstractmethod
    async def wake_workers(self, at: float | None = None) -> None:
        """Tell every worker (of every process) that runs may be ready: now, or with `at` (a
        `time.time()` timestamp) when that moment comes (a run delayed by `after_seconds` or a
        retry back-off). Timed wake-ups live in memory: one lost to a restart is caught by the
        workers' periodic sweep (`Storage.next_wakeup`)."""

    async def run_queued(self, thread_id: str, run_id: str, at: float | None = None) -> None:
        """A run was queued: wake the workers (now, or at `at`) and tell the thread's
        followers. Implementations may send both at once."""
        await self.wake_workers(at)
        await self.notify_thread(thread_id, run_id, "created")

    async def announce_end(
        self, run_id: str, thread_id: str, status: str, *, values: Any = None, error: Any = None
    ) -> None:
        """After a run's end is recorded: publish its outcome (RESULT_EVENT, for /wait and
        /join), close its event log, tell the thread's followers."""
        await self.publish(run_id, RESULT_EVENT, dumps({"status": status, "values": values, "error": error}))
        await self.finish_stream(run_id)
        await self.notify_thread(thread_id, run_id, "done")

    @abstractmethod
    async def wait_for_wake(self, timeout: float) -> bool:
        """Block until a wake-up arrives (True) or the timeout passes (False). A wake-up that
        came while nobody waited makes the next call return True at once."""
