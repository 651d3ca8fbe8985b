"""One run of one LangGraph graph, turned into the wire's stream events.

The worker claims a run, builds the graph (checkpointer attached), and iterates
:func:`stream_run`; every ``(event_name, payload)`` pair it yields is published as is
(``payload`` is serialised with :func:`agentserver.utils.dumps`, which renders LangChain
messages and pydantic models with ``model_dump()``). This module never touches storage or
the broker: cancellation is the worker cancelling the task that iterates the generator
(LangGraph's own generator is closed on the way out), errors raised by the graph propagate
unchanged (:func:`agentserver.wire.error_payload` gives their wire form). What a run asks for
is its :class:`agentserver.run_spec.RunSpec`; the LangGraph-to-wire conversions it applies
live in :mod:`agentserver.wire`.

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

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message
from langgraph._internal._constants import CONFIG_KEY_RUNTIME  # where LangGraph reads a parent runtime
from langgraph.runtime import Runtime

from agentserver.graphs import context_for
from agentserver.run_spec import RunSpec
from agentserver.wire import INTERRUPT, chunk_with_interrupts, command_from_json, debug_chunk, interrupts_by_task

__all__ = ["final_state", "stream_run"]

HIDDEN_TAG = "langsmith:hidden"

# Wire modes forwarded 1:1 from the LangGraph stream mode of the same name.
PASSTHROUGH_MODES = frozenset({"values", "updates", "custom", "tasks", "checkpoints", "debug", "tools"})

# Marker mode for forwarded astream_events dicts; LangGraph never emits a mode of this name.
_EVENTS = "events"


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
    return state.values, interrupts_by_task(state), bool(state.next)


# ---------------------------------------------------------------------------------------
# The run


def _plan(run: RunSpec) -> tuple[list[str], frozenset[str], bool, bool, bool, bool]:
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
) -> AsyncGenerator[tuple, None]:
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


async def stream_run(graph: Any, run: RunSpec) -> AsyncIterator[tuple[str, Any]]:
    """Run ``graph`` for ``run`` and yield ``(sse_event_name, payload)`` pairs.

    Errors raised by the graph propagate; closing or cancelling the consumer closes the
    graph's stream. See the module docstring for the mode-by-mode mapping.
    """
    lg_modes, passthrough, tuple_messages, legacy_messages, events, interrupt_fallback = _plan(run)
    subgraphs = bool(run.subgraphs)
    graph_input = command_from_json(run.command) if run.command else run.input

    context = context_for(graph, run.context)
    kwargs: dict[str, Any] = {"stream_mode": lg_modes, "subgraphs": subgraphs, "context": context}
    config = run.config
    if not context:
        # LangGraph takes an empty context for "none given" and falls back to its parent
        # runtime's: seed that one, so nodes see `{}` (a TypedDict's view) rather than None.
        config = {
            **config,
            "configurable": {**(config.get("configurable") or {}), CONFIG_KEY_RUNTIME: Runtime(context=context)},
        }
    if run.interrupt_before:
        kwargs["interrupt_before"] = run.interrupt_before
    if run.interrupt_after:
        kwargs["interrupt_after"] = run.interrupt_after
    if run.durability and graph.checkpointer is not None and graph.checkpointer is not False:
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
                        chunk = chunk_with_interrupts(chunk)
                elif mode == "debug":
                    chunk = debug_chunk(chunk)
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
                    yield ("values|" + "|".join(ns) if ns else "values"), chunk_with_interrupts(chunk)
