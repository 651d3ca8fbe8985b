"""LangGraph objects <-> wire JSON (agentserver/wire.py): interrupts, checkpoint refs, commands,
state snapshots, error payloads."""

from __future__ import annotations

import asyncio

import pytest
from langgraph.types import Command, Interrupt, PregelTask, Send, StateSnapshot

from agentserver.errors import GraphLoadError, InvalidInput
from agentserver.wire import (
    INTERRUPT,
    checkpoint_ref,
    chunk_with_interrupts,
    command_from_json,
    debug_chunk,
    describe_error,
    empty_state,
    error_payload,
    interrupt_dict,
    interrupts_by_task,
    snapshot_to_dict,
    values_with_interrupts,
)

# ---- interrupts --------------------------------------------------------------------------------


def test_interrupt_dict():
    assert interrupt_dict(Interrupt(value={"q": 1}, id="abc")) == {"value": {"q": 1}, "id": "abc"}
    with_schema = Interrupt(value=1, id="x", response_schema={"type": "integer"})
    assert interrupt_dict(with_schema) == {"value": 1, "id": "x", "response_schema": {"type": "integer"}}
    assert interrupt_dict({"value": 1, "id": "x"}) == {"value": 1, "id": "x"}


def test_interrupt_merging():
    chunk = {"a": 1, INTERRUPT: (Interrupt(value="q", id="i1"),)}
    merged = chunk_with_interrupts(chunk)
    assert merged == {"a": 1, INTERRUPT: [{"value": "q", "id": "i1"}]}
    assert isinstance(chunk[INTERRUPT][0], Interrupt)  # LangGraph's chunk is left untouched

    by_task = {"t1": [{"value": 1, "id": "a"}], "t2": [{"value": 2, "id": "b"}]}
    assert values_with_interrupts({"x": 1}, by_task) == {"x": 1, INTERRUPT: [{"value": 1, "id": "a"}, {"value": 2, "id": "b"}]}
    assert values_with_interrupts({"x": 1}, {}) == {"x": 1}
    assert values_with_interrupts(None, by_task) is None
    assert values_with_interrupts([1], by_task) == [1]


# ---- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_ref():
    conf = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c", "run_id": "r"}}
    assert checkpoint_ref(conf) == {"checkpoint_id": "c", "thread_id": "t", "checkpoint_ns": ""}
    with_map = {"configurable": {"thread_id": "t", "checkpoint_ns": None, "checkpoint_id": "c", "checkpoint_map": {"": "c"}}}
    assert checkpoint_ref(with_map) == {"checkpoint_id": "c", "thread_id": "t", "checkpoint_ns": "", "checkpoint_map": {"": "c"}}
    assert checkpoint_ref({"configurable": {"thread_id": "t", "checkpoint_id": "c"}}) == {"checkpoint_id": "c", "thread_id": "t"}
    for missing in (None, {}, {"configurable": {}}, {"configurable": {"thread_id": "t"}}, {"configurable": {"checkpoint_id": "c"}}, "x"):
        assert checkpoint_ref(missing) is None


