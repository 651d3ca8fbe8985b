"""The checkpointer's write-behind journal: every change to the in-memory checkpoints, committed
to a SQLite file in groups.

`DurableMemorySaver` (`saver.py`) appends each change it makes in memory to this journal as an
entry (`Op`). A background thread persists the journal to the SQLite file, committing everything
that accumulated since its last commit in one transaction (group commit): under load one commit
carries the checkpoints of many steps of many runs, so a step costs a dict insert plus its share
of one commit instead of a synchronous database round trip.

Durability. `flush()` (async) / `flush_sync()` return once everything enqueued before the call
is committed. The server awaits it before it acknowledges a run as finished (and before a state
update returns; `Storage.checkpoint_barrier`), so anything acknowledged survives a crash of the
process: the file is in WAL mode with `synchronous=NORMAL`, which loses nothing on a process
crash (only an OS crash or power loss can drop the last commits). A commit is one transaction:
a crash or an error in the middle of a group commit leaves none of its entries on disk, and the
writer retries the whole group. Entries enqueued after the last flush may be lost with the
process; a run interrupted that way is retried from its last durable checkpoint, as with any
checkpointer under `durability="async"`. On open, `load()` reads the whole file back into the
saver's memory.

Why a file of its own rather than `EmbeddedStorage`'s connection and thread:
  * checkpoint batches carry large blobs; on the storage thread they would queue behind and
    delay the short queue statements (claims, lease renewals) that workers depend on;
  * SQLite has one writer per database file: separate files let the checkpoint writer and the
    storage thread commit in parallel without `SQLITE_BUSY` waits;
  * the journal needs its own ordering and batching logic, which is simplest to get right on a
    thread that does nothing else.
An exclusive lock file keeps a second process from opening the same file: two processes each
holding their own in-memory copy would silently diverge.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentserver.storage.sqlite.checkpoint_index import CheckpointIndex

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type TEXT NOT NULL,
    checkpoint BLOB NOT NULL,
    metadata_type TEXT NOT NULL,
    metadata BLOB NOT NULL,
    run_id TEXT,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel TEXT NOT NULL,
    version NOT NULL,
    type TEXT NOT NULL,
    value BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);
CREATE TABLE IF NOT EXISTS checkpoint_writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    channel TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB,
    task_path TEXT NOT NULL DEFAULT '',
    run_id TEXT,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
"""

# Journal entry kinds -> the statements that apply one entry (run with executemany per group).
_SQL: dict[str, tuple[str, ...]] = {
    "ckpt": ("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",),
    "blob": ("INSERT OR REPLACE INTO checkpoint_blobs VALUES (?, ?, ?, ?, ?, ?)",),
    "write": ("INSERT OR REPLACE INTO checkpoint_writes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",),
    "del_thread": (
        "DELETE FROM checkpoints WHERE thread_id = ?",
        "DELETE FROM checkpoint_blobs WHERE thread_id = ?",
        "DELETE FROM checkpoint_writes WHERE thread_id = ?",
    ),
    "del_ckpt": (
        "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
        "DELETE FROM checkpoint_writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
    ),
    "del_write": (
        "DELETE FROM checkpoint_writes WHERE thread_id = ? AND checkpoint_ns = ? "
        "AND checkpoint_id = ? AND task_id = ? AND idx = ?",
    ),
    "del_blob": (
        "DELETE FROM checkpoint_blobs WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ? AND version = ?",
    ),
    "set_parent": (
        "UPDATE checkpoints SET parent_checkpoint_id = ? "
        "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
    ),
}

Op = tuple[str, tuple]  # journal entry: kind (a key of _SQL), statement parameters
Typed = tuple[str, bytes]  # a serialized value: serde type, bytes


class CheckpointerClosed(RuntimeError):
    """The saver is not open (setup() not called yet, or closed): writes would not be durable."""


