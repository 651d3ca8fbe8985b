"""Threads through the official SDK (async and sync clients) against `agentserver dev`: records,
search, copy, prune, state, history, state updates, supersteps; and the TTL sweeper in-process."""

from __future__ import annotations

import asyncio
import uuid
from copy import copy as shallow_copy

import httpx
import pytest
from langgraph_sdk.errors import BadRequestError, ConflictError, NotFoundError, UnprocessableEntityError

STEPS = [f"step_{i}" for i in range(10)]


def marker() -> str:
    return uuid.uuid4().hex


async def steps_thread(client, **metadata):
    """A thread of the `steps` graph with two checkpoints written by state updates."""
    thread = await client.threads.create(metadata={"graph_id": "steps", **metadata})
    tid = thread["thread_id"]
    await client.threads.update_state(tid, {"steps": ["a"]}, as_node="step_0")
    await client.threads.update_state(tid, {"steps": ["b"]}, as_node="step_1")
    return tid


# ---- records ---------------------------------------------------------------------------------


async def test_create_get_defaults(client):
    t = await client.threads.create()
    assert uuid.UUID(t["thread_id"]).version == 7
    assert t["status"] == "idle" and t["metadata"] == {} and t["values"] is None
    assert t["created_at"].endswith("+00:00")
    got = await client.threads.get(t["thread_id"])
    assert got["thread_id"] == t["thread_id"] and got["status"] == "idle"
    assert "ttl" not in got


async def test_create_explicit_id_and_if_exists(client):
    tid = str(uuid.uuid4())
    t = await client.threads.create(thread_id=tid, metadata={"a": 1})
    assert t["thread_id"] == tid and t["metadata"] == {"a": 1}
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid)
    same = await client.threads.create(thread_id=tid, metadata={"b": 2}, if_exists="do_nothing")
    assert same["metadata"] == {"a": 1}


async def test_graph_id_goes_to_metadata(client):
    t = await client.threads.create(graph_id="echo", metadata={"x": 1})
    assert t["metadata"] == {"x": 1, "graph_id": "echo"}


async def test_ttl_is_stored_and_returned_on_request(client):
    t = await client.threads.create(ttl=30)
    got = await client.threads.get(t["thread_id"], include=["ttl"])
    assert got["ttl"]["strategy"] == "delete" and got["ttl"]["ttl"] == 30
    assert got["ttl"]["expires_at"] > got["updated_at"]
    await client.threads.update(t["thread_id"], metadata={}, ttl={"ttl": 5, "strategy": "keep_latest"})
    got = await client.threads.get(t["thread_id"], include=["ttl"])
    assert got["ttl"]["strategy"] == "keep_latest" and got["ttl"]["ttl"] == 5


async def test_update_merges_metadata_and_minimal(client):
    t = await client.threads.create(metadata={"a": 1})
    u = await client.threads.update(t["thread_id"], metadata={"b": 2})
    assert u["metadata"] == {"a": 1, "b": 2}
    assert await client.threads.update(t["thread_id"], metadata={"c": 3}, return_minimal=True) is None
    assert (await client.threads.get(t["thread_id"]))["metadata"] == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(NotFoundError):
        await client.threads.update(str(uuid.uuid4()), metadata={"a": 1})


async def test_delete_removes_thread_and_checkpoints(client):
    tid = await steps_thread(client)
    await client.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)
    with pytest.raises(NotFoundError):
        await client.threads.delete(tid)
    # The same id again starts from nothing: the old checkpoints went with the thread.
    await client.threads.create(thread_id=tid, graph_id="steps")
    assert await client.threads.get_history(tid) == []


