"""A fast, durable LangGraph checkpointer for the embedded shape: memory in front, SQLite behind.

`DurableMemorySaver` is an `InMemorySaver` (every read is served from process memory, with the
same data layout) whose every change is also appended to a write-behind journal. A background
thread persists the journal to a SQLite file, committing everything that accumulated since its
last commit in one transaction (group commit): under load one commit carries the checkpoints of
many steps of many runs, so a step costs a dict insert plus its share of one commit instead of a
synchronous database round trip.

Durability. `flush()` (async) / `flush_sync()` return once everything written before the call is
committed. The server awaits it before it acknowledges a run as finished (and before a state
update returns), so anything acknowledged survives a crash of the process: the file is in WAL
mode with `synchronous=NORMAL`, which loses nothing on a process crash (only an OS crash or
power loss can drop the last commits). Checkpoints written after the last flush may be lost with
the process; a run interrupted that way is retried from its last durable checkpoint, as with any
checkpointer under `durability="async"`. On open the whole file is loaded back into memory.

Why a file of its own rather than `EmbeddedStorage`'s connection and thread:
  * checkpoint batches carry large blobs; on the storage thread they would queue behind and
    delay the short queue statements (claims, lease renewals) that workers depend on;
  * SQLite has one writer per database file: separate files let the checkpoint writer and the
    storage thread commit in parallel without `SQLITE_BUSY` waits;
  * the journal needs its own ordering and batching logic, which is simplest to get right on a
    thread that does nothing else.
An exclusive lock file keeps a second process from opening the same file: two processes each
holding their own in-memory copy would silently diverge.

Thread-safety: the in-memory structures are guarded by one re-entrant lock, so the saver can be
used from the event loop and from LangGraph's sync executor threads alike; `flush()` works from
any event loop (worker job loops included). Shallow copies made by `with_allowlist` share every
structure with the original.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.memory import InMemorySaver

logger = logging.getLogger(__name__)

PRUNE_STRATEGIES = ("keep_latest", "delete")

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
    "ckpt": (
        "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    "blob": ("INSERT OR REPLACE INTO checkpoint_blobs VALUES (?, ?, ?, ?, ?, ?)",),
    "write": (
        "INSERT OR REPLACE INTO checkpoint_writes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    "del_thread": (
        "DELETE FROM checkpoints WHERE thread_id = ?",
        "DELETE FROM checkpoint_blobs WHERE thread_id = ?",
        "DELETE FROM checkpoint_writes WHERE thread_id = ?",
    ),
    "del_ckpt": (
        "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
        "DELETE FROM checkpoint_writes "
        "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
    ),
    "del_write": (
        "DELETE FROM checkpoint_writes WHERE thread_id = ? AND checkpoint_ns = ? "
        "AND checkpoint_id = ? AND task_id = ? AND idx = ?",
    ),
    "del_blob": (
        "DELETE FROM checkpoint_blobs "
        "WHERE thread_id = ? AND checkpoint_ns = ? AND channel = ? AND version = ?",
    ),
    "set_parent": (
        "UPDATE checkpoints SET parent_checkpoint_id = ? "
        "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
    ),
}

Op = tuple[str, tuple]
CkptKey = tuple[str, str, str]  # thread_id, checkpoint_ns, checkpoint_id
WriteKey = tuple[str, str, str, str, int]  # ... + task_id, idx
BlobKey = tuple[str, str, str, Any]  # thread_id, checkpoint_ns, channel, version


class CheckpointerClosed(RuntimeError):
    """The saver is not open (setup() not called yet, or closed): writes would not be durable."""


class _Journal:
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
        data, then calls `start()`."""
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
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint-writer:{self.path.name}", daemon=True
        )
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
            logger.error(
                "checkpointer closed with %d journal entries not persisted: %r", len(failed), error
            )

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
                raise CheckpointerClosed(
                    "DurableMemorySaver is not open: call setup()/asetup() before use"
                )
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
                    lambda: self._committed >= target
                    or self._state != "open"
                    or self._error is not None,
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
                if (
                    not self._waiters
                    and not self._sync_waiters
                    and self._state == "open"
                    and self.linger > 0
                ):
                    # Nobody waits for durability yet: let more entries gather so that one
                    # commit carries them all. A flush (or close) cuts the wait short.
                    self._cond.wait_for(
                        lambda: bool(self._waiters or self._sync_waiters)
                        or self._state != "open",
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


class _Index:
    """Secondary indexes over InMemorySaver's flat dicts, so that deleting a thread or the
    checkpoints of a run never scans the whole saver."""

    def __init__(self) -> None:
        self.thread_writes: defaultdict[str, set[CkptKey]] = defaultdict(set)
        self.thread_blobs: defaultdict[str, set[BlobKey]] = defaultdict(set)
        self.ckpt_run: dict[CkptKey, str] = {}
        self.run_ckpts: defaultdict[str, set[CkptKey]] = defaultdict(set)
        self.write_run: dict[WriteKey, str] = {}
        self.run_writes: defaultdict[str, set[WriteKey]] = defaultdict(set)

    def clear(self) -> None:
        for d in (self.thread_writes, self.thread_blobs, self.ckpt_run, self.run_ckpts,
                  self.write_run, self.run_writes):
            d.clear()

    def set_ckpt_run(self, key: CkptKey, run_id: str | None) -> None:
        _relink(self.ckpt_run, self.run_ckpts, key, run_id)

    def drop_ckpt(self, key: CkptKey) -> None:
        _relink(self.ckpt_run, self.run_ckpts, key, None)

    def set_write_run(self, key: WriteKey, run_id: str | None) -> None:
        _relink(self.write_run, self.run_writes, key, run_id)

    def drop_write(self, key: WriteKey) -> None:
        _relink(self.write_run, self.run_writes, key, None)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


class DurableMemorySaver(InMemorySaver):
    """InMemorySaver + write-behind SQLite persistence. See the module docstring.

    `DurableMemorySaver(path)` names the SQLite file (its directory is created). Open it with
    `setup()` (sync) or `await asetup()`, or use it as a (async) context manager; it loads the
    file into memory. `await flush()` makes every earlier write durable; `close()`/`aclose()`
    flush and stop the writer.
    """

    def __init__(self, path: str | os.PathLike[str], *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.path = Path(path)
        self._lock = threading.RLock()
        self._journal = _Journal(self.path)
        self._ix = _Index()

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Open the file, load everything into memory and start the writer. Blocking."""
        with self._lock:
            if self._journal.is_open:
                return
            conn = self._journal.open()
            try:
                self._load(conn)
            except BaseException:
                self._journal.abort_open()
                raise
            self._journal.start()

    async def asetup(self) -> None:
        await asyncio.to_thread(self.setup)

    def close(self) -> None:
        """Persist what is queued, stop the writer and release the file. Blocking. The data
        stays readable in memory; writes raise until `setup()` is called again."""
        self._journal.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def flush(self) -> None:
        """Return once everything written before this call is committed to disk. Raises the
        writer's error if the commit failed (the journal keeps retrying it)."""
        await self._journal.flush()

    def flush_sync(self, timeout: float | None = None) -> None:
        self._journal.flush_sync(timeout)

    @property
    def is_open(self) -> bool:
        return self._journal.is_open

    @property
    def commits(self) -> int:
        """How many transactions the writer committed so far (each holds many entries)."""
        return self._journal.commits

    def __enter__(self) -> DurableMemorySaver:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> DurableMemorySaver:
        await self.asetup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _load(self, conn: sqlite3.Connection) -> None:
        self.storage.clear()
        self.writes.clear()
        self.blobs.clear()
        self._ix.clear()
        ix = self._ix
        for tid, ns, cid, parent, ctype, cval, mtype, mval, run_id in conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
            "checkpoint, metadata_type, metadata, run_id FROM checkpoints"
        ):
            self.storage[tid][ns][cid] = ((ctype, bytes(cval)), (mtype, bytes(mval)), parent)
            if run_id is not None:
                ix.set_ckpt_run((tid, ns, cid), run_id)
        for tid, ns, channel, version, btype, bval in conn.execute(
            "SELECT thread_id, checkpoint_ns, channel, version, type, value FROM checkpoint_blobs"
        ):
            key = (tid, ns, channel, version)
            self.blobs[key] = (btype, bytes(bval) if bval is not None else b"")
            ix.thread_blobs[tid].add(key)
        for tid, ns, cid, task_id, idx, channel, wtype, wval, task_path, run_id in conn.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, "
            "task_path, run_id FROM checkpoint_writes"
        ):
            outer = (tid, ns, cid)
            self.writes[outer][(task_id, idx)] = (
                task_id,
                channel,
                (wtype, bytes(wval) if wval is not None else b""),
                task_path,
            )
            ix.thread_writes[tid].add(outer)
            if run_id is not None:
                ix.set_write_run((tid, ns, cid, task_id, idx), run_id)

    # ---- reads (served from memory, under the lock) -----------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        checkpoint_ns = conf.get("checkpoint_ns", "")
        with self._lock:
            namespaces = self.storage.get(thread_id)
            if not namespaces or not namespaces.get(checkpoint_ns):
                return None
            if not isinstance(conf["thread_id"], str):
                config = {**config, "configurable": {**conf, "thread_id": thread_id}}
            return super().get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        config_ns = config["configurable"].get("checkpoint_ns") if config else None
        config_cid = get_checkpoint_id(config) if config else None
        before_cid = get_checkpoint_id(before) if before else None
        with self._lock:
            if config:
                thread_id = str(config["configurable"]["thread_id"])
                thread_ids = [thread_id] if thread_id in self.storage else []
            else:
                thread_ids = list(self.storage)
            candidates = []
            for thread_id in thread_ids:
                for checkpoint_ns, checkpoints in self.storage.get(thread_id, {}).items():
                    if config_ns is not None and checkpoint_ns != config_ns:
                        continue
                    for checkpoint_id in sorted(checkpoints, reverse=True):
                        if config_cid and checkpoint_id != config_cid:
                            continue
                        if before_cid and checkpoint_id >= before_cid:
                            continue
                        candidates.append(
                            (thread_id, checkpoint_ns, checkpoint_id, checkpoints[checkpoint_id])
                        )
        for thread_id, checkpoint_ns, checkpoint_id, (ckpt, meta, parent_id) in candidates:
            if limit is not None and limit <= 0:
                break
            metadata = self.serde.loads_typed(meta)
            if filter and not all(metadata.get(k) == v for k, v in filter.items()):
                continue
            if limit is not None:
                limit -= 1
            checkpoint_: Checkpoint = self.serde.loads_typed(ckpt)
            with self._lock:
                writes = self._ordered_writes(thread_id, checkpoint_ns, checkpoint_id)
                values = self._load_blobs(thread_id, checkpoint_ns, checkpoint_["channel_versions"])
            yield CheckpointTuple(
                config={
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": checkpoint_ns,
                        "checkpoint_id": checkpoint_id,
                    }
                },
                checkpoint={**checkpoint_, "channel_values": values},
                metadata=metadata,
                parent_config=(
                    {
                        "configurable": {
                            "thread_id": thread_id,
                            "checkpoint_ns": checkpoint_ns,
                            "checkpoint_id": parent_id,
                        }
                    }
                    if parent_id
                    else None
                ),
                pending_writes=[(t, c, self.serde.loads_typed(v)) for t, c, v, _ in writes],
            )

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        with self._lock:
            return super().get_delta_channel_history(config=config, channels=channels)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self.get_delta_channel_history(config=config, channels=channels)

    # ---- writes ----------------------------------------------------------------------------
    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        checkpoint_ns = conf.get("checkpoint_ns", "")
        parent_id = conf.get("checkpoint_id")
        c = checkpoint.copy()
        values: dict[str, Any] = c.pop("channel_values")  # type: ignore[misc]
        meta = get_checkpoint_metadata(config, metadata)
        run_id = _str_or_none(meta.get("run_id"))
        ckpt_typed = self.serde.dumps_typed(c)
        meta_typed = self.serde.dumps_typed(meta)
        blobs = [
            (
                (thread_id, checkpoint_ns, channel, version),
                self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b""),
            )
            for channel, version in new_versions.items()
        ]
        checkpoint_id = checkpoint["id"]
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            for key, typed in blobs:
                self.blobs[key] = typed
                self._ix.thread_blobs[thread_id].add(key)
                ops.append(("blob", (*key, typed[0], typed[1])))
            self.storage[thread_id][checkpoint_ns][checkpoint_id] = (ckpt_typed, meta_typed, parent_id)
            self._ix.set_ckpt_run((thread_id, checkpoint_ns, checkpoint_id), run_id)
            ops.append(
                (
                    "ckpt",
                    (thread_id, checkpoint_ns, checkpoint_id, parent_id, ckpt_typed[0],
                     ckpt_typed[1], meta_typed[0], meta_typed[1], run_id),
                )
            )
            self._journal.enqueue(ops)
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint_id,
            }
        }

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        checkpoint_ns = conf.get("checkpoint_ns", "")
        checkpoint_id = conf["checkpoint_id"]
        run_id = _str_or_none(conf.get("run_id") or (config.get("metadata") or {}).get("run_id"))
        outer = (thread_id, checkpoint_ns, checkpoint_id)
        prepared = [
            ((task_id, WRITES_IDX_MAP.get(channel, idx)), channel, self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            existing = self.writes.get(outer)
            for inner, channel, typed in prepared:
                if inner[1] >= 0 and existing and inner in existing:
                    continue
                self.writes[outer][inner] = (task_id, channel, typed, task_path)
                self._ix.thread_writes[thread_id].add(outer)
                self._ix.set_write_run((*outer, *inner), run_id)
                ops.append(
                    (
                        "write",
                        (thread_id, checkpoint_ns, checkpoint_id, task_id, inner[1], channel,
                         typed[0], typed[1], task_path, run_id),
                    )
                )
            self._journal.enqueue(ops)

    def delete_thread(self, thread_id: str) -> None:
        thread_id = str(thread_id)
        with self._lock:
            self._journal.check_open()
            self._drop_thread(thread_id)
            self._journal.enqueue([("del_thread", (thread_id,))])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata `run_id` is one of `run_ids` (with their
        writes and the blobs no remaining checkpoint uses), and the writes those runs made on
        other checkpoints (a resume value, for instance). A surviving checkpoint whose parent
        was deleted is re-attached to the nearest surviving ancestor."""
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run IDs, not a str")
        run_ids = {str(r) for r in run_ids}
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            doomed: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
            for run_id in run_ids:
                for thread_id, checkpoint_ns, checkpoint_id in self._ix.run_ckpts.get(run_id, ()):
                    doomed[(thread_id, checkpoint_ns)].add(checkpoint_id)
            for (thread_id, checkpoint_ns), checkpoint_ids in doomed.items():
                self._delete_checkpoints(thread_id, checkpoint_ns, checkpoint_ids, ops, splice=True)
            for run_id in run_ids:
                for key in list(self._ix.run_writes.get(run_id, ())):
                    self._delete_write(key, ops)
            self._journal.enqueue(ops)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, write and blob of one thread to another (the whole parent
        chain, so delta channels stay reconstructible). Existing checkpoints of the target
        with the same ids are replaced."""
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            for key in list(self._ix.thread_blobs.get(src, ())):
                typed = self.blobs.get(key)
                if typed is None:
                    continue
                new_key = (dst, *key[1:])
                self.blobs[new_key] = typed
                self._ix.thread_blobs[dst].add(new_key)
                ops.append(("blob", (*new_key, typed[0], typed[1])))
            for checkpoint_ns, checkpoints in list(self.storage.get(src, {}).items()):
                for checkpoint_id, entry in list(checkpoints.items()):
                    ckpt_typed, meta_typed, parent_id = entry
                    self.storage[dst][checkpoint_ns][checkpoint_id] = entry
                    run_id = self._ix.ckpt_run.get((src, checkpoint_ns, checkpoint_id))
                    self._ix.set_ckpt_run((dst, checkpoint_ns, checkpoint_id), run_id)
                    ops.append(
                        (
                            "ckpt",
                            (dst, checkpoint_ns, checkpoint_id, parent_id, ckpt_typed[0],
                             ckpt_typed[1], meta_typed[0], meta_typed[1], run_id),
                        )
                    )
            for outer in list(self._ix.thread_writes.get(src, ())):
                stored = self.writes.get(outer)
                if not stored:
                    continue
                new_outer = (dst, outer[1], outer[2])
                for inner, value in list(stored.items()):
                    t_id, channel, typed, task_path = value
                    self.writes[new_outer][inner] = value
                    run_id = self._ix.write_run.get((*outer, *inner))
                    self._ix.set_write_run((*new_outer, *inner), run_id)
                    ops.append(
                        (
                            "write",
                            (dst, outer[1], outer[2], inner[0], inner[1], channel, typed[0],
                             typed[1], task_path, run_id),
                        )
                    )
                self._ix.thread_writes[dst].add(new_outer)
            self._journal.enqueue(ops)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`delete`: remove every checkpoint of the threads. `keep_latest`: keep the latest
        checkpoint of each namespace with its pending writes and the blobs it uses; a subgraph
        call's namespace (`node:task_id`) goes with the root checkpoint it started from. Threads
        that use a `DeltaChannel` also keep the ancestors the latest checkpoint rebuilds its
        delta channels from (up to the nearest snapshot), so their state stays intact."""
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread IDs, not a str")
        if strategy not in PRUNE_STRATEGIES:
            raise ValueError(f"Unknown prune strategy: {strategy!r}")
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            for thread_id in dict.fromkeys(str(t) for t in thread_ids):
                if strategy == "delete":
                    self._drop_thread(thread_id)
                    ops.append(("del_thread", (thread_id,)))
                else:
                    self._keep_latest(thread_id, ops)
            self._journal.enqueue(ops)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.prune(thread_ids, strategy=strategy)

    # ---- internals (lock held) -------------------------------------------------------------
    def _drop_thread(self, thread_id: str) -> None:
        namespaces = self.storage.pop(thread_id, None)
        if namespaces:
            for checkpoint_ns, checkpoints in namespaces.items():
                for checkpoint_id in checkpoints:
                    self._ix.drop_ckpt((thread_id, checkpoint_ns, checkpoint_id))
        for outer in self._ix.thread_writes.pop(thread_id, ()):
            for inner in self.writes.pop(outer, {}):
                self._ix.drop_write((*outer, *inner))
        for key in self._ix.thread_blobs.pop(thread_id, ()):
            self.blobs.pop(key, None)

    def _delete_write(self, key: WriteKey, ops: list[Op]) -> None:
        outer, inner = key[:3], key[3:]
        stored = self.writes.get(outer)
        if stored is not None and stored.pop(inner, None) is not None:
            ops.append(("del_write", key))
            if not stored:
                del self.writes[outer]
                tw = self._ix.thread_writes.get(outer[0])
                if tw is not None:
                    tw.discard(outer)
        self._ix.drop_write(key)

    def _versions(self, entry: tuple) -> ChannelVersions:
        return self.serde.loads_typed(entry[0]).get("channel_versions", {})

    def _delete_checkpoints(
        self,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_ids: set[str],
        ops: list[Op],
        *,
        splice: bool,
    ) -> None:
        """Delete checkpoints of one namespace with their writes, then the blobs that no
        remaining checkpoint of the namespace references. Surviving checkpoints whose parent
        was deleted get the nearest surviving ancestor (`splice`) or no parent."""
        namespaces = self.storage.get(thread_id)
        checkpoints = namespaces.get(checkpoint_ns) if namespaces else None
        if not checkpoints:
            return
        removed: dict[str, tuple] = {}
        for checkpoint_id in checkpoint_ids:
            entry = checkpoints.pop(checkpoint_id, None)
            if entry is None:
                continue
            removed[checkpoint_id] = entry
            key = (thread_id, checkpoint_ns, checkpoint_id)
            self._ix.drop_ckpt(key)
            ops.append(("del_ckpt", key))
            for inner in self.writes.pop(key, {}):
                self._ix.drop_write((*key, *inner))
            tw = self._ix.thread_writes.get(thread_id)
            if tw is not None:
                tw.discard(key)
        if not removed:
            return
        # re-parent survivors
        for checkpoint_id, (ckpt, meta, parent_id) in list(checkpoints.items()):
            if parent_id is None or parent_id not in removed:
                continue
            new_parent = parent_id
            if splice:
                while new_parent is not None and new_parent in removed:
                    new_parent = removed[new_parent][2]
                if new_parent is not None and new_parent not in checkpoints:
                    new_parent = None
            else:
                new_parent = None
            checkpoints[checkpoint_id] = (ckpt, meta, new_parent)
            ops.append(("set_parent", (new_parent, thread_id, checkpoint_ns, checkpoint_id)))
        # garbage-collect blobs
        freed: set[tuple[str, Any]] = set()
        for entry in removed.values():
            freed.update(self._versions(entry).items())
        if freed:
            for entry in checkpoints.values():
                freed.difference_update(self._versions(entry).items())
                if not freed:
                    break
        tb = self._ix.thread_blobs.get(thread_id)
        for channel, version in freed:
            key = (thread_id, checkpoint_ns, channel, version)
            if self.blobs.pop(key, None) is not None:
                ops.append(("del_blob", key))
            if tb is not None:
                tb.discard(key)
        if not checkpoints:
            del namespaces[checkpoint_ns]
            if not namespaces:
                del self.storage[thread_id]

    def _drop_namespace(self, thread_id: str, checkpoint_ns: str, ops: list[Op]) -> None:
        namespaces = self.storage.get(thread_id)
        checkpoints = namespaces.get(checkpoint_ns) if namespaces else None
        if checkpoints:
            self._delete_checkpoints(thread_id, checkpoint_ns, set(checkpoints), ops, splice=False)
        # writes or blobs left without checkpoints
        for outer in [o for o in self._ix.thread_writes.get(thread_id, ()) if o[1] == checkpoint_ns]:
            for inner in list(self.writes.get(outer, {})):
                self._delete_write((*outer, *inner), ops)
        tb = self._ix.thread_blobs.get(thread_id)
        if tb:
            for key in [k for k in tb if k[1] == checkpoint_ns]:
                if self.blobs.pop(key, None) is not None:
                    ops.append(("del_blob", key))
                tb.discard(key)

    def _delta_ancestors(self, thread_id: str, checkpoint_ns: str, head_id: str) -> set[str]:
        """Ancestors of `head_id` that `get_delta_channel_history` reads to rebuild the head's
        delta channels: from its parent up to the nearest one holding a stored value."""
        checkpoints = self.storage[thread_id][checkpoint_ns]
        head = checkpoints[head_id]
        counters = self.serde.loads_typed(head[1]).get("counters_since_delta_snapshot") or {}
        remaining = set(counters)
        kept: set[str] = set()
        current = head[2]
        while remaining and current is not None and current in checkpoints:
            kept.add(current)
            entry = checkpoints[current]
            versions = self._versions(entry)
            for channel in list(remaining):
                version = versions.get(channel)
                if version is None:
                    continue
                blob = self.blobs.get((thread_id, checkpoint_ns, channel, version))
                if blob is not None and blob[0] != "empty":
                    remaining.discard(channel)
            current = entry[2]
        return kept

    def _keep_latest(self, thread_id: str, ops: list[Op]) -> None:
        namespaces = self.storage.get(thread_id)
        if not namespaces:
            return
        kept: dict[str, set[str]] = {}
        roots: dict[str, str | None] = {}
        for checkpoint_ns, checkpoints in namespaces.items():
            if not checkpoints:
                continue
            head_id = max(checkpoints)
            kept[checkpoint_ns] = {head_id} | self._delta_ancestors(thread_id, checkpoint_ns, head_id)
            if ":" in checkpoint_ns:
                meta = self.serde.loads_typed(checkpoints[head_id][1])
                roots[checkpoint_ns] = (meta.get("parents") or {}).get("")
        # Decide before deleting anything: a subgraph call's namespace goes with the saved root
        # checkpoint it started from when that one is being deleted (the call is over).
        root_checkpoints = namespaces.get("", {})
        finished_calls = {
            checkpoint_ns
            for checkpoint_ns, root in roots.items()
            if root is not None and root in root_checkpoints and root not in kept.get("", ())
        }
        for checkpoint_ns in list(kept):
            if checkpoint_ns in finished_calls:
                self._drop_namespace(thread_id, checkpoint_ns, ops)
                continue
            checkpoints = namespaces.get(checkpoint_ns, {})
            unkept = set(checkpoints) - kept[checkpoint_ns]
            if unkept:
                self._delete_checkpoints(thread_id, checkpoint_ns, unkept, ops, splice=False)
            # pending writes of deleted checkpoints that had no checkpoint of their own
            for outer in [
                o for o in self._ix.thread_writes.get(thread_id, ())
                if o[1] == checkpoint_ns and o[2] not in kept[checkpoint_ns]
            ]:
                for inner in list(self.writes.get(outer, {})):
                    self._delete_write((*outer, *inner), ops)


def _relink(owner: dict, owned: dict, key, run_id: str | None) -> None:
    """Move `key` to `run_id` (None: to no run) in a pair of maps kept as each other's inverse:
    `owner[key] = run_id` and `owned[run_id] = {keys}`."""
    old = owner.pop(key, None)
    if old is not None:
        keys = owned.get(old)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del owned[old]
    if run_id is not None:
        owner[key] = run_id
        owned[run_id].add(key)
