"""Runs: creation with the multitask rules, cancellation, joining and streaming.

A run is stored before anything executes it; workers (`agentserver.worker`) claim it from the
storage queue. This service never runs a graph: it talks to storage (durable records) and the
broker (the run's event log, control signals, wake-ups).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import structlog

from agentserver import __version__
from agentserver.broker.base import RESULT_EVENT, Broker, Event
from agentserver.errors import Conflict, InvalidInput, NotFound
from agentserver.run_spec import RunSpec
from agentserver.services.assistants import AssistantService
from agentserver.settings import Settings
from agentserver.storage.base import INFLIGHT, Record, RunEnd, Storage
from agentserver.utils import loads, now, uuid7
from agentserver.wire import values_with_interrupts

log = structlog.get_logger(__name__)

# `join_thread(after=THREAD_REPLAY_ALL)`: replay the thread's latest runs still in the broker.
THREAD_REPLAY_ALL = "-"
# How many of a thread's newest runs a thread stream looks back over.
THREAD_REPLAY_RUNS = 100
_RUN_PAGE = 20

# What a thread stream yields (`RunService.join_thread`): (kind, run, event).
ThreadStreamItem = (
    tuple[Literal["start", "done"], Record, None]
    | tuple[Literal["event"], Record, Event]
    | tuple[Literal["idle"], None, None]
)


def _run_key(run: Record) -> tuple:
    """The order in which a thread's runs execute (and its thread stream shows them)."""
    return (run["created_at"], run["run_id"])


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run to create, as the client asked for it (the HTTP layer builds it from the request
    body, resolving the wire's aliases: `checkpoint` vs `checkpoint_id`, `checkpoint_during`)."""

    assistant_id: str  # an assistant id, or a graph id (its system assistant)
    input: Any = None
    command: Mapping[str, Any] | None = None  # {"resume", "update", "goto"}
    checkpoint_id: str | None = None  # fork from this checkpoint
    checkpoint_ns: str | None = None
    metadata: Mapping[str, Any] | None = None
    config: Mapping[str, Any] | None = None
    context: Mapping[str, Any] | None = None
    stream_mode: Sequence[str] = ("values",)
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    interrupt_before: Sequence[str] | str | None = None
    interrupt_after: Sequence[str] | str | None = None
    webhook: str | None = None
    feedback_keys: Sequence[str] | None = None
    on_disconnect: str = "continue"
    on_completion: str | None = None  # None: "delete" for a stateless run, else "keep"
    multitask_strategy: str = "enqueue"
    if_not_exists: str = "reject"
    after_seconds: float | None = None
    durability: str | None = None  # None: "async"


@dataclass(frozen=True, slots=True)
class CreatedRun:
    run: Record
    thread_id: str
    stateless: bool


def _merge_config(base: Mapping[str, Any] | None, override: Mapping[str, Any] | None) -> dict[str, Any]:
    base = dict(base or {})
    override = override or {}
    out = {**base, **{k: v for k, v in override.items() if k != "configurable"}}
    out["configurable"] = {**(base.get("configurable") or {}), **(override.get("configurable") or {})}
    if base.get("tags") or override.get("tags"):
        out["tags"] = list(dict.fromkeys([*(base.get("tags") or []), *(override.get("tags") or [])]))
    return out


def run_context(assistant: Record, context: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """The context a run executes with: the assistant's, overlaid by the run's. When neither
    gives one, the run's `config.configurable` stands in for it (as the official server does),
    before the server adds its own keys. The executor keeps only the keys the graph's context
    schema declares; with no keys at all, LangGraph builds the schema's defaults."""
    merged = {**(assistant.get("context") or {}), **(context or {})}
    if merged:
        return merged
    return dict(config.get("configurable") or {})


def wait_body(result: dict | None, thread: Record | None) -> Any:
    """The JSON body of /wait and /join for a finished run (WIRE.md "/runs/wait and /join")."""
    if result is not None:
        if result.get("status") in ("error", "timeout"):
            return {"__error__": result.get("error")}
        return result.get("values")
    if thread is None:
        return None
    if thread.get("status") == "error" and thread.get("error"):
        return {"__error__": thread["error"]}
    return values_with_interrupts(thread.get("values"), thread.get("interrupts"))


class _GoneCheck:
    """While a subscriber idles, check now and then whether its run ended without its log ever
    ending (log expired, or lost with the broker). Checks back off from every idle tick to every
    30 s, so thousands of clients waiting on queued runs do not poll storage."""

    MAX_INTERVAL = 30.0

    def __init__(self, svc: RunService, run_id: str, thread_id: str | None) -> None:
        self.svc, self.run_id, self.thread_id = svc, run_id, thread_id
        self.interval = 0.0
        self.next_at = 0.0

    async def __call__(self) -> bool:
        loop = asyncio.get_running_loop()
        if loop.time() < self.next_at:
            return False
        self.interval = min(max(self.interval * 2, self.svc.settings.bg_job_sweep_secs), self.MAX_INTERVAL)
        self.next_at = loop.time() + self.interval
        return await self.svc._log_gone(self.run_id, self.thread_id)


class RunService:
    def __init__(self, storage: Storage, broker: Broker, settings: Settings, assistants: AssistantService) -> None:
        self.storage = storage
        self.broker = broker
        self.settings = settings
        self.assistants = assistants
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro) -> None:
        """Run a background chore (webhook, cleanup) owned by this service."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_temporary_thread(self, thread_id: str) -> None:
        """Stateless runs with on_completion=delete: their thread and checkpoints go at the end."""
        try:
            await self.storage.thread_purge(thread_id)
        except Exception as exc:  # noqa: BLE001 - the TTL sweeper is not involved; log and go on
            log.warning("could not delete temporary thread", thread_id=thread_id, error=repr(exc))

    # ---- create ----------------------------------------------------------------------------
    async def create(self, thread_id: str | None, request: RunRequest) -> CreatedRun:
        """Validate and store a run (pending), apply the multitask strategy, wake a worker."""
        stateless = thread_id is None
        try:
            assistant = await self.assistants.get(request.assistant_id)
        except NotFound:
            raise InvalidInput(f"Assistant '{request.assistant_id}' not found") from None
        if request.command is not None and request.input is not None:
            raise InvalidInput("Provide either input or command, not both")
        run_id = uuid7()
        if thread_id is None:  # stateless
            thread_id = uuid7()
        graph_id = assistant["graph_id"]
        assistant_id = assistant["assistant_id"]

        config = _merge_config(assistant.get("config"), request.config)
        context = run_context(assistant, request.context, config)
        configurable = config["configurable"]
        configurable.update(
            {
                "run_id": run_id,
                "thread_id": thread_id,
                "graph_id": graph_id,
                "assistant_id": assistant_id,
                "user_id": configurable.get("user_id", ""),
            }
        )
        if request.checkpoint_id:
            configurable["checkpoint_id"] = request.checkpoint_id
        if request.checkpoint_ns:
            configurable["checkpoint_ns"] = request.checkpoint_ns
        metadata = dict(request.metadata or {})
        config["metadata"] = {
            **(config.get("metadata") or {}),
            **metadata,
            "run_id": run_id,
            "thread_id": thread_id,
            "graph_id": graph_id,
            "assistant_id": assistant_id,
            "langgraph_api_version": __version__,
        }
        on_completion = request.on_completion or ("delete" if stateless else "keep")
        spec = RunSpec(
            config=config,
            input=request.input,
            command=dict(request.command) if request.command is not None else None,
            context=context,
            stream_mode=tuple(request.stream_mode),
            subgraphs=request.stream_subgraphs,
            interrupt_before=request.interrupt_before,
            interrupt_after=request.interrupt_after,
            durability=request.durability or "async",
            checkpoint_id=request.checkpoint_id,
            webhook=request.webhook,
            feedback_keys=request.feedback_keys,
            temporary=stateless and on_completion == "delete",
            resumable=request.stream_resumable,
            on_disconnect=request.on_disconnect,
        )
        created = now()
        run = {
            "run_id": run_id,
            "thread_id": thread_id,
            "assistant_id": assistant_id,
            "metadata": metadata,
            "status": "pending",
            "kwargs": spec.to_json(),
            "multitask_strategy": request.multitask_strategy,
            "created_at": created,
            "updated_at": created,
            "attempt": 0,
            "available_at": created + timedelta(seconds=request.after_seconds or 0),
        }
        thread = {
            "thread_id": thread_id,
            "metadata": {"graph_id": graph_id, "assistant_id": assistant_id},
            "config": {},
            "status": "busy",
            "values": None,
            "interrupts": {},
            "ttl": None,
        }
        result = await self.storage.run_create(
            run,
            thread=thread,
            if_not_exists="create" if stateless else request.if_not_exists,
            multitask_strategy=request.multitask_strategy,
        )
        for other in result.to_cancel:
            await self._cancel_one(other, request.multitask_strategy)
        delayed = run["available_at"] > created
        await self.broker.run_queued(thread_id, run_id, at=run["available_at"].timestamp() if delayed else None)
        return CreatedRun(result.run, thread_id, stateless)

    # ---- read / delete ---------------------------------------------------------------------
    async def get(self, thread_id: str | None, run_id: str) -> Record:
        run = await self.storage.run_get(run_id, thread_id)
        if run is None:
            raise NotFound(f"Run '{run_id}' not found")
        return run

    async def require_thread(self, thread_id: str) -> Record:
        thread = await self.storage.thread_get(thread_id)
        if thread is None:
            raise NotFound(f"Thread '{thread_id}' not found")
        return thread

    async def list(self, thread_id: str, *, status: str | None, limit: int, offset: int) -> list[Record]:
        await self.require_thread(thread_id)
        return await self.storage.run_list(thread_id, status=status, limit=limit, offset=offset)

    async def delete(self, thread_id: str, run_id: str) -> None:
        run = await self.get(thread_id, run_id)
        if run["status"] in INFLIGHT:
            raise Conflict(f"Run '{run_id}' is {run['status']}; cancel it before deleting it")
        await self.storage.run_delete(run_id, thread_id)

    # ---- cancel ----------------------------------------------------------------------------
    async def cancel(self, thread_id: str | None, run_id: str, action: str = "interrupt") -> Record:
        """Cancel a pending or running run. A run that has already ended is not found (404), as
        on the official server: there is nothing left to cancel."""
        run = await self.get(thread_id, run_id)
        if run["status"] not in INFLIGHT:
            raise NotFound(f"Run '{run_id}' is already {run['status']}; nothing to cancel")
        await self._cancel_one(run, action)
        return run

    async def cancel_many(
        self,
        *,
        thread_id: str | None,
        run_ids: builtins.list[str] | None,
        status: str | None,
        action: str = "interrupt",
    ) -> int:
        """Cancel the in-flight runs named (`run_ids`) or of a status; NotFound when none is left."""
        if run_ids:
            wanted = set(run_ids)
            runs = [r for r in (await self.storage.run_inflight(thread_id=thread_id)) if r["run_id"] in wanted]
            if not runs:
                raise NotFound("No pending or running runs match; they may have ended or been deleted")
        else:
            runs = await self.storage.run_inflight(thread_id=thread_id, status=status or "all")
            if not runs:
                which = status if status in INFLIGHT else "pending or running"
                raise NotFound(f"No {which} runs to cancel")
        for run in runs:
            await self._cancel_one(run, action)
        return len(runs)

    async def _cancel_one(self, run: Record, action: str) -> None:
        """Pending runs end at once; running runs get a control signal their worker obeys."""
        action = "rollback" if action == "rollback" else "interrupt"
        run_id = run["run_id"]
        await self.broker.send_control(run_id, action)
        if run["status"] == "pending":
            ended = await self.storage.run_finish(
                run_id,
                None,
                RunEnd(
                    status="interrupted", thread_status=await self._resting_status(run), delete_run=action == "rollback"
                ),
            )
            if ended:
                await self.broker.announce_end(run_id, run["thread_id"], "interrupted")
                if RunSpec.from_json(run["kwargs"]).temporary:
                    self.spawn(self._delete_temporary_thread(run["thread_id"]))

    async def _resting_status(self, run: Record) -> str:
        thread = await self.storage.thread_get(run["thread_id"])
        if thread is None:
            return "idle"
        if thread.get("interrupts"):
            return "interrupted"
        return "error" if thread.get("error") else "idle"

    # ---- join / stream ---------------------------------------------------------------------
    async def wait_result(self, run_id: str, thread_id: str | None) -> Any:
        """Block until the run is done; the /wait and /join body."""
        result: dict | None = None
        gone = _GoneCheck(self, run_id, thread_id)
        async for event in self.broker.subscribe(run_id, after="0", idle_secs=self.settings.bg_job_sweep_secs):
            if event is None:
                if await gone():
                    break
                continue
            if event.event == RESULT_EVENT:
                result = loads(event.data)
        thread = await self.storage.thread_get(thread_id) if thread_id else None
        return wait_body(result, thread)

    async def _log_gone(self, run_id: str, thread_id: str | None) -> bool:
        """True when the run is over but its event log will never end (expired, or lost)."""
        run = await self.storage.run_get(run_id, thread_id)
        if run is not None and run["status"] in INFLIGHT:
            return False
        return not await self.broker.stream_done(run_id)

    async def events(
        self,
        run_id: str,
        thread_id: str | None,
        *,
        after: str | None,
        modes: builtins.list[str] | None = None,
    ) -> AsyncIterator[Event | None]:
        """The run's client-visible events (internal ones filtered), None on idle (heartbeat).
        Ends when the run's log ends, or when the run is over and its log is gone."""
        gone = _GoneCheck(self, run_id, thread_id)
        async for event in self.broker.subscribe(run_id, after=after, idle_secs=self.settings.stream_heartbeat_secs):
            if event is None:
                if await gone():
                    return
                yield None
                continue
            if event.event.startswith("__"):
                continue
            if modes and event.event not in ("error", "metadata"):
                base = event.event.split("|", 1)[0].split("/", 1)[0]
                if base not in modes and not (base == "messages" and "messages-tuple" in modes):
                    continue
            yield event

    async def join_thread(
        self, thread_id: str, *, modes: builtins.list[str] | None, after: str | tuple[str, str] | None = None
    ) -> AsyncIterator[ThreadStreamItem]:
        """Every run of a thread, one after another, oldest first: ("start", run, None) before a
        run's first event, ("event", run, event) for each event, ("done", run, None) after its
        end, ("idle", None, None) when nothing happened for a heartbeat interval.

        `after` picks the first run: None = the runs in flight now (then every later one);
        THREAD_REPLAY_ALL = the latest runs of the thread whose event logs are still kept;
        (run_id, position) = resume after that point of that run (position: an event id, or
        "done"), then every later run, finished ones replayed from their logs."""
        wake = asyncio.Event()

        async def pump() -> None:
            async for _ in self.broker.thread_events(thread_id):
                wake.set()

        pumper = asyncio.create_task(pump())
        queue: builtins.list[tuple[Record, str | None]] = []  # (run, resume position; None = from its start)
        floor: tuple | None = None  # runs ordered after this key have not been streamed yet
        try:
            if after == THREAD_REPLAY_ALL:
                pass
            elif after is not None and (resumed := await self.storage.run_get(after[0], thread_id)) is not None:
                floor = _run_key(resumed)
                if after[1] != "done":
                    queue.append((resumed, after[1]))
            else:  # from now on (also when the run resumed from was deleted meanwhile)
                inflight = sorted(await self.storage.run_inflight(thread_id=thread_id), key=_run_key)
                queue = [(r, None) for r in inflight]
                latest = inflight[-1:] or await self.storage.run_list(thread_id, status=None, limit=1, offset=0)
                floor = _run_key(latest[0]) if latest else None
            while True:
                wake.clear()
                if not queue:
                    queue = [(r, None) for r in await self._runs_after(thread_id, floor)]
                if not queue:
                    try:
                        await asyncio.wait_for(wake.wait(), self.settings.stream_heartbeat_secs)
                    except TimeoutError:
                        yield "idle", None, None
                    continue
                run, position = queue.pop(0)
                floor = _run_key(run)
                if run["status"] not in INFLIGHT and not await self.broker.stream_done(run["run_id"]):
                    continue  # ended long ago: its event log has expired, nothing to replay
                if position is None:
                    yield "start", run, None
                async for event in self.events(run["run_id"], thread_id, after=position or "0", modes=modes):
                    if event is None:
                        yield "idle", None, None
                    else:
                        yield "event", run, event
                yield "done", run, None
        finally:
            pumper.cancel()

    async def _runs_after(self, thread_id: str, floor: tuple | None) -> builtins.list[Record]:
        """The thread's runs ordered after `floor` (all when None), oldest first; at most
        THREAD_REPLAY_RUNS of the newest."""
        found: dict[str, Record] = {}
        offset = 0
        while len(found) < THREAD_REPLAY_RUNS:
            page = await self.storage.run_list(thread_id, status=None, limit=_RUN_PAGE, offset=offset)
            for run in page:
                if floor is not None and _run_key(run) <= floor:
                    return sorted(found.values(), key=_run_key)
                found.setdefault(run["run_id"], run)
            if len(page) < _RUN_PAGE:
                break
            offset += _RUN_PAGE
        return sorted(found.values(), key=_run_key)
