"""GraphRegistry: loading every kind of graph, factories per run, import errors, introspection."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import threading
from pathlib import Path
from uuid import UUID, uuid5

import orjson
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command
from pydantic import BaseModel
from typing_extensions import TypedDict

from agentserver.config import apply_env, load_config
from agentserver.errors import GraphLoadError, InvalidInput
from agentserver.graphs import GraphNotFound, GraphRegistry, system_assistant_id

GRAPHS_DIR = Path(__file__).parents[1] / "graphs"
# Every graph declared in the test project, in declaration order.
ALL_TEST_GRAPHS = list(json.loads((GRAPHS_DIR / "langgraph.json").read_text())["graphs"])


@pytest.fixture(scope="module")
def registry() -> GraphRegistry:
    cfg = load_config(GRAPHS_DIR)
    apply_env(cfg)
    return GraphRegistry.from_config(cfg)


@pytest.fixture
def isolated_path(monkeypatch):
    """Keep sys.path changes made by loading a throwaway project inside the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def make_project(root: Path, graphs: dict, files: dict[str, str]) -> GraphRegistry:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    (root / "langgraph.json").write_text(json.dumps({"graphs": graphs}))
    return GraphRegistry.from_config(load_config(root))


STATE_GRAPH = """
    from langgraph.graph import START, StateGraph
    from typing_extensions import TypedDict

    class State(TypedDict, total=False):
        value: str
        seen: str

    def build(tag):
        def node(state):
            return {"seen": tag}
        return StateGraph(State).add_node("node", node).add_edge(START, "node")
"""


# ---------------------------------------------------------------------- loading the test project


def test_loads_every_test_graph(registry):
    assert registry.graph_ids() == ALL_TEST_GRAPHS
    assert len(registry) == len(ALL_TEST_GRAPHS)
    assert "echo" in registry and "nope" not in registry
    assert registry.description("factory").startswith("Built per run")
    assert registry.description("echo") is None
    assert registry.is_factory("factory") and not registry.is_factory("echo")


def test_system_assistant_id():
    expected = str(uuid5(UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "agent"))
    assert system_assistant_id("agent") == expected
    assert GraphRegistry().system_assistant_id("agent") == expected
    assert expected == "fe096781-5601-53d2-b2f6-0d3403f7e9ca"


async def test_unknown_graph(registry):
    with pytest.raises(GraphNotFound, match="Graph 'nope' not found") as info:
        async with registry.graph("nope", {}):
            pass
    assert isinstance(info.value, InvalidInput)
    with pytest.raises(GraphNotFound):
        registry.description("nope")


@pytest.mark.parametrize(
    "graph_id, given, expected",
    [
        ("echo", {"value": 7}, {"value": 7, "messages": []}),
        ("steps", {}, {"steps": [f"step_{i}" for i in range(10)]}),
        ("sleeper", {"secs": 0.01}, {"secs": 0.01, "slept": 0.01}),
        ("blocking", {"secs": 0.01}, {"secs": 0.01, "slept": 0.01}),
        ("streamer", {"n": 5}, {"n": 5, "count": 5}),
        ("subgraph", {}, {"steps": ["before", "child_1", "child_2", "after"]}),
        ("uncompiled", {}, {"compiled_by_server": True}),
    ],
)
async def test_test_graphs_run(registry, graph_id, given, expected):
    async with registry.graph(graph_id, {}) as graph:
        assert await graph.ainvoke(given) == expected


async def test_failing_graph_raises_boom(registry):
    async with registry.graph("failing", {}) as graph:
        with pytest.raises(ValueError, match="boom"):
            await graph.ainvoke({})


async def test_streamer_writes_custom_events(registry):
    async with registry.graph("streamer", {}) as graph:
        events = [chunk async for chunk in graph.astream({"n": 3}, stream_mode="custom")]
    assert events == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_counter_records_each_step(registry, tmp_path):
    log = tmp_path / "steps.jsonl"
    config = {"configurable": {"thread_id": "t-counter", "run_id": "r-1"}}
    async with registry.graph("counter", config, checkpointer=InMemorySaver()) as graph:
        out = await graph.ainvoke({"path": str(log), "secs": 0}, config)
    assert out["steps"] == [f"step_{i}" for i in range(1, 6)]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["step"], x["event"]) for x in lines] == [
        (f"step_{i}", event) for i in range(1, 6) for event in ("start", "end")
    ]
    assert {x["run_id"] for x in lines} == {"r-1"} and {x["thread_id"] for x in lines} == {"t-counter"}