async def test_delete_stops_inflight_runs(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    running = await client.runs.create(tid, "sleeper", input={"secs": 30})
    pending = await client.runs.create(tid, "sleeper", input={"secs": 30})

    async def started() -> None:
        while (await client.runs.get(tid, running["run_id"]))["status"] != "running":
            await asyncio.sleep(0.02)

    await asyncio.wait_for(started(), timeout=10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await client.threads.delete(tid)
    assert loop.time() - t0 < 5
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)
    for run in (running, pending):
        with pytest.raises(NotFoundError):
            await client.runs.get(tid, run["run_id"])
    # The stopped run wrote nothing after its thread's checkpoints were deleted.
    await client.threads.create(thread_id=tid, graph_id="sleeper")
    assert await client.threads.get_history(tid) == []


async def test_unknown_thread_is_404_everywhere(client):
    missing = str(uuid.uuid4())
    for call in (
        client.threads.get(missing),
        client.threads.delete(missing),
        client.threads.copy(missing),
        client.threads.get_state(missing),
        client.threads.get_state(missing, checkpoint_id=str(uuid.uuid4())),
        client.threads.update_state(missing, {"steps": []}),
        client.threads.get_history(missing),
    ):
        with pytest.raises(NotFoundError):
            await call


# ---- search / count --------------------------------------------------------------------------


async def test_search_filters_paging_select_extract(client, url):
    tag = marker()
    made = [await client.threads.create(metadata={"tag": tag, "i": i}) for i in range(3)]
    ids = [t["thread_id"] for t in made]
    stateful = await steps_thread(client, tag=tag, i=3)
    ids.append(stateful)

    found = await client.threads.search(metadata={"tag": tag}, limit=10)
    assert [t["thread_id"] for t in found] == list(reversed(ids))
    asc = await client.threads.search(metadata={"tag": tag}, sort_by="created_at", sort_order="asc")
    assert [t["thread_id"] for t in asc] == ids
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag, "i": 1})] == [ids[1]]
    assert [t["thread_id"] for t in await client.threads.search(metadata={"tag": tag}, status="interrupted")] == [
        stateful
    ]
    by_values = await client.threads.search(values={"steps": ["a", "b"]}, metadata={"tag": tag})
    assert [t["thread_id"] for t in by_values] == [stateful]
    picked = await client.threads.search(ids=[ids[0], ids[2]])
    assert {t["thread_id"] for t in picked} == {ids[0], ids[2]}
    projected = await client.threads.search(metadata={"tag": tag}, select=["thread_id", "status"])
    assert all(set(t) == {"thread_id", "status"} for t in projected)
    extracted = await client.threads.search(
        ids=[stateful], extract={"last": "values.steps[-1]", "tag": "metadata.tag", "none": "values.nope[3]"}
    )
    assert extracted[0]["extracted"] == {"last": "b", "tag": tag, "none": None}

    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/threads/search", json={"metadata": {"tag": tag}, "limit": 3})
        assert r.headers["X-Pagination-Total"] == "4" and r.headers["X-Pagination-Next"] == "3"
        r = await http.post("/threads/search", json={"metadata": {"tag": tag}, "limit": 3, "offset": 3})
        assert len(r.json()) == 1 and "X-Pagination-Next" not in r.headers

    assert await client.threads.count(metadata={"tag": tag}) == 4
    assert await client.threads.count(metadata={"tag": tag}, status="idle") == 3
    assert await client.threads.count(metadata={"tag": tag}, values={"steps": ["a", "b"]}) == 1


# ---- copy / prune ----------------------------------------------------------------------------


async def test_copy_keeps_metadata_state_and_history(client):
    tid = await steps_thread(client, origin="copy")
    copy = await client.threads.copy(tid)
    assert copy["thread_id"] != tid and uuid.UUID(copy["thread_id"]).version == 7
    assert copy["metadata"] == {"graph_id": "steps", "origin": "copy"}
    assert copy["values"] == {"steps": ["a", "b"]} and copy["status"] == "interrupted"
    state = await client.threads.get_state(copy["thread_id"])
    assert state["values"] == {"steps": ["a", "b"]} and state["next"] == ["step_2"]
    assert state["checkpoint"]["thread_id"] == copy["thread_id"]
    original = await client.threads.get_history(tid)
    copied = await client.threads.get_history(copy["thread_id"])
    assert [s["checkpoint"]["checkpoint_id"] for s in copied] == [s["checkpoint"]["checkpoint_id"] for s in original]
    # The copy goes its own way.
    await client.threads.update_state(copy["thread_id"], {"steps": ["c"]}, as_node="step_2")
    assert (await client.threads.get_state(tid))["values"] == {"steps": ["a", "b"]}


async def test_prune_delete_and_keep_latest(client):
    a, b = await steps_thread(client), await steps_thread(client)
    missing = str(uuid.uuid4())
    assert await client.threads.prune([a, missing]) == {"pruned_count": 1}
    with pytest.raises(NotFoundError):
        await client.threads.get(a)

    assert len(await client.threads.get_history(b)) == 2
    assert await client.threads.prune([b], strategy="keep_latest") == {"pruned_count": 1}
    history = await client.threads.get_history(b)
    assert len(history) == 1 and history[0]["values"] == {"steps": ["a", "b"]}
    assert (await client.threads.get(b))["values"] == {"steps": ["a", "b"]}


