"""Assistants through the official SDK (async and sync clients) against `agentserver dev`."""

from __future__ import annotations

import uuid

import httpx
import pytest
from langgraph_sdk.errors import BadRequestError, ConflictError, NotFoundError, UnprocessableEntityError

SYSTEM_NS = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


def system_id(graph_id: str) -> str:
    return str(uuid.uuid5(SYSTEM_NS, graph_id))


def marker() -> str:
    """A unique metadata value, so a test sees only what it made on the shared server."""
    return uuid.uuid4().hex


async def test_system_assistants_one_per_graph(client):
    found = await client.assistants.search(metadata={"created_by": "system"}, limit=100)
    by_graph = {a["graph_id"]: a for a in found}
    for graph_id in ("echo", "steps", "hitl", "subgraph", "context"):
        a = by_graph[graph_id]
        assert a["assistant_id"] == system_id(graph_id)
        assert a["name"] == graph_id
        assert a["metadata"] == {"created_by": "system"}
        assert a["version"] >= 1
        assert a["created_at"].endswith("+00:00")
    # A graph id stands for its system assistant.
    assert (await client.assistants.get("echo"))["assistant_id"] == system_id("echo")
    assert (await client.assistants.get(system_id("echo")))["graph_id"] == "echo"
    # The description of langgraph.json is carried over.
    assert "example agent" in (await client.assistants.get("agent"))["description"]


async def test_create_defaults_and_explicit_fields(client):
    a = await client.assistants.create("echo")
    assert uuid.UUID(a["assistant_id"]).version == 4
    assert a["name"] == "Untitled"
    assert a["config"] == {} and a["context"] == {} and a["metadata"] == {}
    assert a["version"] == 1 and a["description"] is None
    assert a["created_at"] == a["updated_at"]

    aid = str(uuid.uuid4())
    b = await client.assistants.create(
        "steps",
        {"tags": ["t1"], "recursion_limit": 7},
        context={"model": "m"},
        metadata={"team": "x"},
        assistant_id=aid,
        name="named",
        description="about it",
    )
    assert b["assistant_id"] == aid
    assert b["graph_id"] == "steps"
    assert b["name"] == "named" and b["description"] == "about it"
    assert b["metadata"] == {"team": "x"}
    # context and config.configurable are kept in step.
    assert b["context"] == {"model": "m"}
    assert b["config"] == {"tags": ["t1"], "recursion_limit": 7, "configurable": {"model": "m"}}
    assert await client.assistants.get(aid) == b


async def test_create_configurable_fills_context_and_both_is_an_error(client):
    a = await client.assistants.create("echo", {"configurable": {"k": 1}})
    assert a["context"] == {"k": 1}
    with pytest.raises(BadRequestError) as info:
        await client.assistants.create("echo", {"configurable": {"k": 1}}, context={"k": 2})
    assert "context" in str(info.value)


async def test_create_if_exists(client):
    aid = str(uuid.uuid4())
    first = await client.assistants.create("echo", assistant_id=aid, name="first")
    with pytest.raises(ConflictError):
        await client.assistants.create("echo", assistant_id=aid)
    same = await client.assistants.create("steps", assistant_id=aid, name="second", if_exists="do_nothing")
    assert same == first


async def test_create_unknown_graph_is_422(client):
    with pytest.raises(UnprocessableEntityError) as info:
        await client.assistants.create("no-such-graph")
    assert "no-such-graph" in str(info.value)