async def test_context_graph_reports_context_and_configurable(registry):
    config = {"configurable": {"thread_id": "t-ctx", "graph_id": "context"}}
    async with registry.graph("context", config, checkpointer=InMemorySaver()) as graph:
        out = await graph.ainvoke({}, config, context={"model": "m"})
    assert out["context"] == {"model": "m", "temperature": 0.0}
    assert out["config_keys"]["thread_id"] == "t-ctx" and out["config_keys"]["graph_id"] == "context"
    assert not any(k.startswith("__") for k in out["config_keys"])


async def test_example_agent_streams_tokens_custom_events_and_interrupts(registry):
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "t-agent"}}
    async with registry.graph("agent", config, checkpointer=saver) as graph:
        parts = [
            part
            async for part in graph.astream(
                {"messages": [{"role": "user", "content": "hello"}]},
                config,
                stream_mode=["messages", "custom", "updates"],
            )
        ]
    tokens = [data[0].content for mode, data in parts if mode == "messages"]
    assert len(tokens) > 5 and "".join(tokens).startswith("You said: hello.")
    assert {"status": "thinking"} in [data for mode, data in parts if mode == "custom"]
    interrupts = [data["__interrupt__"] for mode, data in parts if mode == "updates" and "__interrupt__" in data]
    assert interrupts[0][0].value == {"question": "What is your name?"}

    async with registry.graph("agent", config, checkpointer=saver) as graph:
        out = await graph.ainvoke(Command(resume="Ada"), config)
    assert out["name"] == "Ada"
    assert out["messages"][-1].content.startswith("Nice to meet you, Ada!")


# ---------------------------------------------------------------------- checkpointer / store


async def test_checkpointer_and_store_attached_without_mutating_shared_graph(registry):
    saver, store = InMemorySaver(), InMemoryStore()
    config = {"configurable": {"thread_id": "t-hitl"}}
    async with registry.graph("hitl") as shared:
        pass
    async with registry.graph("hitl", config, checkpointer=saver, store=store) as graph:
        assert graph is not shared
        assert graph.checkpointer is saver and graph.store is store
        out = await graph.ainvoke({"question": "ok?"}, config)
        assert out["__interrupt__"][0].value == {"question": "ok?"}
    assert shared.checkpointer is None and shared.store is None
    async with registry.graph("hitl", config, checkpointer=saver) as graph:
        out = await graph.ainvoke(Command(resume="yes"), config)
    assert out == {"question": "ok?", "answer": "yes", "done": True}


async def test_compiled_graphs_are_shared_across_runs(registry):
    async with registry.graph("uncompiled") as first:
        pass
    async with registry.graph("uncompiled") as second:
        pass
    assert first is second  # compiled once at load


async def test_attached_copy_keeps_compile_time_attributes():
    class S(BaseModel):
        x: int = 0

    graph = StateGraph(S).add_node("n", lambda s: {"x": s.x + 1}).add_edge(START, "n").compile()
    registry = GraphRegistry()
    registry.register("pydantic", graph)
    config = {"configurable": {"thread_id": "t-pyd"}}
    async with registry.graph("pydantic", config, checkpointer=InMemorySaver()) as attached:
        out = await attached.ainvoke({"x": 1}, config, version="v2")
    assert out.value == S(x=2)  # v2 output mapper survived the copy


# ---------------------------------------------------------------------- factories


async def test_test_project_factory_called_per_run_with_config(registry):
    async with registry.graph("factory", {"configurable": {"model": "a"}}) as graph:
        first = await graph.ainvoke({})
    async with registry.graph("factory", {"configurable": {"model": "b"}}) as graph:
        second = await graph.ainvoke({})
    assert first["model"] == "a" and second["model"] == "b"
    assert second["build"] == first["build"] + 1


