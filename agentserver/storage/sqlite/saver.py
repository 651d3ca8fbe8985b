"""A fast, durable LangGraph checkpointer for the embedded shape: memory in front, SQLite behind.

`DurableMemorySaver` is an `InMemorySaver` (every read is served from process memory, with the
same data layout) whose every change is also appended to a write-behind journal (`journal.py`),
which commits it to a SQLite file in groups; `flush()` is the durability barrier. On open the
whole file is loaded back into memory. The indexes that make deleting a thread or a run's
checkpoints cheap, and the removals that keep them in step, live in `checkpoint_index.py`.

Thread-safety: the in-memory structures are guarded by one re-entrant lock, so the saver can be
used from the event loop and from LangGraph's sync executor threads alike; `flush()` works from
any event loop (worker job loops included). Shallow copies made by `with_allowlist` share every
structure with the original.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import CONFIG_KEY_DURABILITY  # LangGraph's durability mode of the run
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

from agentserver.storage.sqlite.checkpoint_index import (
    CheckpointIndex,
    CheckpointRemovals,
)
from agentserver.storage.sqlite.journal import Journal, Op, load

PRUNE_STRATEGIES = ("keep_latest", "delete")


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


class DurableMemorySaver(CheckpointRemovals, InMemorySaver):
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
        self._journal = Journal(self.path)
        self._ix = CheckpointIndex()

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Open the file, load everything into memory and start the writer. Blocking."""
        with self._lock:
            if self._journal.is_open:
                return
            conn = self._journal.open()
            try:
                load(conn, self.storage, self.writes, self.blobs, self._ix)
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
                        candidates.append((thread_id, checkpoint_ns, checkpoint_id, checkpoints[checkpoint_id]))
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
            ops.append(_ckpt_op(thread_id, checkpoint_ns, checkpoint_id, parent_id, ckpt_typed, meta_typed, run_id))
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
                        (
                            thread_id,
                            checkpoint_ns,
                            checkpoint_id,
                            task_id,
                            inner[1],
                            channel,
                            typed[0],
                            typed[1],
                            task_path,
                            run_id,
                        ),
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
        wanted = {str(r) for r in run_ids}
        ops: list[Op] = []
        with self._lock:
            self._journal.check_open()
            doomed: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
            for run_id in wanted:
                for thread_id, checkpoint_ns, checkpoint_id in self._ix.run_ckpts.get(run_id, ()):
                    doomed[(thread_id, checkpoint_ns)].add(checkpoint_id)
            for (thread_id, checkpoint_ns), checkpoint_ids in doomed.items():
                self._delete_checkpoints(thread_id, checkpoint_ns, checkpoint_ids, ops, splice=True)
            for run_id in wanted:
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
                    ops.append(_ckpt_op(dst, checkpoint_ns, checkpoint_id, parent_id, ckpt_typed, meta_typed, run_id))
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
                            (
                                dst,
                                outer[1],
                                outer[2],
                                inner[0],
                                inner[1],
                                channel,
                                typed[0],
                                typed[1],
                                task_path,
                                run_id,
                            ),
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
        saved = self.put(config, checkpoint, metadata, new_versions)
        if (config.get("configurable") or {}).get(CONFIG_KEY_DURABILITY) == "sync":
            # durability="sync": the checkpoint is on disk before the next step starts.
            await self.flush()
        return saved

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


def _ckpt_op(
    thread_id: str,
    checkpoint_ns: str,
    checkpoint_id: str,
    parent_id: str | None,
    ckpt_typed: tuple[str, bytes],
    meta_typed: tuple[str, bytes],
    run_id: str | None,
) -> Op:
    """The journal entry that writes one checkpoint row."""
    return (
        "ckpt",
        (thread_id, checkpoint_ns, checkpoint_id, parent_id, *ckpt_typed, *meta_typed, run_id),
    )