# ---- state -------------------------------------------------------------------------------------


async def test_state_of_thread_without_graph(client):
    t = await client.threads.create()
    state = await client.threads.get_state(t["thread_id"])
    assert state["values"] == {} and state["next"] == [] and state["tasks"] == []
    assert state["checkpoint"] is None and state["metadata"] is None
    assert await client.threads.get_history(t["thread_id"]) == []
    with pytest.raises(BadRequestError) as info:
        await client.threads.update_state(t["thread_id"], {"value": 1})
    assert "graph" in str(info.value)


async def test_update_state_mirrors_onto_thread(client):
    t = await client.threads.create(graph_id="steps")
    tid = t["thread_id"]
    assert (await client.threads.get_state(tid))["checkpoint"] is None
    res = await client.threads.update_state(tid, {"steps": ["x"]}, as_node="step_0")
    cp = res["checkpoint"]
    assert cp["thread_id"] == tid and cp["checkpoint_ns"] == "" and cp["checkpoint_id"]

    state = await client.threads.get_state(tid)
    assert state["values"] == {"steps": ["x"]}
    assert state["next"] == ["step_1"]
    assert state["checkpoint"]["checkpoint_id"] == cp["checkpoint_id"]
    assert state["parent_checkpoint"] is None
    assert state["metadata"]["source"] == "update"
    task = state["tasks"][0]
    assert task["name"] == "step_1" and task["error"] is None and task["interrupts"] == []
    assert set(task) >= {"id", "name", "path", "error", "interrupts", "checkpoint", "state", "result"}
    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted" and thread["values"] == {"steps": ["x"]}

    res2 = await client.threads.update_state(tid, {"steps": ["y"]}, as_node="step_9")
    state = await client.threads.get_state(tid)
    assert state["values"] == {"steps": ["x", "y"]} and state["next"] == []
    assert state["parent_checkpoint"]["checkpoint_id"] == cp["checkpoint_id"]
    assert state["checkpoint"]["checkpoint_id"] == res2["checkpoint"]["checkpoint_id"]
    thread = await client.threads.get(tid)
    assert thread["status"] == "idle" and thread["values"] == {"steps": ["x", "y"]}

    with pytest.raises(BadRequestError) as info:
        await client.threads.update_state(tid, {"steps": ["z"]}, as_node="no_such_node")
    assert "no_such_node" in str(info.value)


async def test_state_at_checkpoint_select_and_fork(client):
    tid = await steps_thread(client)
    history = await client.threads.get_history(tid)
    first = history[-1]["checkpoint"]
    by_id = await client.threads.get_state(tid, checkpoint_id=first["checkpoint_id"])
    assert by_id["values"] == {"steps": ["a"]} and by_id["next"] == ["step_1"]
    by_checkpoint = await client.threads.get_state(tid, checkpoint=first)
    assert by_checkpoint["checkpoint"]["checkpoint_id"] == first["checkpoint_id"]
    assert by_checkpoint["values"] == by_id["values"]

    only = await client.threads.get_state(tid, select=["values.steps", "next"])
    assert only == {"values": {"steps": ["a", "b"]}, "next": ["step_2"]}

    # Fork from the first checkpoint, by checkpoint_id and by checkpoint.
    forked = await client.threads.update_state(
        tid, {"steps": ["fork"]}, as_node="step_1", checkpoint_id=first["checkpoint_id"]
    )
    state = await client.threads.get_state(tid)
    assert state["checkpoint"]["checkpoint_id"] == forked["checkpoint"]["checkpoint_id"]
    assert state["values"] == {"steps": ["a", "fork"]}
    assert state["parent_checkpoint"]["checkpoint_id"] == first["checkpoint_id"]
    await client.threads.update_state(tid, {"steps": ["fork2"]}, as_node="step_1", checkpoint=first)
    assert (await client.threads.get_state(tid))["values"] == {"steps": ["a", "fork2"]}
    assert (await client.threads.get(tid))["values"] == {"steps": ["a", "fork2"]}