async def test_factory_kinds(tmp_path, isolated_path):
    registry = make_project(
        tmp_path,
        {
            "sync0": "./factories.py:sync_no_arg",
            "sync1": "./factories.py:sync_with_config",
            "async1": "./factories.py:async_with_config",
            "kwonly": "./factories.py:keyword_config",
            "acm": "./factories.py:async_cm",
            "cm": "./factories.py:sync_cm",
            "agen": "./factories.py:async_gen",
            "builder": "./factories.py:returns_builder",
        },
        {
            "shared.py": STATE_GRAPH,
            "factories.py": """
                import threading
                from contextlib import asynccontextmanager, contextmanager
                from shared import build

                CALLS = []
                EVENTS = []

                def sync_no_arg():
                    CALLS.append(("sync0", None, threading.current_thread().name))
                    return build("sync0").compile()

                def sync_with_config(config):
                    CALLS.append(("sync1", config["configurable"].get("tag"), threading.current_thread().name))
                    return build(config["configurable"].get("tag")).compile()

                async def async_with_config(config):
                    CALLS.append(("async1", config["configurable"].get("tag"), threading.current_thread().name))
                    return build(config["configurable"].get("tag")).compile()

                def keyword_config(*, config):
                    return build("kw-" + config["configurable"]["tag"]).compile()

                @asynccontextmanager
                async def async_cm(config):
                    EVENTS.append("acm-enter")
                    try:
                        yield build("acm").compile()
                    except Exception as exc:
                        EVENTS.append(f"acm-error:{exc}")
                        raise
                    finally:
                        EVENTS.append("acm-exit")

                @contextmanager
                def sync_cm(config):
                    EVENTS.append("cm-enter")
                    yield build("cm").compile()
                    EVENTS.append("cm-exit")

                async def async_gen(config):
                    EVENTS.append("agen-enter")
                    yield build("agen").compile()
                    EVENTS.append("agen-exit")

                def returns_builder():
                    return build("builder")
            """,
        },
    )
    module = sys.modules["agentserver_graphs_factories"]
    assert registry.is_factory("sync0")

    async def run(graph_id: str, tag: str | None = None) -> str:
        async with registry.graph(graph_id, {"configurable": {"tag": tag}}) as graph:
            return (await graph.ainvoke({}))["seen"]

    assert await run("sync0") == "sync0"
    assert await run("sync0") == "sync0"
    assert await run("sync1", "x") == "x"
    assert await run("sync1", "y") == "y"
    assert await run("async1", "z") == "z"
    assert await run("kwonly", "k") == "kw-k"
    assert await run("builder") == "builder"
    calls = [(kind, tag) for kind, tag, _ in module.CALLS]
    assert calls == [("sync0", None), ("sync0", None), ("sync1", "x"), ("sync1", "y"), ("async1", "z")]
    main = threading.current_thread().name
    assert module.CALLS[0][2] != main  # sync factories run off the event loop's thread

    assert await run("acm") == "acm"
    assert module.EVENTS == ["acm-enter", "acm-exit"]
    assert await run("cm") == "cm"
    assert await run("agen") == "agen"
    assert module.EVENTS[2:] == ["cm-enter", "cm-exit", "agen-enter", "agen-exit"]

    module.EVENTS.clear()
    with pytest.raises(RuntimeError, match="inside the run"):
        async with registry.graph("acm", {}):
            raise RuntimeError("inside the run")
    assert module.EVENTS == ["acm-enter", "acm-error:inside the run", "acm-exit"]


async def test_factory_failures_name_the_graph(tmp_path, isolated_path):
    registry = make_project(
        tmp_path,
        {"raises": "./bad_factories.py:raises", "wrong": "./bad_factories.py:wrong_type"},
        {
            "bad_factories.py": """
                async def raises(config):
                    raise KeyError("no model configured")

                def wrong_type():
                    return 42
            """
        },
    )
    with pytest.raises(GraphLoadError) as info:
        async with registry.graph("raises", {}):
            pass
    assert "Failed to load graph 'raises'" in str(info.value)
    assert "bad_factories.py" in str(info.value) and "no model configured" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(GraphLoadError, match="returned int, expected a compiled graph"):
        async with registry.graph("wrong", {}):
            pass


# ---------------------------------------------------------------------- import errors


@pytest.mark.parametrize(
    "spec, source, error, cause",
    [
        ("./broken.py:graph", "1 / 0\n", "ZeroDivisionError: division by zero", ZeroDivisionError),
        ("./syntax.py:graph", "def (:\n", "SyntaxError", SyntaxError),
        ("./imports.py:graph", "import agentserver_no_such_module\n", "No module named 'agentserver_no_such_module'", ModuleNotFoundError),
        ("./noattr.py:graph", "x = 1\n", "has no attribute 'graph'", None),
        ("./notgraph.py:graph", "graph = 42\n", "expected a compiled graph, a StateGraph or a factory function, got int", None),
        ("./missing.py:graph", None, "file not found", None),
        ("agentserver_no_such_pkg.mod:graph", None, "No module named 'agentserver_no_such_pkg'", ModuleNotFoundError),
        ("./graph.ts:graph", "", "only Python graphs are supported", None),
    ],
)
def test_import_failure_names_graph_file_and_error(tmp_path, isolated_path, spec, source, error, cause):
    files = {}
    if source is not None:
        files[spec.split(":")[0].removeprefix("./")] = source
    with pytest.raises(GraphLoadError) as info:
        make_project(tmp_path, {"my-graph": spec}, files)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Failed to load graph 'my-graph' from ")
    assert spec.split(":")[0] in message
    assert error in message
    if spec.startswith("./"):
        assert str((tmp_path / spec[2:].split(":")[0]).resolve()) in message
    assert info.value.graph_id == "my-graph"
    if cause is not None:
        assert isinstance(info.value.__cause__, cause)
    if cause is not None and spec.startswith("./"):
        # a failed import leaves no half-initialised module behind
        assert "agentserver_graphs_" + spec[2:].split(".")[0] not in sys.modules


