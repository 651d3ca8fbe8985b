"""LangGraph objects in their wire (JSON) forms, and wire JSON as LangGraph objects: the one
place where the server translates between the two. Pure functions, no I/O; used by the
executor (run events), the thread service (state, history, updates) and the worker (a run's
outcome).

* interrupts: ``interrupt_dict``, ``interrupts_by_task``, and ``__interrupt__`` merging
  (``chunk_with_interrupts`` for LangGraph's stream chunks, ``values_with_interrupts`` for a
  thread's stored values and interrupts);
* checkpoints: ``checkpoint_ref`` (a config's checkpoint, as the official server's
  ``runnable_config_to_checkpoint``) and ``debug_chunk`` (debug ``checkpoint`` entries);
* state: ``snapshot_to_dict``, ``task_to_dict``, ``empty_state``;
* commands: ``command_from_json`` (runs' ``command`` and supersteps' ``command``);
* errors: ``error_payload`` (a run's ``error`` event and stored error) and ``describe_error``
  (one line naming an exception, for messages).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.types import Command, PregelTask, Send, StateSnapshot

from agentserver.errors import GraphLoadError, InvalidInput

__all__ = [
    "INTERRUPT",
    "checkpoint_ref",
    "chunk_with_interrupts",
    "command_from_json",
    "debug_chunk",
    "describe_error",
    "empty_state",
    "error_payload",
    "interrupt_dict",
    "interrupts_by_task",
    "snapshot_to_dict",
    "task_to_dict",
    "values_with_interrupts",
]

INTERRUPT = "__interrupt__"


# ---- interrupts --------------------------------------------------------------------------------


def interrupt_dict(interrupt: Any) -> dict[str, Any]:
    """An interrupt in its wire form: ``{"value", "id"[, "response_schema"]}``; a dict (already
    in that form, e.g. from a debug payload) is returned as is."""
    if isinstance(interrupt, dict):
        return interrupt
    out = {"value": getattr(interrupt, "value", None), "id": getattr(interrupt, "id", None)}
    schema = getattr(interrupt, "response_schema", None)
    if isinstance(schema, dict):
        out["response_schema"] = schema
    return out


def interrupts_by_task(snapshot: StateSnapshot) -> dict[str, list[dict[str, Any]]]:
    """``{task_id: [interrupt, ...]}`` of a state's pending interrupts (the thread's mirror)."""
    return {t.id: [interrupt_dict(i) for i in t.interrupts] for t in snapshot.tasks if t.interrupts}


def chunk_with_interrupts(chunk: dict) -> dict:
    """A ``values`` / ``updates`` chunk whose ``__interrupt__`` entries are in their wire form
    (a shallow copy; the chunk itself is LangGraph's and stays untouched)."""
    return {**chunk, INTERRUPT: [interrupt_dict(i) for i in chunk[INTERRUPT]]}


def values_with_interrupts(values: Any, interrupts: Mapping[str, list] | None) -> Any:
    """A state's values as /wait and /join show them: the pending interrupts (by task, as the
    thread keeps them) flattened under ``__interrupt__``."""
    if interrupts and isinstance(values, dict):
        return {**values, INTERRUPT: [i for group in interrupts.values() for i in group]}
    return values


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint_ref(config: Any) -> dict[str, Any] | None:
    """``{"checkpoint_id", "thread_id"[, "checkpoint_ns"][, "checkpoint_map"]}`` of a
    RunnableConfig; None unless it names both a thread and a checkpoint."""
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


def debug_chunk(chunk: Any) -> Any:
    """A ``debug`` chunk in the SDK's shape: ``checkpoint`` entries gain ``checkpoint`` /
    ``parent_checkpoint`` and their tasks' ``state`` becomes ``checkpoint`` (a rewritten
    shallow copy); every other entry is returned untouched."""
    if not isinstance(chunk, Mapping) or chunk.get("type") != "checkpoint":
        return chunk
    payload = chunk.get("payload")
    if not isinstance(payload, Mapping):
        return chunk
    new_payload = {
        **payload,
        "checkpoint": checkpoint_ref(payload.get("config")),
        "parent_checkpoint": checkpoint_ref(payload.get("parent_config")),
        "tasks": [_debug_task(t) for t in payload.get("tasks") or ()],
    }
    return {**chunk, "payload": new_payload}


# ---- state -------------------------------------------------------------------------------------


def task_to_dict(task: PregelTask) -> dict[str, Any]:
    state = task.state
    error = task.error
    return {
        "id": task.id,
        "name": task.name,
        "path": task.path,
        "error": None if error is None else (error if isinstance(error, str) else repr(error)),
        "interrupts": [interrupt_dict(i) for i in task.interrupts],
        "checkpoint": dict(state.get("configurable") or {}) if isinstance(state, dict) else None,
        "state": snapshot_to_dict(state) if isinstance(state, StateSnapshot) else None,
        "result": task.result,
    }


def snapshot_to_dict(snapshot: StateSnapshot) -> dict[str, Any]:
    """The wire form of a StateSnapshot (a thread state)."""
    checkpoint = checkpoint_ref(snapshot.config)
    parent = checkpoint_ref(snapshot.parent_config)
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [task_to_dict(t) for t in snapshot.tasks],
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint,
        "parent_checkpoint": parent,
        "interrupts": [interrupt_dict(i) for i in snapshot.interrupts],
        "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }


def empty_state(checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state of a thread that has no checkpoint (yet) at the requested point."""
    cp = None
    if checkpoint and checkpoint.get("checkpoint_id"):
        cp = {k: v for k, v in checkpoint.items() if v is not None}
    return {
        "values": {},
        "next": [],
        "tasks": [],
        "metadata": None,
        "created_at": None,
        "checkpoint": cp,
        "parent_checkpoint": None,
        "interrupts": [],
        "checkpoint_id": cp.get("checkpoint_id") if cp else None,
        "parent_checkpoint_id": None,
    }


# ---- commands ----------------------------------------------------------------------------------

_BAD_GOTO = "command.goto must be a node name, a {node, input} object, or a list of those"
_BAD_UPDATE = "command.update must be an object or a list of [key, value] pairs"


def command_from_json(cmd: Mapping[str, Any]) -> Command:
    """A LangGraph ``Command`` from the wire's ``{"resume", "update", "goto"}``.

    ``goto`` is a node name, a ``{"node": ..., "input": ...}`` send (``arg`` is accepted for
    ``input``), or a list of those; ``update`` is a dict or a list of ``[key, value]`` pairs.
    Raises ``InvalidInput`` naming what is wrong.
    """
    if not isinstance(cmd, Mapping):
        raise InvalidInput("command must be an object")
    goto = cmd.get("goto")
    gotos: list[str | Send] | None = None
    if goto is not None:
        gotos = []
        for item in goto if isinstance(goto, list) else [goto]:
            if isinstance(item, str):
                gotos.append(item)
            elif isinstance(item, Mapping) and isinstance(item.get("node"), str):
                gotos.append(Send(item["node"], item["input"] if "input" in item else item.get("arg")))
            else:
                raise InvalidInput(_BAD_GOTO)
    update = cmd.get("update")
    if isinstance(update, (list, tuple)):
        pairs = []
        for pair in update:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise InvalidInput(_BAD_UPDATE)
            pairs.append((pair[0], pair[1]))
        update = pairs
    elif update is not None and not isinstance(update, Mapping):
        raise InvalidInput(_BAD_UPDATE)
    return Command(update=update, goto=gotos or (), resume=cmd.get("resume"))


# ---- errors ------------------------------------------------------------------------------------


def error_payload(exc: BaseException) -> dict[str, str]:
    """A failed run's ``error`` event data (and stored error): the exception's type and message.
    A graph that could not be built reports the type of what its factory raised, and a message
    naming the graph."""
    kind = exc.__cause__ if isinstance(exc, GraphLoadError) and exc.__cause__ is not None else exc
    return {"error": type(kind).__name__, "message": str(exc)}


def describe_error(exc: BaseException, *, typed: bool = False) -> str:
    """One line naming an exception: the first line of its message (a KeyError's as ``unknown
    key 'k'``), or its type's name when it has none; ``typed`` prefixes the type's name
    (``ValueError: bad``)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    if typed:
        return f"{type(exc).__name__}: {lines[0]}"
    if isinstance(exc, KeyError) and exc.args:
        return f"unknown key {exc.args[0]!r}"
    return lines[0]