async def test_history_limit_before_metadata(client, url):
    tid = await steps_thread(client)
    await client.threads.update_state(tid, {"steps": ["c"]}, as_node="step_2")
    history = await client.threads.get_history(tid)
    assert [s["values"]["steps"] for s in history] == [["a", "b", "c"], ["a", "b"], ["a"]]
    assert [s["next"] for s in history] == [["step_3"], ["step_2"], ["step_1"]]
    assert len(await client.threads.get_history(tid, limit=2)) == 2
    newest = history[0]["checkpoint"]
    older = await client.threads.get_history(tid, before=newest["checkpoint_id"])
    assert [s["values"]["steps"] for s in older] == [["a", "b"], ["a"]]
    assert await client.threads.get_history(tid, before=newest) == older
    assert [s["metadata"]["step"] for s in await client.threads.get_history(tid, metadata={"step": 1})] == [1]
    only = await client.threads.get_history(tid, limit=1, select=["values"])
    assert only == [{"values": {"steps": ["a", "b", "c"]}}]
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.get(f"/threads/{tid}/history", params={"limit": 1, "before": newest["checkpoint_id"]})
    assert r.status_code == 200 and [s["values"]["steps"] for s in r.json()] == [["a", "b"]]


async def test_supersteps_on_create(client):
    t = await client.threads.create(
        graph_id="steps",
        supersteps=[
            {"updates": [{"values": {"steps": ["s1"]}, "as_node": "step_0"}]},
            {"updates": [{"values": {"steps": ["s2"]}, "as_node": "step_1"}]},
        ],
    )
    assert t["values"] == {"steps": ["s1", "s2"]} and t["status"] == "interrupted"
    history = await client.threads.get_history(t["thread_id"])
    assert [s["values"]["steps"] for s in history] == [["s1", "s2"], ["s1"]]
    with pytest.raises(UnprocessableEntityError):
        await client.threads.create(supersteps=[{"updates": [{"values": {"steps": []}, "as_node": "step_0"}]}])
    tid = str(uuid.uuid4())
    with pytest.raises(BadRequestError):
        await client.threads.create(
            thread_id=tid, graph_id="steps", supersteps=[{"updates": [{"values": {}, "as_node": "nope"}]}]
        )
    with pytest.raises(NotFoundError):  # nothing half-made is left behind
        await client.threads.get(tid)


async def test_hitl_interrupts_in_state_and_thread(client):
    t = await client.threads.create()
    tid = t["thread_id"]
    await client.runs.wait(tid, "hitl", input={"question": "Go?"})
    thread = await client.threads.get(tid)
    assert thread["status"] == "interrupted"
    state = await client.threads.get_state(tid)
    assert state["next"] == ["ask"]
    [task] = state["tasks"]
    assert task["name"] == "ask" and task["interrupts"][0]["value"] == {"question": "Go?"}
    assert state["interrupts"][0]["id"] == task["interrupts"][0]["id"]
    assert thread["interrupts"] == {task["id"]: task["interrupts"]}

    # Answer the interrupt by hand: `ask` writes the answer, `done` is next.
    await client.threads.update_state(tid, {"answer": "yes"}, as_node="ask")
    state = await client.threads.get_state(tid)
    assert state["next"] == ["done"] and state["interrupts"] == [] and state["values"]["answer"] == "yes"
    assert (await client.threads.get(tid))["interrupts"] == {}


async def test_subgraph_state_namespaces(client):
    t = await client.threads.create()
    tid = t["thread_id"]
    out = await client.runs.wait(tid, "subgraph", input={"steps": []})
    assert out["steps"] == ["before", "child_1", "child_2", "after"]
    history = await client.threads.get_history(tid)
    before_child = next(s for s in history if s["next"] == ["child"])
    cp = before_child["checkpoint"]

    flat = await client.threads.get_state(tid, checkpoint_id=cp["checkpoint_id"])
    [task] = flat["tasks"]
    assert task["name"] == "child" and task["state"] is None
    child_ns = task["checkpoint"]["checkpoint_ns"]
    assert child_ns.startswith("child:")

    deep = await client.threads.get_state(tid, checkpoint=cp, subgraphs=True)
    sub = deep["tasks"][0]["state"]
    assert sub["checkpoint"]["checkpoint_ns"] == child_ns
    assert sub["values"]["steps"][-1] == "child_2"

    child_history = await client.threads.get_history(tid, checkpoint={"checkpoint_ns": child_ns})
    assert child_history and all(s["checkpoint"]["checkpoint_ns"] == child_ns for s in child_history)
    assert child_history[0]["values"]["steps"] == ["before", "child_1", "child_2"]


async def test_failed_task_error_in_state(client):
    t = await client.threads.create()
    with pytest.raises(Exception):
        await client.runs.wait(t["thread_id"], "failing", input={})
    state = await client.threads.get_state(t["thread_id"])
    assert state["tasks"][0]["error"] == "ValueError('boom')"


