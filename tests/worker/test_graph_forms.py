"""Graphs as users write them, through the SDK on both shapes: runtime context, every factory
form with its `ServerRuntime` per access context, and broken graphs failing fast with their cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "graphs"))
from factory_forms import FACTORY_LOG_DIR  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def factory_calls(assistant_id: str) -> list[dict]:
    """Every factory call any server process recorded for this assistant."""
    calls = []
    for path in FACTORY_LOG_DIR.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                call = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if call.get("assistant_id") == assistant_id:
                calls.append(call)
    return calls


# ---------------------------------------------------------------- runtime context


async def test_context_schema_defaults_without_any_context(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "context", input={})
    assert out["context"] == {"model": "fake", "temperature": 0.0}


async def test_assistant_context_then_run_context_overrides_one_field(client):
    assistant = await client.assistants.create("context", context={"model": "assistant-model", "temperature": 0.2})
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={})
    assert out["context"] == {"model": "assistant-model", "temperature": 0.2}
    out = await client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={}, context={"temperature": 0.9})
    assert out["context"] == {"model": "assistant-model", "temperature": 0.9}


async def test_assistant_context_kept_across_versions(client):
    assistant = await client.assistants.create("context", context={"model": "v1-model"})
    updated = await client.assistants.update(assistant["assistant_id"], metadata={"note": "v2"}, name="renamed")
    assert updated["version"] == 2 and updated["context"] == {"model": "v1-model"}
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={})
    assert out["context"] == {"model": "v1-model", "temperature": 0.0}


async def test_pydantic_and_typeddict_context_schemas(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "ctx_pydantic", input={})
    assert out["seen"] == {"model": "fake-model", "temperature": 0.5}
    out = await client.runs.wait(thread["thread_id"], "ctx_pydantic", input={}, context={"model": "m2"})
    assert out["seen"] == {"model": "m2", "temperature": 0.5}
    other = await client.threads.create()
    out = await client.runs.wait(other["thread_id"], "ctx_typeddict", input={})
    assert out["seen"] == {"model": "typed-default", "keys": []}


async def test_context_keys_outside_the_schema_are_dropped(client):
    """A dataclass or model context refuses unknown keys; the run gets the declared ones."""
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "context", input={}, context={"model": "m", "unknown": 1})
    assert out["context"] == {"model": "m", "temperature": 0.0}
    run = (await client.runs.list(thread["thread_id"]))[0]
    assert run["status"] == "success"


async def test_configurable_stands_in_for_a_missing_context(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "context", input={}, config={"configurable": {"model": "cfg"}})
    assert out["context"] == {"model": "cfg", "temperature": 0.0}


async def test_state_update_runs_edges_with_the_assistant_context(client):
    assistant = await client.assistants.create("ctx_edge", context={"route": "right"})
    thread = await client.threads.create(metadata={"graph_id": "ctx_edge", "assistant_id": assistant["assistant_id"]})
    await client.threads.update_state(thread["thread_id"], {"value": 1}, as_node="start")
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["right"]
    out = await client.runs.wait(thread["thread_id"], assistant["assistant_id"], input=None)
    assert out["route"] == "right"


# ---------------------------------------------------------------- factory forms

FORMS = [
    "no_args", "config_only", "runtime_only", "config_runtime", "runtime_config",
    "unannotated", "async_cm", "sync_cm", "async_gen",
]
TAKES_RUNTIME = {"runtime_only", "config_runtime", "runtime_config", "unannotated", "async_cm", "sync_cm", "async_gen"}
TAKES_CONFIG = {"config_only", "config_runtime", "runtime_config", "unannotated", "async_cm", "sync_cm", "async_gen"}


@pytest.mark.parametrize("form", FORMS)
async def test_factory_form_and_access_contexts(client, form):
    graph_id = f"fac_{form}"
    assistant = await client.assistants.create(graph_id, context={"model": "ctx-model"})
    aid = assistant["assistant_id"]
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], aid, input={"value": 1}, context={"temperature": 1})
    assert out["form"] == form
    run_context = {"model": "ctx-model", "temperature": 1}
    if form in TAKES_RUNTIME:
        assert out["context"] == run_context
    await client.threads.get_state(thread["thread_id"])
    await client.threads.get_history(thread["thread_id"])
    await client.threads.update_state(thread["thread_id"], {"value": 2})
    schemas = await client.assistants.get_schemas(aid)
    assert schemas["graph_id"] == graph_id
    drawn = await client.assistants.get_graph(aid)
    assert {n["id"] for n in drawn["nodes"]} >= {"answer"}

    if form == "no_args":
        return  # takes nothing: its calls cannot be told apart by assistant
    calls = factory_calls(aid)
    assert calls and all(c["form"] == form for c in calls)
    if form not in TAKES_RUNTIME:
        if form in TAKES_CONFIG:
            assert any(c["thread_id"] == thread["thread_id"] for c in calls)
        return
    by_access: dict[str, list[dict]] = {}
    for call in calls:
        by_access.setdefault(call["access"], []).append(call)
    assert set(by_access) == {"threads.create_run", "threads.read", "threads.update", "assistants.read"}
    for access, group in by_access.items():
        for call in group:
            assert call["execution"] is (access == "threads.create_run")
            assert call["user"] is None
            assert call["store"] not in (None, "NoneType")
    assert [c["context"] for c in by_access["threads.create_run"]] == [run_context]
    assert all(c["context"] is None for a, g in by_access.items() if a != "threads.create_run" for c in g)
    if form in TAKES_CONFIG:
        run_calls = by_access["threads.create_run"]
        assert run_calls[0]["thread_id"] == thread["thread_id"]
        assert run_calls[0]["model"] == "ctx-model"  # the assistant's context, mirrored in configurable


# ---------------------------------------------------------------- broken graphs


async def test_factory_that_raises_fails_on_the_first_attempt_with_its_cause(client):
    assistant = await client.assistants.create("broken_factory")
    thread = await client.threads.create()
    parts = [
        p async for p in client.runs.stream(thread["thread_id"], assistant["assistant_id"], input={"value": 1})
    ]
    error = parts[-1]
    assert error.event == "error"
    assert error.data["error"] == "RuntimeError"
    assert "no model configured for this assistant" in error.data["message"]
    assert "broken_factory" in error.data["message"]
    runs = await client.runs.list(thread["thread_id"])
    assert [r["status"] for r in runs] == ["error"]
    assert (await client.threads.get(thread["thread_id"]))["status"] == "error"
    # One attempt: the factory was called once to execute the run, never again for a retry,
    # nor to read a final state the run never wrote.
    calls = factory_calls(assistant["assistant_id"])
    assert [c["access"] for c in calls] == ["threads.create_run"]
    waited = await client.runs.join(thread["thread_id"], runs[0]["run_id"])
    assert waited["__error__"]["error"] == "RuntimeError"


async def test_graph_that_raises_fails_once_and_the_server_logs_its_cause(client, server):
    thread = await client.threads.create()
    result = await client.runs.wait(thread["thread_id"], "broken_node", input={}, raise_error=False)
    assert result["__error__"] == {"error": "KeyError", "message": "'missing_setting'"}
    run = (await client.runs.list(thread["thread_id"]))[0]
    assert run["status"] == "error"
    logs = "".join(Path(p).read_text(errors="replace") for p in server_logs(server))
    lines = [line for line in logs.splitlines() if run["run_id"] in line and "run failed" in line]
    assert len(lines) == 1, lines
    assert "KeyError" in lines[0] and "missing_setting" in lines[0] and thread["thread_id"] in lines[0]
    assert "could not record the end of the run" not in logs
    assert "requeueing run" not in "\n".join(line for line in logs.splitlines() if run["run_id"] in line)


def server_logs(server) -> list[Path]:
    if hasattr(server, "log_path"):
        return [server.log_path]
    return [p.log_path for p in [*server.apis, *server.workers]]



# ---------------------------------------------------------------- factory signatures (no server)


def test_factory_signatures_the_server_cannot_call_fail_at_load():
    from agentserver.errors import GraphLoadError
    from agentserver.graphs import GraphRegistry

    def three(config, runtime, extra):
        raise AssertionError("never called")

    def two_configs(config, other):
        raise AssertionError("never called")

    registry = GraphRegistry()
    with pytest.raises(GraphLoadError, match="at most two parameters"):
        registry.register("three", three)
    with pytest.raises(GraphLoadError, match="ServerRuntime"):
        registry.register("two", two_configs)

    def with_default(config, runtime, verbose=False):
        return None

    registry.register("ok", with_default)  # extra parameters with defaults keep their defaults
    assert registry.is_factory("ok")


def test_server_runtime_variants():
    from agentserver.factory import CREATE_RUN, INTROSPECT, READ, UPDATE, server_runtime

    store = object()
    ctx = {"model": "m"}
    run = server_runtime(CREATE_RUN, store=store, context=ctx)
    assert run.execution_runtime is run and run.context == ctx and run.context is not ctx
    assert run.store is store and run.user is None and run.access_context == CREATE_RUN
    for access in (READ, UPDATE, INTROSPECT):
        read = server_runtime(access, store=store, context=ctx)
        assert read.execution_runtime is None and read.access_context == access and read.store is store
        with pytest.raises(PermissionError):
            read.ensure_user()


# ---------------------------------------------------------------- agents as users write them


@pytest.mark.parametrize("graph_id", ["tool_agent", "tool_agent_factory"])
async def test_create_agent_with_a_tool_and_context(client, graph_id):
    """`langchain.agents.create_agent` (a fake model calling a tool that reads the run context),
    compiled and from a `(config, runtime)` factory."""
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"],
            graph_id,
            input={"messages": [{"role": "user", "content": "Lyon"}]},
            context={"units": "kelvin"},
            stream_mode=["updates", "messages-tuple"],
        )
    ]
    events = [p.event for p in parts]
    assert "error" not in events, parts[-1]
    updates = [p.data for p in parts if p.event == "updates"]
    assert any("tools" in u for u in updates) and any("model" in u for u in updates)
    state = await client.threads.get_state(thread["thread_id"])
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[2]["content"] == "sunny in Lyon, 21 degrees kelvin"
    assert messages[-1]["content"] == "The forecast: sunny in Lyon, 21 degrees kelvin."
    # Without a context the tool sees the schema's default.
    other = await client.threads.create()
    out = await client.runs.wait(other["thread_id"], graph_id, input={"messages": [{"role": "user", "content": "Oslo"}]})
    assert out["messages"][-1]["content"] == "The forecast: sunny in Oslo, 21 degrees celsius."
