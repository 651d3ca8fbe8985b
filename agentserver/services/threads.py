"""Threads: records, state (through the thread's graph and the checkpointer), copies, pruning
and time-to-live.

Rules kept here:
  * a thread's graph is `metadata.graph_id` (set by its first run, or by the client); a thread
    without one has empty state and no history, and its state cannot be updated;
  * state reads and updates go through the graph (`aget_state`, `aupdate_state`...) built with
    the storage's checkpointer, using the config of the thread's assistant;
  * a state update is mirrored onto the thread (values, interrupts, status) once the new
    checkpoint is durable;
  * deleting a thread first stops its in-flight runs, then removes its runs and checkpoints;
  * a TTL (`{"strategy": "delete" | "keep_latest", "ttl": minutes}`) makes the sweeper delete
    the thread or prune it to its latest checkpoint once it expires.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from langgraph._internal._constants import CONFIG_KEY_RUNTIME  # the key LangGraph reads its runtime from
from langgraph.errors import EmptyInputError, InvalidUpdateError
from langgraph.runtime import Runtime
from langgraph.types import StateUpdate

from agentserver.broker.base import Broker
from agentserver.errors import AgentServerError, BadRequest, GraphLoadError, InvalidInput, NotFound
from agentserver.factory import READ, UPDATE, AccessContext
from agentserver.graphs import GraphRegistry, coerce_context
from agentserver.services.assistants import is_uuid
from agentserver.settings import Settings
from agentserver.storage.base import Record, Storage, ThreadQuery
from agentserver.utils import now, uuid7
from agentserver.wire import (
    checkpoint_ref,
    command_from_json,
    describe_error,
    empty_state,
    interrupts_by_task,
    snapshot_to_dict,
)

log = structlog.get_logger(__name__)

TTL_STRATEGIES = ("delete", "keep_latest")
# How long deleting a thread waits for its running runs to stop before deleting anyway.
STOP_WAIT_SECS = 5.0
_SWEEP_BATCH = 100
_STATE_FIELDS = (
    "values",
    "next",
    "tasks",
    "checkpoint",
    "metadata",
    "created_at",
    "parent_checkpoint",
    "interrupts",
)


def select_state(state: dict[str, Any], select: Sequence[str] | None) -> dict[str, Any]:
    """Project a state to `select`: top-level fields, or `values.<key>` for one state key."""
    if not select:
        return state
    out: dict[str, Any] = {}
    for field in select:
        if field.startswith("values."):
            key = field[len("values.") :]
            values = state.get("values")
            picked = out.setdefault("values", {})
            if isinstance(values, dict) and key in values and isinstance(picked, dict):
                picked[key] = values[key]
        elif field in _STATE_FIELDS:
            out[field] = state.get(field)
        else:
            raise InvalidInput(
                f"select: unknown field '{field}'; expected one of {', '.join(_STATE_FIELDS)} or values.<key>"
            )
    return out


# ---- thread search: extract paths ------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")


def parse_path(path: str) -> list[str | int]:
    """`values.messages[-1].content` -> ["values", "messages", -1, "content"]."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if match is None or (match.group(1) is not None and match.group(0).startswith(".") != (pos > 0)):
            raise ValueError(path)
        tokens.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not tokens:
        raise ValueError(path)
    return tokens


def extract_path(record: Any, tokens: Iterable[str | int]) -> Any:
    value = record
    for token in tokens:
        if isinstance(token, int):
            if not isinstance(value, list) or not -len(value) <= token < len(value):
                return None
            value = value[token]
        else:
            if not isinstance(value, dict):
                return None
            value = value.get(token)
    return value


_NO_GRAPH = (
    "Thread '{thread_id}' has no graph: set metadata.graph_id on the thread (or run a graph on it) "
    "before updating its state"
)


