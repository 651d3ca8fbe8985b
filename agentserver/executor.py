"""One run of one LangGraph graph, turned into the wire's stream events.

The worker claims a run, builds the graph (checkpointer attached), and iterates
:func:`stream_run`; every ``(event_name, payload)`` pair it yields is published as is
(``payload`` is serialised with :func:`agentserver.utils.dumps`, which renders LangChain
messages and pydantic models with ``model_dump()``). This module never touches storage or
the broker: cancellation is the worker cancelling the task that iterates the generator
(LangGraph's own generator is closed on the way out), errors raised by the graph propagate
unchanged (see :func:`error_payload` for the wire form).

Wire stream modes and what they map to in LangGraph:

==================  =====================================================================
wire mode           LangGraph source -> event(s)
==================  =====================================================================
``values``          ``values`` -> ``values`` (``__interrupt__`` entries as plain dicts)
``updates``         ``updates`` -> ``updates`` (idem)
``custom``          ``custom`` -> ``custom``
``tasks``           ``tasks`` -> ``tasks``
``checkpoints``     ``checkpoints`` -> ``checkpoints``
``debug``           ``debug`` -> ``debug``; checkpoint entries gain ``checkpoint`` /
                    ``parent_checkpoint`` and their tasks' ``state`` becomes ``checkpoint``
``tools``           ``tools`` -> ``tools``
``messages-tuple``  ``messages`` -> ``messages`` with ``[message_chunk, metadata]``
``messages``        ``messages`` -> ``messages/metadata`` (once per message id), then
                    ``messages/partial`` (chunks, accumulated) or ``messages/complete``
``events``          ``astream_events(version="v2")`` -> ``events`` (see below)
==================  =====================================================================

Subgraph events (``stream_subgraphs=True``) are named ``<mode>|<ns1>|<ns2>...`` with the
namespace parts exactly as LangGraph gives them (``child:<task_id>``). The legacy
``messages/*`` events carry no namespace suffix, like the reference server.

Interrupts: LangGraph puts ``__interrupt__`` in its ``values`` chunks and in ``updates``
chunks. When the client asked for neither ``values`` nor ``updates``, the executor asks
LangGraph for ``updates`` internally and forwards only the chunks that carry interrupts,
as ``values`` events ``{"__interrupt__": [...]}``, so an interrupt always reaches the
client. (When ``values`` was asked for, its own chunk already carries the interrupt, and a
second frame would only duplicate it.)

Events mode: the run goes through ``graph.astream_events(..., version="v2")`` with the
same LangGraph stream modes as ``astream`` would get. The root graph's own
``on_chain_stream`` events carry exactly the chunks ``astream`` would have yielded, so
they feed the same translation as the plain path and are not forwarded as ``events``
themselves; every other event (minus those tagged ``langsmith:hidden``) is forwarded as an
``events`` frame, in order. Without ``events`` the cheaper ``graph.astream`` is used.

The hot path forwards LangGraph's chunk objects untouched (no copies, no
re-serialisation); only chunks that carry interrupts and debug checkpoint entries get a
shallow rewritten copy. Payloads are LangGraph's live objects: serialise them when they
are yielded, before resuming the generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message
from langgraph._internal._constants import CONFIG_KEY_RUNTIME  # where LangGraph reads a parent runtime
from langgraph.runtime import Runtime
from langgraph.types import Command, Interrupt, Send
from pydantic import BaseModel
from typing_extensions import is_typeddict

from agentserver.errors import InvalidInput
from agentserver.graphs import GraphLoadError

__all__ = [
    "RunInput",
    "build_command",
    "coerce_context",
    "context_for",
    "error_payload",
    "final_state",
    "interrupt_dict",
    "stream_run",
]

INTERRUPT = "__interrupt__"
HIDDEN_TAG = "langsmith:hidden"

# Wire modes forwarded 1:1 from the LangGraph stream mode of the same name.
PASSTHROUGH_MODES = frozenset({"values", "updates", "custom", "tasks", "checkpoints", "debug", "tools"})
WIRE_MODES = PASSTHROUGH_MODES | {"messages", "messages-tuple", "events"}

# Marker mode for forwarded astream_events dicts; LangGraph never emits a mode of this name.
_EVENTS = "events"


@dataclass(slots=True)
class RunInput:
    """What one run asks of its graph (the executor's view of ``run.kwargs``)."""

    input: Any = None
    command: dict | None = None
    config: dict = field(default_factory=dict)
    context: dict | None = None
    stream_mode: list[str] = field(default_factory=lambda: ["values"])
    stream_subgraphs: bool = False
    interrupt_before: list[str] | str | None = None
    interrupt_after: list[str] | str | None = None
    durability: str | None = "async"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> RunInput:
        """Build from a run's stored ``kwargs`` (wire names: ``subgraphs``, ``stream_mode``...)."""
        stream_mode = kwargs.get("stream_mode") or ["values"]
        if isinstance(stream_mode, str):
            stream_mode = [stream_mode]
        return cls(
            input=kwargs.get("input"),
            command=kwargs.get("command"),
            config=kwargs.get("config") or {},
            context=kwargs.get("context"),
            stream_mode=list(stream_mode),
            stream_subgraphs=bool(kwargs.get("subgraphs", kwargs.get("stream_subgraphs", False))),
            interrupt_before=kwargs.get("interrupt_before"),
            interrupt_after=kwargs.get("interrupt_after"),
            durability=kwargs.get("durability", "async"),
        )


# ---------------------------------------------------------------------------------------
# Small public helpers


def error_payload(exc: BaseException) -> dict[str, str]:
    """The ``error`` frame's data for an exception raised by a run. A graph that could not be
    built reports the type of what its factory raised, and a message naming the graph."""
    kind = exc.__cause__ if isinstance(exc, GraphLoadError) and exc.__cause__ is not None else exc
    return {"error": type(kind).__name__, "message": str(exc)}


def interrupt_dict(interrupt: Any) -> Any:
    """An interrupt in its wire form: ``{"value": ..., "id": ...}`` (+ ``response_schema``)."""
    if isinstance(interrupt, Interrupt):
        out = {"value": interrupt.value, "id": interrupt.id}
        schema = getattr(interrupt, "response_schema", None)
        if isinstance(schema, dict):
            out["response_schema"] = schema
        return out
    return interrupt  # already a dict (e.g. from a debug payload)


def build_command(cmd: Mapping[str, Any]) -> Command:
    """A LangGraph ``Command`` from the wire's ``{"resume", "update", "goto"}``.

    ``goto`` is a node name, a ``{"node": ..., "input": ...}`` send, or a list of those;
    ``update`` is a dict or a list of ``[key, value]`` pairs. Raises ``InvalidInput``.
    """
    if not isinstance(cmd, Mapping):
        raise InvalidInput("command must be an object")
    goto = cmd.get("goto")
    gotos: list[str | Send] | None = None
    if goto is not None:
        items = goto if isinstance(goto, list) else [goto]
        gotos = []
        for item in items:
            if isinstance(item, str):
                gotos.append(item)
            elif isinstance(item, Mapping) and isinstance(item.get("node"), str):
                gotos.append(Send(item["node"], item.get("input")))
            else:
                raise InvalidInput(
                    "command.goto must be a node name, a {node, input} object, or a list of those"
                )
    update = cmd.get("update")
    if isinstance(update, (list, tuple)):
        pairs = []
        for pair in update:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise InvalidInput("command.update must be an object or a list of [key, value] pairs")
            pairs.append((pair[0], pair[1]))
        update = pairs
    elif update is not None and not isinstance(update, Mapping):
        raise InvalidInput("command.update must be an object or a list of [key, value] pairs")
    return Command(update=update, goto=gotos or (), resume=cmd.get("resume"))


async def final_state(graph: Any, config: Mapping[str, Any]) -> tuple[Any, dict[str, list], bool]:
    """The thread's latest state after a run: ``(values, {task_id: [interrupt]}, has_next)``.

    Reads the newest checkpoint of the thread: a ``checkpoint_id`` (a fork's starting point)
    in ``config`` is ignored. A graph without a checkpointer has no state: ``(None, {}, False)``.
    """
    if graph.checkpointer is None or graph.checkpointer is False:
        return None, {}, False
    configurable = {
        k: v
        for k, v in (config.get("configurable") or {}).items()
        if k not in ("checkpoint_id", "checkpoint_map", "checkpoint_ns")
    }
    configurable["checkpoint_ns"] = ""
    state = await graph.aget_state({**config, "configurable": configurable})
    interrupts = {
        task.id: [interrupt_dict(i) for i in task.interrupts] for task in state.tasks if task.interrupts
    }
    return state.values, interrupts, bool(state.next)


def context_for(graph: Any, context: Mapping[str, Any] | None) -> dict[str, Any]:
    """The context a run of ``graph`` gets: ``context`` (an empty mapping when there is none,
    so LangGraph builds the defaults of the graph's ``context_schema``), without the keys that
    schema does not declare (a dataclass or model would refuse them)."""
    given = dict(context or {})
    declared = _declared_fields(getattr(graph, "context_schema", None))
    if declared is None or given.keys() <= declared:
        return given
    return {k: v for k, v in given.items() if k in declared}


def coerce_context(graph: Any, context: Mapping[str, Any] | None) -> Any:
    """``context_for(graph, context)`` as an instance of the graph's ``context_schema`` when
    that is a dataclass or a pydantic model (as LangGraph builds it for a run)."""
    given = context_for(graph, context)
    schema = getattr(graph, "context_schema", None)
    if isinstance(schema, type) and (dataclasses.is_dataclass(schema) or issubclass(schema, BaseModel)):
        return schema(**given)
    return given


def _declared_fields(schema: Any) -> frozenset[str] | None:
    """The field names of a context schema, or None when they cannot be known."""
    if not isinstance(schema, type):
        return None
    if dataclasses.is_dataclass(schema):
        return frozenset(f.name for f in dataclasses.fields(schema) if f.init)
    if issubclass(schema, BaseModel):
        names = set(schema.model_fields)
        names.update(f.alias for f in schema.model_fields.values() if f.alias)
        return frozenset(names)
    if is_typeddict(schema):
        return frozenset(getattr(schema, "__annotations__", {}))
    return None


# ---------------------------------------------------------------------------------------
# Payload rewrites (off the hot path: only chunks that need them)


def _with_interrupts(chunk: dict) -> dict:
    return {**chunk, INTERRUPT: [interrupt_dict(i) for i in chunk[INTERRUPT]]}


def _checkpoint_ref(config: Any) -> dict | None:
    """``{"checkpoint_id", "thread_id"[, "checkpoint_ns"][, "checkpoint_map"]}`` of a config."""
    if not isinstance(config, Mapping):
        return None
    configurable = config.get("configurable")
    if not configurable or not configurable.get("thread_id") or not configurable.get("checkpoint_id"):
        return None
    ref = {"checkpoint_id": configurable["checkpoint_id"], "thread_id": configurable["thread_id"]}
    if "checkpoint_ns" in configurable:
        ref["checkpoint_ns"] = configurable["checkpoint_ns"] or ""
    if "checkpoint_map" in configurable:
        ref["checkpoint_map"] = configurable["checkpoint_map"]
    return ref


def _debug_task(task: Any) -> Any:
    state = task.get("state") if isinstance(task, Mapping) else None
    if not isinstance(state, Mapping) or not state.get("configurable"):
        return task
    out = {k: v for k, v in task.items() if k != "state"}
    out["checkpoint"] = state["configurable"]
    return out


def _debug_chunk(chunk: Any) -> Any:
    """Debug ``checkpoint`` entries in the SDK's shape; other debug entries unchanged."""
    if not isinstance(chunk, Mapping) or chunk.get("type") != "checkpoint":
        return chunk
    payload = chunk.get("payload")
    if not isinstance(payload, Mapping):
        return chunk
    new_payload = {
        **payload,
        "checkpoint": _checkpoint_ref(payload.get("config")),
        "parent_checkpoint": _checkpoint_ref(payload.get("parent_config")),
        "tasks": [_debug_task(t) for t in payload.get("tasks") or ()],
    }
    return {**chunk, "payload": new_payload}


# ---------------------------------------------------------------------------------------
# The run


def _plan(run: RunInput) -> tuple[list[str], frozenset[str], bool, bool, bool, bool]:
    """LangGraph modes to ask for, wire modes forwarded 1:1, and the special-case flags."""
    modes = run.stream_mode or ["values"]
    requested = list(dict.fromkeys([modes] if isinstance(modes, str) else modes))
    wanted = set(requested)
    tuple_messages = "messages-tuple" in wanted
    legacy_messages = "messages" in wanted and not tuple_messages
    events = _EVENTS in wanted
    interrupt_fallback = "values" not in wanted and "updates" not in wanted
    lg_modes: list[str] = []
    for mode in requested:
        lg = "messages" if mode in ("messages", "messages-tuple") else mode
        if (lg in PASSTHROUGH_MODES or lg == "messages") and lg not in lg_modes:
            lg_modes.append(lg)
    if interrupt_fallback:
        lg_modes.append("updates")
    passthrough = frozenset(wanted & PASSTHROUGH_MODES) | ({_EVENTS} if events else frozenset())
    return lg_modes, passthrough, tuple_messages, legacy_messages, events, interrupt_fallback


async def _events_source(
    graph: Any, graph_input: Any, config: Any, kwargs: dict[str, Any], subgraphs: bool
) -> AsyncIterator[tuple]:
    """``astream_events`` reshaped like ``astream``'s output, other events under ``_EVENTS``."""
    root_id = None
    async with aclosing(graph.astream_events(graph_input, config, version="v2", **kwargs)) as events:
        async for event in events:
            if root_id is None:  # the first event is the root run's on_chain_start
                root_id = event["run_id"]
            if event["event"] == "on_chain_stream" and event["run_id"] == root_id:
                yield event["data"]["chunk"]
                continue
            tags = event.get("tags")
            if tags and HIDDEN_TAG in tags:
                continue
            yield ((), _EVENTS, event) if subgraphs else (_EVENTS, event)


async def stream_run(graph: Any, run: RunInput) -> AsyncIterator[tuple[str, Any]]:
    """Run ``graph`` for ``run`` and yield ``(sse_event_name, payload)`` pairs.

    Errors raised by the graph propagate; closing or cancelling the consumer closes the
    graph's stream. See the module docstring for the mode-by-mode mapping.
    """
    lg_modes, passthrough, tuple_messages, legacy_messages, events, interrupt_fallback = _plan(run)
    subgraphs = bool(run.stream_subgraphs)
    graph_input = build_command(run.command) if run.command else run.input

    context = context_for(graph, run.context)
    kwargs: dict[str, Any] = {"stream_mode": lg_modes, "subgraphs": subgraphs, "context": context}
    config = run.config
    if not context:
        # LangGraph takes an empty context for "none given" and falls back to its parent
        # runtime's: seed that one, so nodes see `{}` (a TypedDict's view) rather than None.
        config = {**config, "configurable": {**(config.get("configurable") or {}), CONFIG_KEY_RUNTIME: Runtime(context=context)}}
    if run.interrupt_before:
        kwargs["interrupt_before"] = run.interrupt_before
    if run.interrupt_after:
        kwargs["interrupt_after"] = run.interrupt_after
    if run.durability is not None and graph.checkpointer is not None and graph.checkpointer is not False:
        kwargs["durability"] = run.durability

    if events:
        source = _events_source(graph, graph_input, config, kwargs, subgraphs)
    else:
        source = graph.astream(graph_input, config, **kwargs)

    accumulated: dict[str, BaseMessage] = {}  # legacy "messages" mode: message so far, by id
    async with aclosing(source) as stream:
        async for item in stream:
            if subgraphs:
                ns, mode, chunk = item
            else:
                mode, chunk = item
                ns = ()

            if mode in passthrough:
                if mode == "values" or mode == "updates":
                    if type(chunk) is dict and INTERRUPT in chunk:
                        chunk = _with_interrupts(chunk)
                elif mode == "debug":
                    chunk = _debug_chunk(chunk)
                yield (mode + "|" + "|".join(ns) if ns else mode), chunk

            elif mode == "messages":
                if tuple_messages:
                    yield ("messages|" + "|".join(ns) if ns else "messages"), chunk
                elif legacy_messages:
                    message, metadata = chunk
                    msg_id = message.id
                    previous = accumulated.get(msg_id)
                    if previous is None:
                        accumulated[msg_id] = message
                        yield "messages/metadata", {msg_id: {"metadata": metadata}}
                    elif isinstance(previous, BaseMessageChunk) and isinstance(message, BaseMessageChunk):
                        accumulated[msg_id] = previous + message
                    else:  # a complete message supersedes whatever came before under its id
                        accumulated[msg_id] = message
                    yield (
                        "messages/partial" if isinstance(message, BaseMessageChunk) else "messages/complete",
                        [message_chunk_to_message(accumulated[msg_id])],
                    )

            elif mode == "updates" and interrupt_fallback:
                if type(chunk) is dict and chunk.get(INTERRUPT):
                    yield ("values|" + "|".join(ns) if ns else "values"), _with_interrupts(chunk)