def test_uncompilable_builder_fails_at_load(tmp_path, isolated_path):
    with pytest.raises(GraphLoadError, match=r"'bad'.*cannot compile the StateGraph"):
        make_project(
            tmp_path,
            {"bad": "./b.py:builder"},
            {
                "b.py": """
                    from langgraph.graph import StateGraph
                    from typing_extensions import TypedDict

                    class S(TypedDict):
                        x: int

                    builder = StateGraph(S).add_node("n", lambda s: s)  # no entry point
                """
            },
        )


async def test_afrom_config_and_own_checkpointer_warning(tmp_path, isolated_path, caplog):
    (tmp_path / "own.py").write_text(
        textwrap.dedent(STATE_GRAPH)
        + "from langgraph.checkpoint.memory import InMemorySaver\n"
        + "graph = build('own').compile(checkpointer=InMemorySaver())\n"
    )
    (tmp_path / "langgraph.json").write_text(json.dumps({"graphs": {"own": "./own.py:graph"}}))
    with caplog.at_level("WARNING", logger="agentserver.graphs"):
        registry = await GraphRegistry.afrom_config(load_config(tmp_path))
    assert registry.graph_ids() == ["own"]
    assert any("'own'" in r.getMessage() and "its own checkpointer" in r.getMessage() for r in caplog.records)
    saver = InMemorySaver()
    async with registry.graph("own", {"configurable": {"thread_id": "t"}}, checkpointer=saver) as graph:
        assert graph.checkpointer is saver


# ---------------------------------------------------------------------- modules


def test_file_modules_are_registered_and_picklable(tmp_path, isolated_path):
    make_project(
        tmp_path / "proj",
        {"a": "./models.py:graph", "b": "./models.py:graph"},
        {
            "models.py": STATE_GRAPH
            + """
    class Item:
        def __init__(self, n):
            self.n = n

    graph = build("models").compile()
""",
        },
    )
    module = sys.modules["agentserver_graphs_models"]
    item = pickle.loads(pickle.dumps(module.Item(3)))
    assert type(item) is module.Item and item.n == 3


def test_same_relative_path_in_two_projects_does_not_collide(tmp_path, isolated_path):
    files = lambda tag: {"same.py": STATE_GRAPH + f"\n    graph = build({tag!r}).compile()\n"}  # noqa: E731
    one = make_project(tmp_path / "one", {"g": "./same.py:graph"}, files("one"))
    two = make_project(tmp_path / "two", {"g": "./same.py:graph"}, files("two"))
    assert one._entries["g"].graph is not two._entries["g"].graph
    assert one._entries["g"].graph.invoke({})["seen"] == "one"
    assert two._entries["g"].graph.invoke({})["seen"] == "two"


def test_package_files_support_relative_imports(tmp_path, isolated_path):
    registry = make_project(
        tmp_path,
        {"pkg": "./src/agentserver_tpkg/graph.py:graph", "mod": "agentserver_tpkg.graph:graph"},
        {
            "src/agentserver_tpkg/__init__.py": "",
            "src/agentserver_tpkg/helpers.py": STATE_GRAPH,
            "src/agentserver_tpkg/graph.py": "from .helpers import build\ngraph = build('pkg').compile()\n",
        },
    )
    try:
        assert registry._entries["pkg"].graph.invoke({})["seen"] == "pkg"
        # the file was imported under its package name, so the module spec finds the same object
        assert registry._entries["mod"].graph is registry._entries["pkg"].graph
        assert sys.modules["agentserver_tpkg.graph"].__file__ == str(tmp_path / "src/agentserver_tpkg/graph.py")
    finally:
        for name in [m for m in sys.modules if m.startswith("agentserver_tpkg")]:
            del sys.modules[name]


def test_sibling_imports_from_the_graph_folder(tmp_path, isolated_path):
    registry = make_project(
        tmp_path,
        {"g": "./agents/main.py:graph"},
        {
            "agents/agentserver_tsibling.py": STATE_GRAPH,
            "agents/main.py": "from agentserver_tsibling import build\ngraph = build('sibling').compile()\n",
        },
    )
    try:
        assert registry._entries["g"].graph.invoke({})["seen"] == "sibling"
    finally:
        sys.modules.pop("agentserver_tsibling", None)


