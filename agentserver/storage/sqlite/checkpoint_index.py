"""The saver's in-memory checkpoint state beyond InMemorySaver's flat dicts: secondary indexes,
and the removals that keep the dicts, the indexes and the journal in step.

`CheckpointIndex` maps threads and runs to their keys, so that deleting a thread or the
checkpoints of a run never scans the whole saver. `CheckpointRemovals` (mixed into
`DurableMemorySaver`) removes checkpoints, writes and blobs from InMemorySaver's `storage`,
`writes` and `blobs`, updates the index and appends the matching journal entries to `ops`;
every method runs with the saver's lock held.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from langgraph.checkpoint.base import ChannelVersions, SerializerProtocol

from agentserver.storage.sqlite.journal import Op, Typed

CkptKey = tuple[str, str, str]  # thread_id, checkpoint_ns, checkpoint_id
WriteKey = tuple[str, str, str, str, int]  # ... + task_id, idx
BlobKey = tuple[str, str, str, Any]  # thread_id, checkpoint_ns, channel, version


class CheckpointIndex:
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
        for d in (
            self.thread_writes,
            self.thread_blobs,
            self.ckpt_run,
            self.run_ckpts,
            self.write_run,
            self.run_writes,
        ):
            d.clear()

    def set_ckpt_run(self, key: CkptKey, run_id: str | None) -> None:
        _relink(self.ckpt_run, self.run_ckpts, key, run_id)

    def drop_ckpt(self, key: CkptKey) -> None:
        _relink(self.ckpt_run, self.run_ckpts, key, None)

    def set_write_run(self, key: WriteKey, run_id: str | None) -> None:
        _relink(self.write_run, self.run_writes, key, run_id)

    def drop_write(self, key: WriteKey) -> None:
        _relink(self.write_run, self.run_writes, key, None)


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


class CheckpointRemovals:
    """Removals over InMemorySaver's dicts that keep `_ix` in step and journal what they remove
    (into `ops`). Mixed into `DurableMemorySaver`; callers hold its lock."""

    storage: defaultdict[str, dict[str, dict[str, tuple[Typed, Typed, str | None]]]]
    writes: defaultdict[CkptKey, dict[tuple[str, int], tuple[str, str, Typed, str]]]
    blobs: dict[tuple[str, str, str, str | int | float], Typed]
    serde: SerializerProtocol
    _ix: CheckpointIndex

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
        if not namespaces:
            return
        checkpoints = namespaces.get(checkpoint_ns)
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
            new_parent: str | None = parent_id
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
            blob_key = (thread_id, checkpoint_ns, channel, version)
            if self.blobs.pop(blob_key, None) is not None:
                ops.append(("del_blob", blob_key))
            if tb is not None:
                tb.discard(blob_key)
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
                o
                for o in self._ix.thread_writes.get(thread_id, ())
                if o[1] == checkpoint_ns and o[2] not in kept[checkpoint_ns]
            ]:
                for inner in list(self.writes.get(outer, {})):
                    self._delete_write((*outer, *inner), ops)