class Journal:
    """The write-behind queue and the thread that commits it, in batches, to SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._queue: list[Op] = []
        self._enqueued = 0  # entries ever enqueued
        self._committed = 0  # entries ever committed
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._error: BaseException | None = None
        self._state = "new"  # new | open | closing | closed
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.commits = 0  # number of transactions committed (observability, tests)
        self.linger = 0.01  # seconds the writer waits for more entries when nobody flushes
        self._sync_waiters = 0  # threads blocked in flush_sync()

    # ---- lifecycle (called with the saver's lock held) -------------------------------------
    def open(self) -> sqlite3.Connection:
        """Take the file lock, open the database and create the schema; the caller loads the
        data (`load()`), then calls `start()`."""
        if self._state == "open":
            raise RuntimeError("checkpointer already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"{self.path} is in use by another checkpointer (another process, or an "
                "instance of this one that was not closed)"
            ) from None
        self._lock_fd = fd
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
        except BaseException:
            self._release_lock()
            raise
        self._conn = conn
        return conn

    def abort_open(self) -> None:
        """Undo `open()` when loading failed."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    def start(self) -> None:
        with self._cond:
            self._state = "open"
            self._error = None
        self._thread = threading.Thread(target=self._run, name=f"checkpoint-writer:{self.path.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer thread, close the file. Blocking."""
        with self._cond:
            if self._state != "open":
                return
            self._state = "closing"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            self._state = "closed"
            failed = self._queue
            self._queue = []
            error = self._error
            self._fail_waiters(error or CheckpointerClosed("checkpointer closed"))
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()
        if failed:
            logger.error("checkpointer closed with %d journal entries not persisted: %r", len(failed), error)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    # ---- producers -------------------------------------------------------------------------
    def enqueue(self, ops: list[Op]) -> None:
        if not ops:
            return
        with self._cond:
            if self._state != "open":
                raise CheckpointerClosed("DurableMemorySaver is not open: call setup()/asetup() before use")
            self._queue.extend(ops)
            self._enqueued += len(ops)
            self._cond.notify_all()

    def check_open(self) -> None:
        if self._state != "open":
            raise CheckpointerClosed("DurableMemorySaver is not open: call setup()/asetup() before use")

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        with self._cond:
            target = self._enqueued
            if self._committed >= target:
                return
            if self._state != "open":
                raise self._error or CheckpointerClosed("checkpointer closed before flushing")
            fut = loop.create_future()
            self._waiters.append((target, loop, fut))
            self._cond.notify_all()
        await fut

    def flush_sync(self, timeout: float | None = None) -> None:
        with self._cond:
            target = self._enqueued
            if self._committed >= target:
                return
            self._sync_waiters += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(
                    lambda: self._committed >= target or self._state != "open" or self._error is not None,
                    timeout,
                )
            finally:
                self._sync_waiters -= 1
            if self._committed >= target:
                return
            if self._error is not None:
                raise self._error
            if self._state != "open":
                raise CheckpointerClosed("checkpointer closed before flushing")
            raise TimeoutError("checkpoint flush timed out")

    # ---- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        attempts_while_closing = 0
        while True:
            with self._cond:
                while not self._queue and self._state == "open":
                    self._cond.wait()
                if not self._queue:
                    return  # closing and drained
                if not self._waiters and not self._sync_waiters and self._state == "open" and self.linger > 0:
                    # Nobody waits for durability yet: let more entries gather so that one
                    # commit carries them all. A flush (or close) cuts the wait short.
                    self._cond.wait_for(
                        lambda: bool(self._waiters or self._sync_waiters) or self._state != "open",
                        self.linger,
                    )
                batch = self._queue
                self._queue = []
                upto = self._committed + len(batch)
            try:
                self._apply(batch)
            except Exception as exc:  # noqa: BLE001 - retried below; flushers get the error
                logger.exception("checkpoint journal commit failed (%d entries)", len(batch))
                with self._cond:
                    self._queue[:0] = batch
                    self._error = exc
                    self._fail_waiters(exc)
                    if self._state != "open":
                        attempts_while_closing += 1
                        if attempts_while_closing >= 5:
                            return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with self._cond:
                self._committed = upto
                self._error = None
                self.commits += 1
                self._resolve_waiters()
                self._cond.notify_all()

    def _apply(self, batch: list[Op]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            i, n = 0, len(batch)
            while i < n:
                kind = batch[i][0]
                j = i
                while j < n and batch[j][0] == kind:
                    j += 1
                rows = [op[1] for op in batch[i:j]]
                for sql in _SQL[kind]:
                    conn.executemany(sql, rows)
                i = j
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _resolve_waiters(self) -> None:
        keep = []
        for target, loop, fut in self._waiters:
            if target <= self._committed:
                _complete(loop, fut, None)
            else:
                keep.append((target, loop, fut))
        self._waiters = keep

    def _fail_waiters(self, exc: BaseException) -> None:
        for _target, loop, fut in self._waiters:
            _complete(loop, fut, exc)
        self._waiters = []


def _complete(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, exc: BaseException | None) -> None:
    def settle() -> None:
        if fut.done():
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the waiter's loop is closed: nobody is waiting any more
        pass


def load(
    conn: sqlite3.Connection,
    storage: defaultdict[str, dict[str, dict[str, tuple[Typed, Typed, str | None]]]],
    writes: defaultdict[tuple[str, str, str], dict[tuple[str, int], tuple[str, str, Typed, str]]],
    blobs: dict[tuple[str, str, str, str | int | float], Typed],
    ix: CheckpointIndex,
) -> None:
    """Replace the in-memory state (InMemorySaver's `storage`, `writes` and `blobs`, and the
    saver's indexes) with everything the journal's file holds."""
    storage.clear()
    writes.clear()
    blobs.clear()
    ix.clear()
    for tid, ns, cid, parent, ctype, cval, mtype, mval, run_id in conn.execute(
        "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
        "checkpoint, metadata_type, metadata, run_id FROM checkpoints"
    ):
        storage[tid][ns][cid] = ((ctype, bytes(cval)), (mtype, bytes(mval)), parent)
        if run_id is not None:
            ix.set_ckpt_run((tid, ns, cid), run_id)
    for tid, ns, channel, version, btype, bval in conn.execute(
        "SELECT thread_id, checkpoint_ns, channel, version, type, value FROM checkpoint_blobs"
    ):
        key = (tid, ns, channel, version)
        blobs[key] = (btype, bytes(bval) if bval is not None else b"")
        ix.thread_blobs[tid].add(key)
    for tid, ns, cid, task_id, idx, channel, wtype, wval, task_path, run_id in conn.execute(
        "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, "
        "task_path, run_id FROM checkpoint_writes"
    ):
        outer = (tid, ns, cid)
        writes[outer][(task_id, idx)] = (
            task_id,
            channel,
            (wtype, bytes(wval) if wval is not None else b""),
            task_path,
        )
        ix.thread_writes[tid].add(outer)
        if run_id is not None:
            ix.set_write_run((tid, ns, cid, task_id, idx), run_id)