def test_sync_client_threads(sync_client):
    t = sync_client.threads.create(graph_id="steps", metadata={"sync": True})
    tid = t["thread_id"]
    sync_client.threads.update_state(tid, {"steps": ["s"]}, as_node="step_0")
    assert sync_client.threads.get_state(tid)["values"] == {"steps": ["s"]}
    assert len(sync_client.threads.get_history(tid)) == 1
    assert sync_client.threads.update(tid, metadata={"more": 1})["metadata"]["more"] == 1
    assert tid in {x["thread_id"] for x in sync_client.threads.search(ids=[tid])}
    assert sync_client.threads.count(metadata={"sync": True}) >= 1
    copy = sync_client.threads.copy(tid)
    assert sync_client.threads.prune([copy["thread_id"]]) == {"pruned_count": 1}
    sync_client.threads.delete(tid)
    with pytest.raises(NotFoundError):
        sync_client.threads.get(tid)


# ---- TTL sweeper (in-process runtime, fast sweep) ----------------------------------------------


@pytest.fixture
async def runtime(tmp_path):
    from agentserver.config import load_config
    from agentserver.graphs import GraphRegistry
    from agentserver.runtime import build_embedded
    from agentserver.settings import Settings
    from tests.harness import TEST_GRAPHS

    graphs = await GraphRegistry.afrom_config(load_config(str(TEST_GRAPHS)))
    rt = build_embedded(Settings(thread_ttl_sweep_secs=0.05, n_jobs_per_worker=1), graphs, tmp_path)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_ttl_sweeper_deletes_and_prunes(runtime):
    threads = runtime.services.threads
    ttl = 0.3 / 60  # 0.3 s, in minutes
    doomed = await threads.create(metadata={"graph_id": "steps"}, ttl={"ttl": ttl, "strategy": "delete"})
    kept = await threads.create(metadata={"graph_id": "steps"}, ttl={"ttl": ttl, "strategy": "keep_latest"})
    forever = await threads.create(metadata={"graph_id": "steps"})
    for t in (doomed, kept, forever):
        await threads.update_state(t["thread_id"], values={"steps": ["a"]}, as_node="step_0")
        await threads.update_state(t["thread_id"], values={"steps": ["b"]}, as_node="step_1")

    async def gone() -> None:
        while await runtime.storage.thread_get(doomed["thread_id"]) is not None:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), timeout=10)

    async def pruned() -> None:
        while len(await threads.history(kept["thread_id"])) != 1:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(pruned(), timeout=10)
    state = await threads.get_state(kept["thread_id"])
    assert state["values"] == {"steps": ["a", "b"]}
    assert (await threads.get(kept["thread_id"]))["ttl"]["strategy"] == "keep_latest"
    assert len(await threads.history(forever["thread_id"])) == 2
    assert await runtime.storage.checkpointer.aget_tuple(
        {"configurable": {"thread_id": doomed["thread_id"], "checkpoint_ns": ""}}
    ) is None


async def test_copy_checkpoints_without_native_copy():
    """The generic copy (for checkpointers without `acopy_thread`) keeps every checkpoint,
    namespace and pending write."""
    from langgraph.checkpoint.memory import InMemorySaver

    from agentserver.services.threads import copy_checkpoints
    from tests.graphs.subgraph import graph as subgraph
    from tests.graphs.hitl import graph as hitl

    class NoCopy(InMemorySaver):
        async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
            raise NotImplementedError

    saver = NoCopy()
    for g, tid, inp in ((subgraph, "s", {"steps": []}), (hitl, "h", {"question": "?"})):
        attached = shallow_copy(g)
        attached.checkpointer = saver
        await attached.ainvoke(inp, {"configurable": {"thread_id": tid}})
        await copy_checkpoints(saver, tid, tid + "-copy")
        src = [c async for c in saver.alist({"configurable": {"thread_id": tid}})]
        dst = [c async for c in saver.alist({"configurable": {"thread_id": tid + "-copy"}})]
        assert [c.checkpoint["id"] for c in dst] == [c.checkpoint["id"] for c in src]
        assert {c.config["configurable"]["checkpoint_ns"] for c in dst} == {
            c.config["configurable"]["checkpoint_ns"] for c in src
        }
        assert [c.pending_writes for c in dst] == [c.pending_writes for c in src]
        a = await attached.aget_state({"configurable": {"thread_id": tid}})
        b = await attached.aget_state({"configurable": {"thread_id": tid + "-copy"}})
        assert a.values == b.values and a.next == b.next