def test_debug_chunk():
    task_state = {"configurable": {"thread_id": "t", "checkpoint_ns": "child:1"}}
    chunk = {
        "type": "checkpoint",
        "payload": {
            "config": {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c2"}},
            "parent_config": {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c1"}},
            "tasks": [{"id": "k", "name": "child", "state": task_state}, {"id": "j", "name": "plain"}],
        },
    }
    out = debug_chunk(chunk)
    assert out["payload"]["checkpoint"] == {"checkpoint_id": "c2", "thread_id": "t", "checkpoint_ns": ""}
    assert out["payload"]["parent_checkpoint"]["checkpoint_id"] == "c1"
    assert out["payload"]["tasks"] == [
        {"id": "k", "name": "child", "checkpoint": task_state["configurable"]},
        {"id": "j", "name": "plain"},
    ]
    assert "checkpoint" not in chunk["payload"]  # a copy: LangGraph's chunk is untouched
    other = {"type": "task", "payload": {}}
    assert debug_chunk(other) is other


# ---- state -------------------------------------------------------------------------------------


def test_snapshot_to_dict():
    intr = Interrupt(value="q", id="i1")
    task = PregelTask(id="k", name="ask", path=("__pregel_pull", "ask"), error=None, interrupts=(intr,), state=None, result=None)
    snapshot = StateSnapshot(
        values={"x": 1},
        next=("ask",),
        config={"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c2"}},
        metadata={"step": 1},
        created_at="2025-01-01T00:00:00+00:00",
        parent_config={"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "c1"}},
        tasks=(task,),
        interrupts=(intr,),
    )
    state = snapshot_to_dict(snapshot)
    assert state["values"] == {"x": 1} and state["next"] == ["ask"]
    assert state["checkpoint"] == {"checkpoint_id": "c2", "thread_id": "t", "checkpoint_ns": ""}
    assert state["parent_checkpoint"]["checkpoint_id"] == "c1"
    assert (state["checkpoint_id"], state["parent_checkpoint_id"]) == ("c2", "c1")
    assert state["interrupts"] == [{"value": "q", "id": "i1"}]
    assert state["tasks"] == [
        {
            "id": "k", "name": "ask", "path": ("__pregel_pull", "ask"),
            "error": None, "interrupts": [{"value": "q", "id": "i1"}], "checkpoint": None, "state": None, "result": None,
        }
    ]
    assert interrupts_by_task(snapshot) == {"k": [{"value": "q", "id": "i1"}]}

    no_checkpoint = snapshot._replace(config={"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, parent_config=None)
    state = snapshot_to_dict(no_checkpoint)
    assert state["checkpoint"] is None and state["parent_checkpoint"] is None and state["checkpoint_id"] is None


def test_empty_state():
    assert empty_state()["checkpoint"] is None
    state = empty_state({"thread_id": "t", "checkpoint_id": "c", "checkpoint_map": None})
    assert state["checkpoint"] == {"thread_id": "t", "checkpoint_id": "c"} and state["checkpoint_id"] == "c"
    assert state["values"] == {} and state["next"] == [] and state["tasks"] == []


# ---- commands ----------------------------------------------------------------------------------


def test_command_from_json():
    assert command_from_json({"resume": 1}) == Command(resume=1)
    cmd = command_from_json({"update": {"k": 1}, "goto": ["a", {"node": "b", "input": {"x": 1}}]})
    assert cmd.update == {"k": 1}
    assert cmd.goto == ["a", Send("b", {"x": 1})]
    assert command_from_json({"update": [["k", 1], ("j", 2)]}).update == [("k", 1), ("j", 2)]
    assert command_from_json({"goto": "a"}).goto == ["a"]
    assert command_from_json({"goto": {"node": "b", "arg": 2}}).goto == [Send("b", 2)]  # `arg` for `input`
    assert command_from_json({}).goto == ()
    for bad in (
        {"goto": 3},
        {"goto": [{"input": 1}]},
        {"update": [["k"]]},
        {"update": "nope"},
        {"update": [[1, 2]]},
    ):
        with pytest.raises(InvalidInput):
            command_from_json(bad)
    with pytest.raises(InvalidInput):
        command_from_json(["resume"])  # type: ignore[arg-type]


# ---- errors ------------------------------------------------------------------------------------


def test_error_payload():
    class CustomError(Exception):
        pass

    assert error_payload(CustomError("bad thing")) == {"error": "CustomError", "message": "bad thing"}
    assert error_payload(asyncio.CancelledError()) == {"error": "CancelledError", "message": ""}
    try:
        try:
            raise KeyError("model")
        except KeyError as exc:
            raise GraphLoadError("g", "./g.py", "the factory failed") from exc
    except GraphLoadError as exc:
        load_error = exc
    assert error_payload(load_error) == {
        "error": "KeyError",
        "message": "Failed to load graph 'g' from ./g.py: the factory failed",
    }


def test_describe_error():
    assert describe_error(ValueError("bad\nmore")) == "bad"
    assert describe_error(ValueError("bad\nmore"), typed=True) == "ValueError: bad"
    assert describe_error(KeyError("k")) == "unknown key 'k'"
    assert describe_error(KeyError("k"), typed=True) == "KeyError: 'k'"
    assert describe_error(RuntimeError()) == "RuntimeError"
    assert describe_error(RuntimeError("  "), typed=True) == "RuntimeError"