# ---------------------------------------------------------------------- introspection


async def test_schemas(registry):
    schemas = await registry.schemas("context")
    assert set(schemas) == {
        "graph_id", "input_schema", "output_schema", "state_schema", "config_schema", "context_schema",
    }
    assert schemas["graph_id"] == "context"
    assert set(schemas["input_schema"]["properties"]) == {"value", "context", "config_keys"}
    assert set(schemas["state_schema"]["properties"]) == {"value", "context", "config_keys"}
    assert schemas["context_schema"]["properties"]["model"]["default"] == "fake"
    assert schemas["config_schema"]["type"] == "object"
    orjson.dumps(schemas)

    echo = await registry.schemas("echo")
    assert echo["context_schema"] is None
    assert echo["state_schema"]["properties"]["messages"]["type"] == "array"
    steps = await registry.schemas("steps")
    assert steps["output_schema"]["properties"]["steps"] == {"items": {"type": "string"}, "title": "Steps", "type": "array"}


async def test_schemas_of_a_factory_are_built_through_it(registry):
    async with registry.graph("factory", {}) as graph:
        before = (await graph.ainvoke({}))["build"]
    schemas = await registry.schemas("factory", {"configurable": {"model": "x"}})
    assert set(schemas["output_schema"]["properties"]) == {"value", "model", "build"}
    async with registry.graph("factory", {}) as graph:
        assert (await graph.ainvoke({}))["build"] == before + 2


class Opaque:
    pass


class OpaqueState(TypedDict, total=False):
    thing: Opaque
    n: int


async def test_state_schema_tolerates_types_without_json_schema():
    registry = GraphRegistry()
    registry.register("opaque", StateGraph(OpaqueState).add_node("n", lambda s: {}).add_edge(START, "n"))
    schemas = await registry.schemas("opaque")
    assert schemas["state_schema"]["properties"]["n"]["type"] == "integer"
    assert "thing" in schemas["state_schema"]["properties"]
    assert schemas["input_schema"] is None  # langgraph cannot draw it; reported as None, not raised


async def test_graph_json_with_xray(registry):
    flat = await registry.graph_json("subgraph", {})
    ids = {n["id"] for n in flat["nodes"]}
    assert ids == {"__start__", "before", "child", "after", "__end__"}
    assert {"source": "before", "target": "child"} in flat["edges"]
    orjson.dumps(flat)

    for xray in (True, 1):
        deep = await registry.graph_json("subgraph", {}, xray=xray)
        ids = {n["id"] for n in deep["nodes"]}
        assert {"child:child_1", "child:child_2"} <= ids and "child" not in ids
        assert {"source": "child:child_1", "target": "child:child_2"} in deep["edges"]

    factory = await registry.graph_json("factory", {"configurable": {"model": "m"}})
    assert {n["id"] for n in factory["nodes"]} == {"__start__", "answer", "__end__"}


def nested_registry() -> GraphRegistry:
    class S(TypedDict, total=False):
        x: int

    inner = StateGraph(S).add_node("leaf", lambda s: {"x": 1}).add_edge(START, "leaf").compile()
    middle = StateGraph(S).add_node("inner", inner).add_edge(START, "inner").compile()
    outer = StateGraph(S).add_node("middle", middle).add_node("plain", lambda s: {})
    outer.add_edge(START, "middle").add_edge("middle", "plain")
    registry = GraphRegistry()
    registry.register("nested", outer.compile())
    return registry


async def test_subgraphs(registry):
    subs = await registry.subgraphs("subgraph", {})
    assert list(subs) == ["child"]
    assert subs["child"]["graph_id"] == "subgraph"
    assert set(subs["child"]["state_schema"]["properties"]) == {"steps"}
    assert await registry.subgraphs("subgraph", {}, namespace="child") == subs
    assert await registry.subgraphs("subgraph", {}, namespace="nope") == {}
    assert await registry.subgraphs("echo", {}) == {}

    nested = nested_registry()
    assert list(await nested.subgraphs("nested", {})) == ["middle"]
    assert list(await nested.subgraphs("nested", {}, recurse=True)) == ["middle", "middle|inner"]
    only = await nested.subgraphs("nested", {}, namespace="middle|inner", recurse=True)
    assert list(only) == ["middle|inner"]
    assert set(only["middle|inner"]["input_schema"]["properties"]) == {"x"}