class ThreadService:
    def __init__(self, storage: Storage, graphs: GraphRegistry, broker: Broker, settings: Settings) -> None:
        self.storage = storage
        self.graphs = graphs
        self.broker = broker
        self.settings = settings

    # ---- records ---------------------------------------------------------------------------
    async def get(self, thread_id: str) -> Record:
        thread = await self.storage.thread_get(thread_id)
        if thread is None:
            raise NotFound(f"Thread '{thread_id}' not found")
        return thread

    async def create(
        self,
        *,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        if_exists: str = "raise",
        ttl: dict[str, Any] | None = None,
        supersteps: list[dict[str, Any]] | None = None,
    ) -> Record:
        """Create a thread; with `supersteps`, apply them through `metadata.graph_id`'s graph.
        With `if_exists="do_nothing"` an existing thread is returned untouched."""
        if thread_id is not None and not is_uuid(thread_id):
            raise InvalidInput("thread_id: must be a UUID")
        metadata = dict(metadata or {})
        ttl = self._check_ttl(ttl)
        if supersteps:
            graph_id = metadata.get("graph_id")
            if not graph_id:
                raise InvalidInput("supersteps: metadata.graph_id must name the graph the updates apply to")
            if graph_id not in self.graphs:
                known = ", ".join(self.graphs.graph_ids()) or "none"
                raise InvalidInput(f"metadata.graph_id: graph '{graph_id}' not found. Known graphs: {known}")
        if thread_id is not None and if_exists == "do_nothing":
            existing = await self.storage.thread_get(thread_id)
            if existing is not None:
                return existing
        record = {
            "thread_id": thread_id or uuid7(),
            "metadata": metadata,
            "config": {},
            "status": "idle",
            "values": None,
            "interrupts": {},
            "ttl": ttl,
        }
        thread = await self.storage.thread_create(record, if_exists=if_exists)
        if not supersteps:
            return thread
        try:
            await self._apply_supersteps(thread, supersteps)
        except BaseException:
            # The thread and its updates are one request: leave nothing half-made behind.
            await self._remove(thread["thread_id"])
            raise
        return await self.get(thread["thread_id"])

    def _check_ttl(self, ttl: dict[str, Any] | None) -> dict[str, Any] | None:
        if ttl is None:
            return None
        strategy = ttl.get("strategy", "delete")
        minutes = ttl.get("ttl")
        if strategy not in TTL_STRATEGIES:
            raise InvalidInput(f"ttl.strategy: must be one of {', '.join(TTL_STRATEGIES)}")
        if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or minutes <= 0:
            raise InvalidInput("ttl.ttl: must be a positive number of minutes")
        return {"strategy": strategy, "ttl": minutes}

    async def update(
        self, thread_id: str, *, metadata: dict[str, Any] | None = None, ttl: dict[str, Any] | None = None
    ) -> Record:
        """Merge metadata into the thread and/or set (restart) its TTL."""
        await self.get(thread_id)
        return await self.storage.thread_update(thread_id, metadata=metadata or None, ttl=self._check_ttl(ttl))

    async def delete(self, thread_id: str) -> None:
        if not await self._remove(thread_id):
            raise NotFound(f"Thread '{thread_id}' not found")

    async def _remove(self, thread_id: str) -> bool:
        """Stop the thread's in-flight runs, then delete it, its runs and its checkpoints."""
        if await self.storage.thread_get(thread_id) is None:
            return False
        await self._stop_runs(thread_id)
        return await self.storage.thread_purge(thread_id)

    async def _stop_runs(self, thread_id: str) -> None:
        """Interrupt the thread's in-flight runs and give the running ones a moment to end, so
        that none writes a checkpoint after the thread's checkpoints are deleted."""
        runs = await self.storage.run_inflight(thread_id=thread_id)
        for run in runs:
            await self.broker.send_control(run["run_id"], "interrupt")
        running = [r["run_id"] for r in runs if r.get("status") == "running"]
        if not running:
            return
        try:
            async with asyncio.timeout(STOP_WAIT_SECS):
                await asyncio.gather(*(self._stream_end(run_id) for run_id in running))
        except TimeoutError:
            log.warning("runs did not stop in time; deleting their thread anyway", thread_id=thread_id, runs=running)

    async def _stream_end(self, run_id: str) -> None:
        async for _ in self.broker.subscribe(run_id, idle_secs=STOP_WAIT_SECS):
            pass

    async def delete_for_assistant(self, assistant_id: str) -> int:
        """Delete every thread whose metadata names this assistant; returns how many."""
        deleted = 0
        while True:
            batch, _ = await self.storage.thread_search(
                ThreadQuery(metadata={"assistant_id": assistant_id}, limit=_SWEEP_BATCH, offset=0)
            )
            progress = 0
            for thread in batch:
                if await self._remove(thread["thread_id"]):
                    progress += 1
            deleted += progress
            if len(batch) < _SWEEP_BATCH or progress == 0:
                return deleted

    async def search(
        self,
        *,
        ids: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
        status: str | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str | None = None,
        sort_order: str | None = None,
        extract: dict[str, str] | None = None,
    ) -> tuple[list[Record], int]:
        """A page of threads and the total matching. With `extract`, each thread gains
        `extracted: {alias: value at path}`."""
        paths: dict[str, list[str | int]] = {}
        for alias, path in (extract or {}).items():
            try:
                paths[alias] = parse_path(path)
            except ValueError:
                raise InvalidInput(f"extract.{alias}: invalid path '{path}'") from None
        query = ThreadQuery(
            ids=list(ids) if ids is not None else None,
            metadata=metadata or None,
            values=values or None,
            status=status,
            limit=limit,
            offset=offset,
            sort_by=sort_by or "created_at",
            sort_order=sort_order or "desc",  # type: ignore[arg-type]
        )
        threads, total = await self.storage.thread_search(query)
        if paths:
            threads = [
                {**t, "extracted": {alias: extract_path(t, tokens) for alias, tokens in paths.items()}} for t in threads
            ]
        return threads, total

    async def count(
        self, *, metadata: dict[str, Any] | None = None, values: dict[str, Any] | None = None, status: str | None = None
    ) -> int:
        _, total = await self.storage.thread_search(
            ThreadQuery(metadata=metadata or None, values=values or None, status=status, limit=1, offset=0)
        )
        return total

    async def copy(self, thread_id: str) -> Record:
        """A new thread with the same metadata, config, state and checkpoints."""
        source = await self.get(thread_id)
        status = source.get("status")
        record = {
            "thread_id": uuid7(),
            "metadata": copy.deepcopy(source.get("metadata") or {}),
            "config": copy.deepcopy(source.get("config") or {}),
            "status": status if status in ("idle", "interrupted", "error") else "idle",
            "values": copy.deepcopy(source.get("values")),
            "interrupts": copy.deepcopy(source.get("interrupts") or {}),
            "ttl": None,
        }
        target = await self.storage.thread_create(record)
        try:
            await copy_checkpoints(self.storage.checkpointer, thread_id, target["thread_id"])
            await self.storage.checkpoint_barrier()
        except BaseException:
            await self._remove(target["thread_id"])
            raise
        return target

    async def prune(self, thread_ids: Sequence[str], *, strategy: str = "delete") -> int:
        """`delete`: delete the threads; `keep_latest`: keep only each thread's latest
        checkpoint (per namespace). Returns how many of the threads existed."""
        if strategy not in ("delete", "keep_latest"):
            raise InvalidInput("strategy: must be delete or keep_latest")
        ids = list(dict.fromkeys(str(t) for t in thread_ids))
        if strategy == "delete":
            pruned = 0
            for thread_id in ids:
                if await self._remove(thread_id):
                    pruned += 1
            return pruned
        existing = [t for t in ids if await self.storage.thread_get(t) is not None]
        if existing:
            await self._keep_latest(existing)
        return len(existing)

    async def _keep_latest(self, thread_ids: list[str]) -> None:
        try:
            await self.storage.checkpointer.aprune(thread_ids, strategy="keep_latest")
        except NotImplementedError:
            raise BadRequest("This storage cannot prune checkpoints (keep_latest)") from None
        await self.storage.checkpoint_barrier()

    # ---- the thread's graph ----------------------------------------------------------------
    async def _graph_config(
        self, thread: Record, checkpoint: dict[str, Any] | None = None, *, read_only: bool = False
    ) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        """(graph_id, config, context) to read or write the thread's state, or None if it has no
        graph.

        The config is the thread's assistant's, under the thread's; the context is the
        assistant's (what a state update runs the node's writers with). Reading the state of a
        graph compiled once does not depend on it, so `read_only` skips that lookup unless the
        graph is built per run by a factory (whose shape may follow the config)."""
        metadata = thread.get("metadata") or {}
        graph_id = metadata.get("graph_id")
        if not graph_id:
            return None
        if graph_id not in self.graphs:
            raise InvalidInput(
                f"Thread '{thread['thread_id']}' belongs to graph '{graph_id}', which this server does not serve"
            )
        base: dict[str, Any] = {}
        context: dict[str, Any] = {}
        assistant_id = metadata.get("assistant_id")
        shaped_by_config = not read_only or self.graphs.is_factory(graph_id)
        if shaped_by_config and assistant_id and is_uuid(str(assistant_id)):
            assistant = await self.storage.assistant_get(str(assistant_id))
            if assistant is not None and assistant.get("graph_id") == graph_id:
                base = copy.deepcopy(assistant.get("config") or {})
                context = assistant.get("context") or {}
        thread_config = thread.get("config") or {}
        config = {**base, **{k: v for k, v in thread_config.items() if k != "configurable"}}
        configurable = {
            **(base.get("configurable") or {}),
            **(thread_config.get("configurable") or {}),
            "thread_id": thread["thread_id"],
            "graph_id": graph_id,
            "checkpoint_ns": "",
        }
        if assistant_id:
            configurable["assistant_id"] = assistant_id
        for key, value in (checkpoint or {}).items():
            if key != "thread_id" and value is not None:
                configurable[key] = value
        config["configurable"] = configurable
        return graph_id, config, context

    @asynccontextmanager
    async def _graph(self, graph_id: str, config: dict[str, Any], access: AccessContext = READ) -> AsyncIterator[Any]:
        """The thread's graph on the storage's checkpointer; LangGraph's complaints about a
        request (unknown node, bad update, unknown namespace) become 400s."""
        try:
            async with self.graphs.graph(
                graph_id, config, access=access, checkpointer=self.storage.checkpointer, store=self.storage.store
            ) as graph:
                yield graph
        except GraphLoadError as exc:
            raise InvalidInput(str(exc)) from exc
        except AgentServerError:
            raise
        except (InvalidUpdateError, EmptyInputError, ValueError, TypeError, KeyError) as exc:
            raise BadRequest(describe_error(exc)) from exc

    # ---- state -----------------------------------------------------------------------------
    async def get_state(
        self, thread_id: str, *, checkpoint: dict[str, Any] | None = None, subgraphs: bool = False
    ) -> dict[str, Any]:
        """The thread's state at its latest checkpoint, or at `checkpoint`."""
        thread = await self.get(thread_id)
        setup = await self._graph_config(thread, checkpoint, read_only=True)
        if setup is None:
            return empty_state({**checkpoint, "thread_id": thread_id} if checkpoint else None)
        graph_id, config, _ = setup
        async with self._graph(graph_id, config) as graph:
            snapshot = await graph.aget_state(config, subgraphs=subgraphs)
        return snapshot_to_dict(snapshot)

    async def history(
        self,
        thread_id: str,
        *,
        limit: int = 10,
        before: str | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Past states, newest first. `before`: a checkpoint id, a checkpoint, or a config
        (`{"configurable": {"checkpoint_id": ...}}`)."""
        thread = await self.get(thread_id)
        setup = await self._graph_config(thread, checkpoint, read_only=True)
        if setup is None:
            return []
        graph_id, config, _ = setup
        before_config = None
        if before:
            ref: dict[str, Any] = {"checkpoint_id": before} if isinstance(before, str) else dict(before)
            if isinstance(ref.get("configurable"), dict):
                ref = ref["configurable"]
            if ref.get("checkpoint_id"):
                before_config = {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ref.get("checkpoint_ns") or config["configurable"]["checkpoint_ns"],
                        "checkpoint_id": ref["checkpoint_id"],
                    }
                }
        async with self._graph(graph_id, config) as graph:
            return [
                snapshot_to_dict(s)
                async for s in graph.aget_state_history(
                    config, filter=metadata or None, before=before_config, limit=limit
                )
            ]

    async def update_state(
        self,
        thread_id: str,
        *,
        values: Any,
        as_node: str | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write `values` as if `as_node` had produced them (from `checkpoint` if given, else
        from the latest state). Returns `{"checkpoint": ...}` of the new checkpoint."""
        thread = await self.get(thread_id)
        setup = await self._graph_config(thread, checkpoint)
        if setup is None:
            raise BadRequest(_NO_GRAPH.format(thread_id=thread_id))
        graph_id, config, context = setup
        async with self._graph(graph_id, config, UPDATE) as graph:
            config = self._with_runtime(graph, config, context)
            written = await graph.aupdate_state(config, values, as_node=as_node)
            await self._mirror(graph, thread)
        conf = written.get("configurable") or {}
        return {
            "checkpoint": checkpoint_ref(written),
            "configurable": {k: conf[k] for k in ("thread_id", "checkpoint_ns", "checkpoint_id") if k in conf},
            "checkpoint_id": conf.get("checkpoint_id"),
        }

    async def _apply_supersteps(self, thread: Record, supersteps: list[dict[str, Any]]) -> None:
        setup = await self._graph_config(thread)
        assert setup is not None  # create() checked metadata.graph_id
        graph_id, config, context = setup
        steps = [
            [
                StateUpdate(
                    # LangGraph annotates `values` as a dict but takes a Command too (as aupdate_state passes)
                    command_from_json(update["command"]) if update.get("command") else update.get("values"),  # type: ignore[arg-type]
                    update.get("as_node"),
                )
                for update in step["updates"]
            ]
            for step in supersteps
        ]
        async with self._graph(graph_id, config, UPDATE) as graph:
            config = self._with_runtime(graph, config, context)
            await graph.abulk_update_state(config, steps)
            await self._mirror(graph, thread)

    def _with_runtime(self, graph: Any, config: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        """`config` carrying the LangGraph runtime a state update runs the node's writers (and
        its edges) with: the thread's assistant's context, built as for a run, and the store."""
        runtime = Runtime(context=coerce_context(graph, context), store=self.storage.store)
        return {**config, "configurable": {**config["configurable"], CONFIG_KEY_RUNTIME: runtime}}

    async def _mirror(self, graph: Any, thread: Record) -> None:
        """Make the latest checkpoint durable, then copy its values/interrupts (and status,
        unless a run owns the thread) onto the thread record."""
        await self.storage.checkpoint_barrier()
        root = {"configurable": {"thread_id": thread["thread_id"], "checkpoint_ns": ""}}
        snapshot = await graph.aget_state(root)
        busy = bool(await self.storage.run_inflight(thread_id=thread["thread_id"]))
        await self.storage.thread_set_state(
            thread["thread_id"],
            values=snapshot.values,
            interrupts=interrupts_by_task(snapshot),
            status=None if busy else ("interrupted" if snapshot.next else "idle"),
        )

    # ---- time to live ----------------------------------------------------------------------
    async def ttl_sweeper(self) -> None:
        """Forever: every `thread_ttl_sweep_secs`, sweep the threads whose TTL has passed."""
        interval = self.settings.thread_ttl_sweep_secs
        while True:
            try:
                swept = await self.sweep_expired()
                if swept:
                    log.info("swept expired threads", count=swept)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried next time
                log.warning("thread TTL sweep failed", error=repr(exc))
            await asyncio.sleep(interval)

    async def sweep_expired(self) -> int:
        """Delete (strategy delete) or prune to the latest checkpoint (keep_latest, after which
        the TTL starts again) every expired thread. Returns how many were swept."""
        swept = 0
        seen: set[str] = set()
        while True:
            batch = await self.storage.thread_expired(now(), limit=_SWEEP_BATCH)
            expired = [(t, s) for t, s in batch if t not in seen]
            if not expired:
                return swept
            keep: list[str] = []
            for thread_id, strategy in expired:
                seen.add(thread_id)
                if strategy == "keep_latest":
                    keep.append(thread_id)
                elif await self._remove(thread_id):
                    swept += 1
            if keep:
                await self._keep_latest(keep)
                for thread_id in keep:
                    thread = await self.storage.thread_get(thread_id)
                    if thread is None:
                        continue
                    ttl = thread.get("ttl") or {"strategy": "keep_latest", "ttl": None}
                    # Re-arm the TTL (or clear it if the record lost its duration).
                    await self.storage.thread_update(thread_id, ttl=ttl if ttl.get("ttl") else None)
                    swept += 1


# ---- checkpoint copies -------------------------------------------------------------------------


async def copy_checkpoints(checkpointer: Any, source_thread_id: str, target_thread_id: str) -> None:
    """Copy every checkpoint (all namespaces) and pending write of a thread to another thread.
    Uses the checkpointer's own `acopy_thread` when it has one."""
    try:
        await checkpointer.acopy_thread(source_thread_id, target_thread_id)
        return
    except NotImplementedError:
        pass
    tuples = [t async for t in checkpointer.alist({"configurable": {"thread_id": source_thread_id}})]
    # Oldest first, so that parents exist before their children.
    tuples.sort(key=lambda t: t.checkpoint["id"])
    for tup in tuples:
        conf = tup.config["configurable"]
        parent_id = (tup.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        target = {
            "configurable": {
                "thread_id": target_thread_id,
                "checkpoint_ns": conf.get("checkpoint_ns", ""),
                **({"checkpoint_id": parent_id} if parent_id else {}),
            }
        }
        metadata = dict(tup.metadata or {})
        if metadata.get("thread_id") == source_thread_id:
            metadata["thread_id"] = target_thread_id
        written = await checkpointer.aput(
            target, tup.checkpoint, metadata, dict(tup.checkpoint.get("channel_versions") or {})
        )
        by_task: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        for task_id, channel, value in tup.pending_writes or ():
            by_task[task_id].append((channel, value))
        for task_id, writes in by_task.items():
            await checkpointer.aput_writes(written, writes, task_id)
