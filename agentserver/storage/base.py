"""The storage port: every durable record of the server goes through this interface.

Two implementations: `sqlite.EmbeddedStorage` (SQLite on local disk, the `dev` shape) and
`postgres.PostgresStorage` (the scaled shape). Both pass `tests/test_storage_conformance.py`.

Records are plain dicts with the wire field names of WIRE.md; timestamps are timezone-aware
`datetime` objects (UTC). Storage never knows about HTTP: it raises the domain errors of
`agentserver.errors` (NotFound, Conflict) and nothing else on bad input.

The runs table is the queue (see `claim_runs`). Thread status rules live here because they
must change in the same transaction as the run that causes them:
  * a thread is `busy` while it has a pending or running run;
  * otherwise it takes the outcome of its last finished run: `error`, `interrupted` or `idle`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

Record = dict[str, Any]

RUN_STATUSES = ("pending", "running", "success", "error", "timeout", "interrupted")
THREAD_STATUSES = ("idle", "busy", "interrupted", "error")
INFLIGHT = ("pending", "running")


@dataclass
class AssistantQuery:
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = 10
    offset: int = 0
    sort_by: str = "created_at"  # assistant_id | graph_id | name | created_at | updated_at
    sort_order: Literal["asc", "desc"] = "desc"


@dataclass
class ThreadQuery:
    ids: list[str] | None = None
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: str | None = None
    limit: int = 10
    offset: int = 0
    sort_by: str = "created_at"  # thread_id | status | created_at | updated_at | state_updated_at
    sort_order: Literal["asc", "desc"] = "desc"


@dataclass
class RunEnd:
    """How a run ended, and what its thread looks like afterwards."""

    status: Literal["success", "error", "timeout", "interrupted"]
    # The thread's values/interrupts mirrored from the last checkpoint (None: leave as is).
    values: Any = None
    interrupts: dict[str, Any] | None = None
    # Thread status to take if no other run of the thread is in flight:
    # "idle" | "interrupted" | "error".
    thread_status: str = "idle"
    error: Any = None
    delete_run: bool = False  # rollback: the run disappears


@dataclass
class Claimed:
    run: Record
    lease_id: str
    attempt: int


@dataclass
class CreateRunResult:
    run: Record
    # in-flight runs of the same thread to cancel (interrupt / rollback strategies)
    to_cancel: list[Record] = field(default_factory=list)


class Storage(ABC):
    """Durable records: assistants, threads, runs (the queue), checkpoints, store."""

    # ---- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    async def setup(self) -> None:
        """Open connections and create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return if the database answers a trivial query now; raise `Unavailable` otherwise
        (`GET /ok?check_db=1`)."""

    @property
    @abstractmethod
    def checkpointer(self) -> BaseCheckpointSaver:
        """The LangGraph checkpointer that keeps this storage's checkpoints."""

    @property
    @abstractmethod
    def store(self) -> BaseStore:
        """The LangGraph long-term memory store on the same database."""

    async def checkpoint_barrier(self) -> None:
        """Return once every checkpoint written so far is durable. The server awaits it before
        acknowledging a run's end or a state update. Write-through checkpointers need nothing."""
        flush = getattr(self.checkpointer, "flush", None)
        if flush is not None:
            await flush()

    async def open_loop_resources(self, pool_size: int):
        """For BG_JOB_ISOLATED_LOOPS: called on a job loop; return (checkpointer, store, aclose)
        usable from that loop. Implementations whose checkpointer is bound to one event loop
        (Postgres) open a pool of `pool_size` connections for it."""

        async def aclose() -> None:
            return None

        return self.checkpointer, self.store, aclose

    # ---- assistants ------------------------------------------------------------------------
    @abstractmethod
    async def assistant_create(self, assistant: Record, *, if_exists: str = "raise") -> Record:
        """Insert version 1 of an assistant. `if_exists`: raise (Conflict) | do_nothing (return
        the existing one)."""

    @abstractmethod
    async def assistant_get(self, assistant_id: str) -> Record | None: ...

    @abstractmethod
    async def assistant_update(self, assistant_id: str, changes: Record) -> Record:
        """Write a new version (max version + 1) with `changes` (graph_id, config, context,
        metadata (merged), name, description) applied, make it the latest; NotFound if missing."""

    @abstractmethod
    async def assistant_delete(self, assistant_id: str) -> bool: ...

    @abstractmethod
    async def assistant_search(self, query: AssistantQuery) -> tuple[list[Record], int]:
        """A page of assistants and the total that match."""

    @abstractmethod
    async def assistant_versions(
        self, assistant_id: str, *, metadata: dict | None, limit: int, offset: int
    ) -> list[Record]:
        """Versions, newest first. Each version record has the assistant fields."""

    @abstractmethod
    async def assistant_set_latest(self, assistant_id: str, version: int) -> Record:
        """Make `version` current; NotFound if the assistant or version is missing."""

    # ---- threads ---------------------------------------------------------------------------
    @abstractmethod
    async def thread_create(self, thread: Record, *, if_exists: str = "raise") -> Record:
        """`thread` has thread_id, metadata, config, status, values, interrupts, ttl (or None).
        if_exists: raise (Conflict) | do_nothing (return the existing one)."""

    @abstractmethod
    async def thread_get(self, thread_id: str) -> Record | None: ...

    @abstractmethod
    async def thread_update(self, thread_id: str, *, metadata: dict | None = None, ttl: Record | None = None) -> Record:
        """Merge metadata into the thread, set its TTL; NotFound if missing."""

    @abstractmethod
    async def thread_set_state(
        self, thread_id: str, *, values: Any, interrupts: dict | None, status: str | None = None
    ) -> None:
        """Mirror the latest checkpoint's values/interrupts onto the thread (state update)."""

    @abstractmethod
    async def thread_delete(self, thread_id: str) -> bool:
        """Delete the thread and its runs (checkpoints are the checkpointer's)."""

    async def thread_purge(self, thread_id: str) -> bool:
        """Delete the thread, its runs and its checkpoints; True if the thread existed."""
        deleted = await self.thread_delete(thread_id)
        await self.checkpointer.adelete_thread(thread_id)
        return deleted

    @abstractmethod
    async def thread_search(self, query: ThreadQuery) -> tuple[list[Record], int]: ...

    @abstractmethod
    async def thread_expired(self, now: datetime, limit: int = 100) -> list[tuple[str, str]]:
        """(thread_id, ttl strategy) of threads whose TTL has passed."""

    # ---- runs (the queue) ------------------------------------------------------------------
    @abstractmethod
    async def run_create(
        self,
        run: Record,
        *,
        thread: Record | None,
        if_not_exists: str = "reject",
        multitask_strategy: str = "enqueue",
    ) -> CreateRunResult:
        """In one transaction: create the thread if missing and `if_not_exists == "create"`
        (`thread` gives its fields; NotFound otherwise), apply the multitask strategy
        (`reject`: Conflict if the thread has a pending/running run), insert the run as
        `pending`, set the thread `busy`, add graph_id/assistant_id to its metadata. For
        interrupt/rollback, return the other in-flight runs of the thread to cancel."""

    @abstractmethod
    async def run_get(self, run_id: str, thread_id: str | None = None) -> Record | None: ...

    @abstractmethod
    async def run_list(self, thread_id: str, *, status: str | None, limit: int, offset: int) -> list[Record]:
        """Runs of a thread, newest first."""

    @abstractmethod
    async def run_delete(self, run_id: str, thread_id: str | None = None) -> bool: ...

    @abstractmethod
    async def run_inflight(self, *, thread_id: str | None = None, status: str = "all") -> list[Record]:
        """Pending and/or running runs (status: pending | running | all)."""

    @abstractmethod
    async def claim_runs(self, worker_id: str, limit: int, lease_secs: float, max_attempts: int) -> list[Claimed]:
        """Claim up to `limit` runs, oldest first: pending runs whose `available_at` has come,
        and running runs whose lease expired (their worker died) with `attempt < max_attempts`.
        Only the oldest in-flight run of each thread may be claimed (per-thread FIFO), and never
        while another run of that thread holds a live lease. Each claimed run turns `running`,
        `attempt + 1`, gets a new `lease_id`, `lease_owner = worker_id` and
        `lease_expires_at = now + lease_secs`. Safe under concurrent callers (other processes)."""

    @abstractmethod
    async def renew_leases(self, worker_id: str, lease_ids: Sequence[str], lease_secs: float) -> set[str]:
        """Extend the leases this worker holds; return the lease ids it no longer holds."""

    @abstractmethod
    async def run_finish(self, run_id: str, lease_id: str | None, end: RunEnd) -> bool:
        """End a run (fenced: only if `lease_id` still holds it; None = the run is pending and
        is being cancelled before it ran). In the same transaction set the thread's status
        (busy if another run is in flight, else `end.thread_status`), values and interrupts.
        Return False if the lease was lost (nothing written)."""

    @abstractmethod
    async def run_requeue(self, run_id: str, lease_id: str, *, delay_secs: float = 0.0) -> bool:
        """Put a running run back to pending (retriable failure, shutdown). Fenced."""

    @abstractmethod
    async def fail_exhausted(self, max_attempts: int) -> list[Record]:
        """Runs whose lease expired after `max_attempts` attempts: mark them `error` (and their
        thread accordingly) and return them."""

    @abstractmethod
    async def next_wakeup(self) -> datetime | None:
        """When the earliest delayed pending run becomes available (None: no delayed run)."""