async def test_get_and_delete_unknown_is_404(client):
    with pytest.raises(NotFoundError):
        await client.assistants.get(str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        await client.assistants.get("not-a-graph-nor-a-uuid")
    with pytest.raises(NotFoundError):
        await client.assistants.delete(str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        await client.assistants.update(str(uuid.uuid4()), metadata={"a": 1})


async def test_update_versions_and_set_latest(client):
    a = await client.assistants.create("echo", metadata={"a": 1}, name="v1")
    aid = a["assistant_id"]
    b = await client.assistants.update(aid, metadata={"b": 2}, name="v2", config={"configurable": {"x": 1}})
    assert b["version"] == 2
    assert b["metadata"] == {"a": 1, "b": 2}
    assert b["name"] == "v2" and b["context"] == {"x": 1}
    assert b["created_at"] == a["created_at"] and b["updated_at"] >= a["updated_at"]
    c = await client.assistants.update(aid, context={"y": 2}, graph_id="steps", description="d3")
    assert c["version"] == 3 and c["graph_id"] == "steps"
    assert c["config"]["configurable"] == {"y": 2} and c["context"] == {"y": 2}
    assert c["description"] == "d3" and c["name"] == "v2"

    versions = await client.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert versions[2]["name"] == "v1" and versions[2]["graph_id"] == "echo"
    assert [v["version"] for v in await client.assistants.get_versions(aid, limit=1, offset=1)] == [2]
    assert [v["version"] for v in await client.assistants.get_versions(aid, metadata={"b": 2})] == [3, 2]

    back = await client.assistants.set_latest(aid, 1)
    assert back["version"] == 1 and back["name"] == "v1" and back["graph_id"] == "echo"
    assert (await client.assistants.get(aid))["version"] == 1
    with pytest.raises(NotFoundError):
        await client.assistants.set_latest(aid, 42)
    with pytest.raises(NotFoundError):
        await client.assistants.get_versions(str(uuid.uuid4()))


async def test_update_to_unknown_graph_is_422(client):
    a = await client.assistants.create("echo")
    with pytest.raises(UnprocessableEntityError):
        await client.assistants.update(a["assistant_id"], graph_id="nope")
    assert (await client.assistants.get(a["assistant_id"]))["version"] == 1


async def test_delete_and_delete_threads(client):
    a = await client.assistants.create("echo")
    aid = a["assistant_id"]
    kept = await client.threads.create(metadata={"assistant_id": str(uuid.uuid4())})
    doomed = [await client.threads.create(metadata={"assistant_id": aid}) for _ in range(2)]
    await client.assistants.delete(aid, delete_threads=True)
    with pytest.raises(NotFoundError):
        await client.assistants.get(aid)
    for t in doomed:
        with pytest.raises(NotFoundError):
            await client.threads.get(t["thread_id"])
    assert (await client.threads.get(kept["thread_id"]))["thread_id"] == kept["thread_id"]

    b = await client.assistants.create("echo")
    survivor = await client.threads.create(metadata={"assistant_id": b["assistant_id"]})
    await client.assistants.delete(b["assistant_id"])
    assert (await client.threads.get(survivor["thread_id"]))["thread_id"] == survivor["thread_id"]
    with pytest.raises(NotFoundError):
        await client.assistants.delete(b["assistant_id"])


async def test_search_filters_sort_select_and_pages(client, url):
    tag = marker()
    made = []
    for i, name in enumerate(["Bravo one", "alpha two", "Charlie three"]):
        made.append(
            await client.assistants.create("echo" if i < 2 else "steps", metadata={"tag": tag, "i": i}, name=name)
        )
    found = await client.assistants.search(metadata={"tag": tag}, limit=10)
    assert [a["assistant_id"] for a in found] == [a["assistant_id"] for a in reversed(made)]
    assert {a["name"] for a in await client.assistants.search(metadata={"tag": tag}, graph_id="echo")} == {
        "Bravo one", "alpha two",
    }
    assert [a["name"] for a in await client.assistants.search(metadata={"tag": tag}, name="TWO")] == ["alpha two"]
    by_name = await client.assistants.search(metadata={"tag": tag}, sort_by="name", sort_order="asc")
    assert [a["name"] for a in by_name] == sorted(a["name"] for a in made)
    projected = await client.assistants.search(metadata={"tag": tag}, select=["assistant_id", "name"])
    assert all(set(a) == {"assistant_id", "name"} for a in projected)

    first = await client.assistants.search(metadata={"tag": tag}, limit=2, response_format="object")
    assert len(first["assistants"]) == 2 and first["next"] == "2"
    last = await client.assistants.search(metadata={"tag": tag}, limit=2, offset=2, response_format="object")
    assert len(last["assistants"]) == 1 and last["next"] is None

    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/assistants/search", json={"metadata": {"tag": tag}, "limit": 1})
    assert r.status_code == 200
    assert r.headers["X-Pagination-Total"] == "3" and r.headers["X-Pagination-Next"] == "1"

    assert await client.assistants.count(metadata={"tag": tag}) == 3
    assert await client.assistants.count(metadata={"tag": tag}, graph_id="steps") == 1
    assert await client.assistants.count(metadata={"tag": tag}, name="alpha") == 1


async def test_graph_schemas_and_subgraphs(client):
    drawn = await client.assistants.get_graph("steps")
    ids = {n["id"] for n in drawn["nodes"]}
    assert {"__start__", "__end__", "step_0", "step_9"} <= ids
    assert {"source": "step_0", "target": "step_1"} in [
        {"source": e["source"], "target": e["target"]} for e in drawn["edges"]
    ]
    flat = await client.assistants.get_graph("subgraph")
    deep = await client.assistants.get_graph(system_id("subgraph"), xray=True)
    assert not any("child_1" in n["id"] for n in flat["nodes"])
    assert any("child_1" in n["id"] for n in deep["nodes"])
    assert any("child_1" in n["id"] for n in (await client.assistants.get_graph("subgraph", xray=1))["nodes"])

    schemas = await client.assistants.get_schemas("steps")
    assert schemas["graph_id"] == "steps"
    assert "steps" in schemas["state_schema"]["properties"]
    ctx = await client.assistants.get_schemas("context")
    assert "model" in ctx["context_schema"]["properties"]

    subs = await client.assistants.get_subgraphs("subgraph")
    assert list(subs) == ["child"]
    assert "steps" in subs["child"]["state_schema"]["properties"]
    assert list(await client.assistants.get_subgraphs("subgraph", namespace="child", recurse=True)) == ["child"]
    assert await client.assistants.get_subgraphs("subgraph", namespace="nope") == {}
    assert await client.assistants.get_subgraphs("steps") == {}
    with pytest.raises(NotFoundError):
        await client.assistants.get_graph(str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        await client.assistants.get_schemas(str(uuid.uuid4()))


async def test_factory_graph_is_built_for_introspection(client):
    a = await client.assistants.create("factory", {"configurable": {"model": "special"}})
    drawn = await client.assistants.get_graph(a["assistant_id"])
    assert "answer" in {n["id"] for n in drawn["nodes"]}
    assert "model" in (await client.assistants.get_schemas(a["assistant_id"]))["state_schema"]["properties"]


def test_sync_client_round_trip(sync_client):
    a = sync_client.assistants.create("echo", metadata={"sync": True}, name="sync")
    assert sync_client.assistants.get(a["assistant_id"])["name"] == "sync"
    b = sync_client.assistants.update(a["assistant_id"], name="sync2")
    assert b["version"] == 2
    assert [v["version"] for v in sync_client.assistants.get_versions(a["assistant_id"])] == [2, 1]
    assert sync_client.assistants.set_latest(a["assistant_id"], 1)["name"] == "sync"
    assert sync_client.assistants.get_schemas("echo")["graph_id"] == "echo"
    assert sync_client.assistants.get_graph("echo")["nodes"]
    assert sync_client.assistants.get_subgraphs("subgraph")["child"]
    assert a["assistant_id"] in {
        x["assistant_id"] for x in sync_client.assistants.search(metadata={"sync": True}, limit=100)
    }
    assert sync_client.assistants.count(metadata={"sync": True}) >= 1
    sync_client.assistants.delete(a["assistant_id"])
    with pytest.raises(NotFoundError):
        sync_client.assistants.get(a["assistant_id"])
