"""The executor: one LangGraph graph run -> wire events (agentserver/executor.py)."""

from __future__ import annotations

import asyncio
import operator
import re
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agentserver.errors import InvalidInput
from agentserver.executor import final_state, stream_run
from agentserver.run_spec import RunSpec
from agentserver.utils import dumps, loads
from agentserver.wire import error_payload

TASK_NS = re.compile(r"child:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class S(TypedDict):
    items: Annotated[list, operator.add]


def config(thread_id: str | None = None, **extra: Any) -> dict:
    return {"configurable": {"thread_id": thread_id or str(uuid.uuid4()), **extra}}


async def collect(graph, **kwargs: Any) -> list[tuple[str, Any]]:
    """Run and return the events as they go on the wire (through dumps/loads)."""
    run = RunSpec(**kwargs)
    return [(name, loads(dumps(payload))) async for name, payload in stream_run(graph, run)]


def linear_graph(*, ask: bool = False, custom: bool = False, fail: bool = False):
    """START -> a -> b -> END; b may interrupt ("need?") or raise."""

    def a(state: S) -> dict:
        if custom:
            get_stream_writer()({"progress": "a"})
        return {"items": ["a"]}

    def b(state: S) -> dict:
        if fail:
            raise ValueError("boom in b")
        if ask:
            return {"items": [interrupt("need?")]}
        return {"items": ["b"]}

    builder = StateGraph(S).add_node("a", a).add_node("b", b)
    builder.add_edge(START, "a").add_edge("a", "b").add_edge("b", END)
    return builder.compile(checkpointer=InMemorySaver())


def chat_graph():
    """chat (streams "hello big world" token by token) -> tool (returns a ToolMessage)."""
    model = GenericFakeChatModel(messages=iter([AIMessage(content="hello big world", id="m1")]))

    async def chat(state: MessagesState) -> dict:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def tool(state: MessagesState) -> dict:
        return {"messages": [ToolMessage(content="done", tool_call_id="t1", id="tm1")]}

    builder = StateGraph(MessagesState).add_node("chat", chat).add_node("tool", tool)
    builder.add_edge(START, "chat").add_edge("chat", "tool").add_edge("tool", END)
    return builder.compile(checkpointer=InMemorySaver())


class ChildState(TypedDict):
    log: Annotated[list, operator.add]


def nested_graph(*, ask: bool = True):
    """parent: p -> child (subgraph: c1 writes custom, c2 may interrupt)."""

    def c1(state: ChildState) -> dict:
        get_stream_writer()("from-child")
        return {"log": ["c1"]}

    def c2(state: ChildState) -> dict:
        return {"log": [interrupt("child?") if ask else "c2"]}

    child = StateGraph(ChildState).add_node("c1", c1).add_node("c2", c2)
    child = child.add_edge(START, "c1").add_edge("c1", "c2").compile()

    def p(state: ChildState) -> dict:
        return {"log": ["p"]}

    builder = StateGraph(ChildState).add_node("p", p).add_node("child", child)
    builder.add_edge(START, "p").add_edge("p", "child").add_edge("child", END)
    return builder.compile(checkpointer=InMemorySaver())


# --------------------------------------------------------------------------- single modes


async def test_values_mode():
    events = await collect(linear_graph(), input={"items": []}, config=config())
    assert events == [
        ("values", {"items": []}),
        ("values", {"items": ["a"]}),
        ("values", {"items": ["a", "b"]}),
    ]


async def test_default_stream_mode_is_values():
    run = RunSpec(input={"items": []}, config=config())
    assert run.stream_mode == ("values",)
    events = [name async for name, _ in stream_run(linear_graph(), run)]
    assert events == ["values", "values", "values"]


async def test_stream_mode_given_as_a_string():
    events = await collect(linear_graph(), input={"items": []}, config=config(), stream_mode="updates")
    assert [name for name, _ in events] == ["updates", "updates"]


async def test_updates_mode():
    events = await collect(linear_graph(), input={"items": []}, config=config(), stream_mode=["updates"])
    assert events == [("updates", {"a": {"items": ["a"]}}), ("updates", {"b": {"items": ["b"]}})]


async def test_custom_mode_forwards_objects_without_copying():
    sent = [{"i": i, "nested": {"x": [i]}} for i in range(100)]

    def node(state: S) -> dict:
        write = get_stream_writer()
        for payload in sent:
            write(payload)
        return {"items": ["done"]}

    graph = StateGraph(S).add_node("n", node).add_edge(START, "n").compile(checkpointer=InMemorySaver())
    run = RunSpec(input={"items": []}, config=config(), stream_mode=["custom"])
    got = [(name, payload) async for name, payload in stream_run(graph, run)]
    assert [name for name, _ in got] == ["custom"] * 100
    # the very objects the node wrote: no per-event copies or wrappers
    assert all(payload is original for (_, payload), original in zip(got, sent, strict=True))


async def test_several_modes_keep_langgraph_order():
    events = await collect(
        linear_graph(custom=True),
        input={"items": []},
        config=config(),
        stream_mode=["updates", "custom", "values"],
    )
    assert events == [
        ("values", {"items": []}),
        ("custom", {"progress": "a"}),
        ("updates", {"a": {"items": ["a"]}}),
        ("values", {"items": ["a"]}),
        ("updates", {"b": {"items": ["b"]}}),
        ("values", {"items": ["a", "b"]}),
    ]


async def test_duplicate_and_unknown_modes_are_harmless():
    events = await collect(
        linear_graph(), input={"items": []}, config=config(), stream_mode=["updates", "updates", "feedback"]
    )
    assert events == [("updates", {"a": {"items": ["a"]}}), ("updates", {"b": {"items": ["b"]}})]


async def test_tasks_mode():
    events = await collect(linear_graph(), input={"items": []}, config=config(), stream_mode=["tasks"])
    assert [name for name, _ in events] == ["tasks"] * 4
    start_a, result_a, start_b, result_b = (payload for _, payload in events)
    assert start_a == {"id": start_a["id"], "name": "a", "input": {"items": []}, "triggers": ["branch:to:a"]}
    assert result_a == {"id": start_a["id"], "name": "a", "error": None, "result": {"items": ["a"]}, "interrupts": []}
    assert start_b["name"] == "b" and start_b["input"] == {"items": ["a"]}
    assert result_b == {"id": start_b["id"], "name": "b", "error": None, "result": {"items": ["b"]}, "interrupts": []}


async def test_checkpoints_and_debug_modes():
    graph = nested_graph(ask=False)
    cfg = config()
    thread_id = cfg["configurable"]["thread_id"]
    events = await collect(graph, input={"log": []}, config=cfg, stream_mode=["checkpoints", "debug"])
    checkpoints = [payload for name, payload in events if name == "checkpoints"]
    debug = [payload for name, payload in events if name == "debug"]
    assert {name for name, _ in events} == {"checkpoints", "debug"}
    assert [c["metadata"]["step"] for c in checkpoints] == [-1, 0, 1, 2]
    assert checkpoints[-1]["values"] == {"log": ["p", "p", "c1", "c2"]}
    # plain checkpoints are LangGraph's payloads, untouched
    assert all("checkpoint" not in c and "parent_checkpoint" not in c for c in checkpoints)

    debug_checkpoints = [d["payload"] for d in debug if d["type"] == "checkpoint"]
    assert [d["type"] for d in debug].count("task") == 2
    assert [d["type"] for d in debug].count("task_result") == 2
    first, second = debug_checkpoints[0], debug_checkpoints[1]
    assert first["checkpoint"] == {
        "checkpoint_id": first["config"]["configurable"]["checkpoint_id"],
        "thread_id": thread_id,
        "checkpoint_ns": "",
    }
    assert first["parent_checkpoint"] is None
    assert second["parent_checkpoint"] == first["checkpoint"]
    # the step that runs the subgraph: its task points at the child's checkpoint namespace
    (child_task,) = debug_checkpoints[2]["tasks"]
    assert child_task["name"] == "child"
    assert "state" not in child_task
    assert child_task["checkpoint"]["thread_id"] == thread_id
    assert TASK_NS.fullmatch(child_task["checkpoint"]["checkpoint_ns"])
    # same data as the checkpoints stream otherwise
    assert [d["values"] for d in debug_checkpoints] == [c["values"] for c in checkpoints]


# --------------------------------------------------------------------------- messages


def ai_chunk(content: str, **extra: Any) -> dict:
    return AIMessageChunk(content=content, id="m1", **extra).model_dump()


def ai_message(content: str) -> dict:
    return AIMessage(content=content, id="m1").model_dump()


TOOL_MESSAGE = ToolMessage(content="done", tool_call_id="t1", id="tm1").model_dump()


async def test_messages_tuple_mode():
    events = await collect(
        chat_graph(), input={"messages": [("user", "hi")]}, config=config(), stream_mode=["messages-tuple"]
    )
    assert [name for name, _ in events] == ["messages"] * 6
    assert [message for _, (message, _meta) in events] == [
        ai_chunk("hello"),
        ai_chunk(" "),
        ai_chunk("big"),
        ai_chunk(" "),
        ai_chunk("world", chunk_position="last"),
        TOOL_MESSAGE,
    ]
    metas = [meta for _, (_message, meta) in events]
    assert [(m["langgraph_node"], m["langgraph_step"]) for m in metas] == [("chat", 1)] * 5 + [("tool", 2)]


async def test_messages_mode_accumulates_like_the_sdk_expects():
    events = await collect(
        chat_graph(), input={"messages": [("user", "hi")]}, config=config(), stream_mode=["messages"]
    )
    assert [name for name, _ in events] == [
        "messages/metadata",
        *["messages/partial"] * 5,
        "messages/metadata",
        "messages/complete",
    ]
    assert list(events[0][1]) == ["m1"]
    chat_meta = events[0][1]["m1"]["metadata"]
    assert chat_meta["langgraph_node"] == "chat" and chat_meta["langgraph_step"] == 1
    assert [payload for name, payload in events if name == "messages/partial"] == [
        [ai_message("hello")],
        [ai_message("hello ")],
        [ai_message("hello big")],
        [ai_message("hello big ")],
        [ai_message("hello big world")],
    ]
    assert list(events[6][1]) == ["tm1"]
    assert events[6][1]["tm1"]["metadata"]["langgraph_node"] == "tool"
    assert events[7] == ("messages/complete", [TOOL_MESSAGE])


async def test_messages_tuple_wins_over_messages():
    events = await collect(
        chat_graph(),
        input={"messages": [("user", "hi")]},
        config=config(),
        stream_mode=["messages", "messages-tuple"],
    )
    assert [name for name, _ in events] == ["messages"] * 6


async def test_messages_mode_with_a_complete_model_message():
    """A message a node returns whole gives metadata + complete, no partials."""

    def plain(state: MessagesState) -> dict:
        return {"messages": [AIMessage(content="whole", id="m9")]}

    graph = StateGraph(MessagesState).add_node("plain", plain).add_edge(START, "plain")
    graph = graph.compile(checkpointer=InMemorySaver())
    events = await collect(graph, input={"messages": []}, config=config(), stream_mode=["messages"])
    assert [name for name, _ in events] == ["messages/metadata", "messages/complete"]
    assert events[1][1] == [AIMessage(content="whole", id="m9").model_dump()]


# --------------------------------------------------------------------------- subgraphs


async def test_subgraph_events_are_namespaced():
    graph = nested_graph(ask=True)
    cfg = config()
    events = await collect(
        graph,
        input={"log": []},
        config=cfg,
        stream_mode=["updates", "custom"],
        subgraphs=True,
    )
    values, interrupts, has_next = await final_state(graph, cfg)
    (task_id,) = interrupts
    ns = f"child:{task_id}"
    (child_interrupt,) = interrupts[task_id]
    assert child_interrupt["value"] == "child?"
    assert events == [
        ("updates", {"p": {"log": ["p"]}}),
        (f"custom|{ns}", "from-child"),
        (f"updates|{ns}", {"c1": {"log": ["c1"]}}),
        (f"updates|{ns}", {"__interrupt__": [child_interrupt]}),
        ("updates", {"__interrupt__": [child_interrupt]}),
    ]
    assert has_next and values == {"log": ["p"]}


async def test_without_subgraphs_only_root_events():
    events = await collect(
        nested_graph(ask=False), input={"log": []}, config=config(), stream_mode=["updates", "custom"]
    )
    assert events == [
        ("updates", {"p": {"log": ["p"]}}),
        ("updates", {"child": {"log": ["p", "c1", "c2"]}}),
    ]


async def test_subgraph_messages_tuple_namespace():
    model = GenericFakeChatModel(messages=iter([AIMessage(content="yo there", id="m2")]))

    async def think(state: MessagesState) -> dict:
        return {"messages": [await model.ainvoke(state["messages"])]}

    child = StateGraph(MessagesState).add_node("think", think).add_edge(START, "think").compile()
    graph = StateGraph(MessagesState).add_node("child", child).add_edge(START, "child")
    graph = graph.compile(checkpointer=InMemorySaver())
    events = await collect(
        graph,
        input={"messages": [("user", "hi")]},
        config=config(),
        stream_mode=["messages-tuple"],
        subgraphs=True,
    )
    names = [name for name, _ in events]
    assert len(names) == 3 and len(set(names)) == 1
    prefix, ns = names[0].split("|", 1)
    assert prefix == "messages" and TASK_NS.fullmatch(ns)
    assert [message["content"] for _, (message, _meta) in events] == ["yo", " ", "there"]


# --------------------------------------------------------------------------- interrupts


async def test_interrupt_in_values_mode():
    graph = linear_graph(ask=True)
    cfg = config()
    events = await collect(graph, input={"items": []}, config=cfg)
    values, interrupts, has_next = await final_state(graph, cfg)
    (task_id,) = interrupts
    (intr,) = interrupts[task_id]
    assert intr == {"value": "need?", "id": intr["id"]} and len(intr["id"]) == 32
    assert events == [
        ("values", {"items": []}),
        ("values", {"items": ["a"]}),
        ("values", {"items": ["a"], "__interrupt__": [intr]}),  # one frame, no duplicate
    ]
    assert values == {"items": ["a"]} and has_next


async def test_interrupt_in_updates_mode():
    graph = linear_graph(ask=True)
    cfg = config()
    events = await collect(graph, input={"items": []}, config=cfg, stream_mode=["updates"])
    _, interrupts, _ = await final_state(graph, cfg)
    (intr,) = next(iter(interrupts.values()))
    assert events == [("updates", {"a": {"items": ["a"]}}), ("updates", {"__interrupt__": [intr]})]


async def test_interrupt_reaches_clients_that_asked_for_neither_values_nor_updates():
    graph = linear_graph(ask=True, custom=True)
    cfg = config()
    events = await collect(graph, input={"items": []}, config=cfg, stream_mode=["custom"])
    _, interrupts, _ = await final_state(graph, cfg)
    (intr,) = next(iter(interrupts.values()))
    assert events == [("custom", {"progress": "a"}), ("values", {"__interrupt__": [intr]})]


async def test_interrupt_fallback_is_namespaced_for_subgraphs():
    graph = nested_graph(ask=True)
    cfg = config()
    events = await collect(graph, input={"log": []}, config=cfg, stream_mode=["custom"], subgraphs=True)
    _, interrupts, _ = await final_state(graph, cfg)
    (task_id,) = interrupts
    ns = f"child:{task_id}"
    intr = interrupts[task_id]
    assert events == [
        (f"custom|{ns}", "from-child"),
        (f"values|{ns}", {"__interrupt__": intr}),
        ("values", {"__interrupt__": intr}),
    ]


async def test_interrupt_before_and_after():
    graph = linear_graph()
    cfg = config()
    events = await collect(
        graph, input={"items": []}, config=cfg, stream_mode=["values", "updates"], interrupt_before=["b"]
    )
    assert events == [
        ("values", {"items": []}),
        ("updates", {"a": {"items": ["a"]}}),
        ("values", {"items": ["a"]}),
        ("updates", {"__interrupt__": []}),
    ]
    assert await final_state(graph, cfg) == ({"items": ["a"]}, {}, True)
    # continue from the breakpoint
    events = await collect(graph, input=None, config=cfg, stream_mode=["values"])
    assert events == [("values", {"items": ["a"]}), ("values", {"items": ["a", "b"]})]
    assert await final_state(graph, cfg) == ({"items": ["a", "b"]}, {}, False)

    cfg = config()
    events = await collect(graph, input={"items": []}, config=cfg, interrupt_after="*")
    assert events == [("values", {"items": []}), ("values", {"items": ["a"]})]
    assert await final_state(graph, cfg) == ({"items": ["a"]}, {}, True)


# --------------------------------------------------------------------------- commands


async def test_command_resume():
    graph = linear_graph(ask=True)
    cfg = config()
    await collect(graph, input={"items": []}, config=cfg)
    events = await collect(graph, command={"resume": "yes"}, config=cfg, stream_mode=["updates"])
    assert events == [("updates", {"b": {"items": ["yes"]}})]
    assert await final_state(graph, cfg) == ({"items": ["a", "yes"]}, {}, False)


async def test_command_resume_by_interrupt_id():
    graph = linear_graph(ask=True)
    cfg = config()
    await collect(graph, input={"items": []}, config=cfg)
    _, interrupts, _ = await final_state(graph, cfg)
    (intr,) = next(iter(interrupts.values()))
    await collect(graph, command={"resume": {intr["id"]: "by-id"}}, config=cfg)
    assert (await final_state(graph, cfg))[0] == {"items": ["a", "by-id"]}


def goto_graph():
    seen: list[Any] = []

    def a(state: S) -> dict:
        return {"items": ["a"]}

    def b(state: S) -> dict:
        seen.append(state)
        return {"items": ["b"]}

    builder = StateGraph(S).add_node("a", a).add_node("b", b)
    builder.add_edge(START, "a").add_edge("a", END).add_edge("b", END)
    return builder.compile(checkpointer=InMemorySaver()), seen


async def test_command_update_and_goto():
    graph, seen = goto_graph()
    cfg = config()
    await collect(graph, input={"items": []}, config=cfg)
    events = await collect(graph, command={"update": {"items": ["u"]}, "goto": "b"}, config=cfg)
    assert events == [("values", {"items": ["a", "u"]}), ("values", {"items": ["a", "u", "b"]})]
    assert seen == [{"items": ["a", "u"]}]

    # update as [key, value] pairs, goto as a Send object
    events = await collect(
        graph,
        command={"update": [["items", ["pair"]]], "goto": {"node": "b", "input": {"items": ["sent"]}}},
        config=cfg,
        stream_mode=["updates"],
    )
    assert events == [("updates", {"b": {"items": ["b"]}})]
    assert seen[-1] == {"items": ["sent"]}
    assert (await final_state(graph, cfg))[0] == {"items": ["a", "u", "b", "pair", "b"]}


async def test_empty_command_falls_back_to_input():
    events = await collect(linear_graph(), input={"items": []}, command={}, config=config(), stream_mode=["updates"])
    assert [name for name, _ in events] == ["updates", "updates"]


# --------------------------------------------------------------------------- durability, forks, context


async def test_durability_is_passed_to_langgraph():
    async def history_len(durability: str) -> int:
        graph = linear_graph()
        cfg = config()
        events = await collect(graph, input={"items": []}, config=cfg, durability=durability)
        assert events[-1] == ("values", {"items": ["a", "b"]})
        return len([s async for s in graph.aget_state_history(cfg)])

    assert await history_len("sync") == 4
    assert await history_len("async") == 4
    assert await history_len("exit") == 1  # only the final checkpoint is written


async def test_fork_from_a_checkpoint():
    graph = linear_graph()
    cfg = config()
    thread_id = cfg["configurable"]["thread_id"]
    await collect(graph, input={"items": []}, config=cfg)
    history = [s async for s in graph.aget_state_history(cfg)]
    after_a = next(s for s in history if s.metadata["step"] == 1)
    fork_cfg = config(thread_id, checkpoint_id=after_a.config["configurable"]["checkpoint_id"], checkpoint_ns="")
    events = await collect(graph, input=None, config=fork_cfg, stream_mode=["values", "updates"])
    assert events == [
        ("values", {"items": ["a"]}),
        ("updates", {"b": {"items": ["b"]}}),
        ("values", {"items": ["a", "b"]}),
    ]
    # the run made a new branch off step 1 (LangGraph writes a "fork" checkpoint there first)
    latest = await graph.aget_state(cfg)
    fork = await graph.aget_state(latest.parent_config)
    assert fork.metadata["source"] == "fork"
    assert fork.parent_config["configurable"]["checkpoint_id"] == after_a.config["configurable"]["checkpoint_id"]
    # final_state reads the newest checkpoint even when given the fork's config
    assert await final_state(graph, fork_cfg) == ({"items": ["a", "b"]}, {}, False)


async def test_context_is_passed_as_runtime_context():
    class Ctx(TypedDict):
        user: str

    def node(state: S, runtime: Runtime[Ctx]) -> dict:
        return {"items": [runtime.context["user"]]}

    graph = StateGraph(S, context_schema=Ctx).add_node("n", node).add_edge(START, "n")
    graph = graph.compile(checkpointer=InMemorySaver())
    events = await collect(graph, input={"items": []}, config=config(), context={"user": "ada"})
    assert events[-1] == ("values", {"items": ["ada"]})


async def test_config_reaches_nodes():
    def node(state: S, config) -> dict:
        return {"items": [config["configurable"]["run_id"], config["metadata"]["tag"]]}

    graph = StateGraph(S).add_node("n", node).add_edge(START, "n").compile(checkpointer=InMemorySaver())
    cfg = {**config(run_id="r-1"), "metadata": {"tag": "t"}}
    events = await collect(graph, input={"items": []}, config=cfg)
    assert events[-1] == ("values", {"items": ["r-1", "t"]})


async def test_final_state_without_checkpointer():
    graph = StateGraph(S).add_node("n", lambda s: {"items": ["x"]}).add_edge(START, "n").compile()
    events = await collect(graph, input={"items": []}, config=config())
    assert events[-1] == ("values", {"items": ["x"]})
    assert await final_state(graph, config()) == (None, {}, False)


# --------------------------------------------------------------------------- events mode


def event_kinds(events: list[tuple[str, Any]]) -> list[tuple]:
    return [
        (name, payload["event"], payload["name"]) if name == "events" else (name, payload)
        for name, payload in events
    ]


async def test_events_mode_alone():
    events = await collect(linear_graph(), input={"items": []}, config=config(), stream_mode=["events"])
    assert event_kinds(events) == [
        ("events", "on_chain_start", "LangGraph"),
        ("events", "on_chain_start", "a"),
        ("events", "on_chain_stream", "a"),
        ("events", "on_chain_end", "a"),
        ("events", "on_chain_start", "b"),
        ("events", "on_chain_stream", "b"),
        ("events", "on_chain_end", "b"),
        ("events", "on_chain_end", "LangGraph"),
    ]
    root_start, root_end = events[0][1], events[-1][1]
    assert root_start["parent_ids"] == [] and root_start["data"] == {"input": {"items": []}}
    assert root_end["data"]["output"] == {"items": ["a", "b"]}
    assert events[2][1]["data"] == {"chunk": {"items": ["a"]}}


async def test_events_with_other_modes():
    events = await collect(
        chat_graph(),
        input={"messages": [("user", "hi")]},
        config=config(),
        stream_mode=["events", "updates", "messages-tuple"],
    )
    kinds = event_kinds(events)
    # the root graph's own on_chain_stream chunks become the other modes, not "events"
    assert ("events", "on_chain_stream", "LangGraph") not in kinds
    non_events = [k[0] for k in kinds if k[0] != "events"]
    assert non_events == ["messages"] * 5 + ["updates", "messages", "updates"]
    # relative order: each token follows its on_chat_model_stream event
    stream_positions = [i for i, k in enumerate(kinds) if k[1:] == ("on_chat_model_stream", "GenericFakeChatModel")]
    message_positions = [i for i, k in enumerate(kinds) if k[0] == "messages"][:5]
    assert len(stream_positions) == 5
    assert all(s < m for s, m in zip(stream_positions, message_positions, strict=True))
    chat_end = kinds.index(("events", "on_chain_end", "chat"))
    first_update = next(i for i, k in enumerate(kinds) if k[0] == "updates")
    assert first_update > chat_end
    assert kinds[-1] == ("events", "on_chain_end", "LangGraph")
    updates = [payload for name, payload in events if name == "updates"]
    assert updates[0]["chat"]["messages"][0]["content"] == "hello big world"
    assert updates[1] == {"tool": {"messages": [TOOL_MESSAGE]}}


async def test_events_mode_skips_hidden_runs_and_keeps_interrupts():
    hidden = RunnableLambda(lambda x: x, name="hidden_fn")
    shown = RunnableLambda(lambda x: x, name="shown_fn")

    async def a(state: S) -> dict:
        await hidden.ainvoke(1, config={"tags": ["langsmith:hidden"]})
        await shown.ainvoke(1)
        return {"items": ["a"]}

    def b(state: S) -> dict:
        return {"items": [interrupt("stop")]}

    graph = StateGraph(S).add_node("a", a).add_node("b", b).add_edge(START, "a").add_edge("a", "b")
    graph = graph.compile(checkpointer=InMemorySaver())
    cfg = config()
    events = await collect(graph, input={"items": []}, config=cfg, stream_mode=["events"])
    names = {p["name"] for n, p in events if n == "events"}
    assert "shown_fn" in names and "hidden_fn" not in names
    _, interrupts, _ = await final_state(graph, cfg)
    (intr,) = next(iter(interrupts.values()))
    assert [e for e in events if e[0] != "events"] == [("values", {"__interrupt__": [intr]})]


async def test_events_mode_with_subgraphs():
    graph = nested_graph(ask=False)
    events = await collect(
        graph, input={"log": []}, config=config(), stream_mode=["events", "updates"], subgraphs=True
    )
    names = [name for name, _ in events if name != "events"]
    assert names[0] == "updates"
    assert len(names) == 4 and all(TASK_NS.fullmatch(n.split("|", 1)[1]) for n in names[1:3])
    assert names[3] == "updates"
    assert [p for n, p in events if n.startswith("updates|")] == [{"c1": {"log": ["c1"]}}, {"c2": {"log": ["c2"]}}]


# --------------------------------------------------------------------------- errors and cancellation


async def test_errors_propagate_after_earlier_events():
    graph = linear_graph(fail=True)
    seen = []
    with pytest.raises(ValueError, match="boom in b") as info:
        async for name, payload in stream_run(graph, RunSpec(input={"items": []}, config=config())):
            seen.append((name, loads(dumps(payload))))
    assert seen == [("values", {"items": []}), ("values", {"items": ["a"]})]
    assert error_payload(info.value) == {"error": "ValueError", "message": "boom in b"}


async def test_errors_propagate_in_events_mode():
    with pytest.raises(ValueError, match="boom in b"):
        await collect(linear_graph(fail=True), input={"items": []}, config=config(), stream_mode=["events"])


async def test_invalid_command_raises_before_running():
    with pytest.raises(InvalidInput):
        await collect(linear_graph(), command={"goto": 7}, config=config())


@pytest.mark.parametrize("modes", [["values"], ["events"]])
async def test_cancelling_the_consumer_cancels_the_graph(modes):
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(state: S) -> dict:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"items": ["never"]}

    graph = StateGraph(S).add_node("slow", slow).add_edge(START, "slow").compile(checkpointer=InMemorySaver())
    received = []

    async def consume():
        async for event in stream_run(graph, RunSpec(input={"items": []}, config=config(), stream_mode=modes)):
            received.append(event)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 5)
    assert received  # the first events went out before the cancel


async def test_closing_the_generator_early_closes_the_graph_stream():
    finished = []

    def a(state: S) -> dict:
        return {"items": ["a"]}

    def b(state: S) -> dict:
        finished.append("b")
        return {"items": ["b"]}

    graph = StateGraph(S).add_node("a", a).add_node("b", b).add_edge(START, "a").add_edge("a", "b")
    graph = graph.compile(checkpointer=InMemorySaver())
    gen = stream_run(graph, RunSpec(input={"items": []}, config=config(), stream_mode=["updates"]))
    assert await anext(gen) == ("updates", {"a": {"items": ["a"]}})
    await gen.aclose()
    assert finished == []
