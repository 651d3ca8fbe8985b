"""Runs through the official SDK: background, wait, join, list, get, delete, stateless, batch."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from langgraph_sdk.errors import NotFoundError


async def test_background_run_join_and_get(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1})
    assert run["status"] in ("pending", "running")
    assert run["thread_id"] == thread["thread_id"]
    assert run["multitask_strategy"] == "enqueue"
    result = await client.runs.join(thread["thread_id"], run["run_id"])
    assert result["value"] == 1
    got = await client.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success"
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "idle"
    assert t["values"]["value"] == 1
    assert t["metadata"]["graph_id"] == "echo"


async def test_wait_returns_final_values(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "steps", input={"steps": []})
    assert out["steps"] == [f"step_{i}" for i in range(10)]


def test_sync_client_wait_and_stream(sync_client):
    thread = sync_client.threads.create()
    out = sync_client.runs.wait(thread["thread_id"], "echo", input={"value": "sync"})
    assert out["value"] == "sync"
    parts = list(sync_client.runs.stream(thread["thread_id"], "echo", input={"value": 2}))
    assert parts[0].event == "metadata"
    assert parts[-1].data["value"] == 2


async def test_failed_run_error_status_and_wait_raises(client):
    thread = await client.threads.create()
    with pytest.raises(Exception) as info:
        await client.runs.wait(thread["thread_id"], "failing", input={})
    assert "boom" in str(info.value)
    runs = await client.runs.list(thread["thread_id"])
    assert runs[0]["status"] == "error"
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "error"


async def test_list_runs_filters_and_paging(client):
    thread = await client.threads.create()
    ids = []
    for i in range(3):
        run = await client.runs.create(thread["thread_id"], "echo", input={"value": i})
        ids.append(run["run_id"])
    await client.runs.join(thread["thread_id"], ids[-1])
    runs = await client.runs.list(thread["thread_id"])
    assert [r["run_id"] for r in runs] == ids[::-1]
    assert len(await client.runs.list(thread["thread_id"], limit=1, offset=1)) == 1
    assert await client.runs.list(thread["thread_id"], status="pending") == []
    assert len(await client.runs.list(thread["thread_id"], status="success")) == 3


async def test_delete_run(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1})
    await client.runs.join(thread["thread_id"], run["run_id"])
    await client.runs.delete(thread["thread_id"], run["run_id"])
    with pytest.raises(NotFoundError):
        await client.runs.get(thread["thread_id"], run["run_id"])


async def test_unknown_thread_run_and_assistant(client, url):
    with pytest.raises(NotFoundError):
        await client.runs.get("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001")
    thread = await client.threads.create()
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(f"/threads/{thread['thread_id']}/runs", json={"assistant_id": "nope"})
        assert r.status_code in (404, 422) and "nope" in r.json()["detail"]
        r = await http.post(f"/threads/{thread['thread_id']}/runs", json={"input": {}})
        assert r.status_code == 422 and "assistant_id" in r.json()["detail"]
        r = await http.post(
            f"/threads/{thread['thread_id']}/runs",
            json={"assistant_id": "echo", "multitask_strategy": "sometimes"},
        )
        assert r.status_code == 422 and "multitask_strategy" in r.json()["detail"]
        r = await http.post(f"/threads/{thread['thread_id']}/runs", content=b"{not json")
        assert r.status_code == 422


async def test_if_not_exists(client):
    import uuid

    tid = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await client.runs.create(tid, "echo", input={"value": 1})
    run = await client.runs.create(tid, "echo", input={"value": 1}, if_not_exists="create")
    await client.runs.join(tid, run["run_id"])
    assert (await client.threads.get(tid))["values"]["value"] == 1


async def test_content_location_headers(url):
    async with httpx.AsyncClient(base_url=url) as http:
        t = (await http.post("/threads", json={})).json()
        r = await http.post(f"/threads/{t['thread_id']}/runs", json={"assistant_id": "echo", "input": {}})
        run = r.json()
        assert r.headers["content-location"] == f"/threads/{t['thread_id']}/runs/{run['run_id']}"
        r = await http.post("/runs", json={"assistant_id": "echo", "input": {}})
        assert r.headers["content-location"] == f"/runs/{r.json()['run_id']}"


async def test_stateless_runs(client):
    out = await client.runs.wait(None, "echo", input={"value": "x"})
    assert out["value"] == "x"
    parts = [p async for p in client.runs.stream(None, "echo", input={"value": "y"})]
    assert parts[0].event == "metadata"
    assert parts[-1].data["value"] == "y"
    run = await client.runs.create(None, "echo", input={"value": "z"})
    assert run["thread_id"]


async def test_stateless_keep_thread(client):
    run = await client.runs.create(None, "echo", input={"value": "keep"}, on_completion="keep")
    await client.runs.join(run["thread_id"], run["run_id"])
    t = await client.threads.get(run["thread_id"])
    assert t["values"]["value"] == "keep"


async def test_stateless_batch(url):
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/runs/batch",
            json=[{"assistant_id": "echo", "input": {"value": i}} for i in range(3)],
        )
        assert r.status_code == 200
        runs = r.json()
        assert len(runs) == 3 and len({x["run_id"] for x in runs}) == 3


async def test_after_seconds_delays_start(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1}, after_seconds=1)
    await asyncio.sleep(0.3)
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "pending"
    await client.runs.join(thread["thread_id"], run["run_id"])
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"


async def test_config_context_and_metadata_reach_the_graph(client):
    thread = await client.threads.create()
    out = await client.runs.wait(
        thread["thread_id"],
        "context",
        input={"value": 1},
        context={"model": "big", "temperature": 0.5},
        config={"configurable": {"extra": "x"}},
        metadata={"tag": "t1"},
    )
    assert out["context"] == {"model": "big", "temperature": 0.5}
    keys = out["config_keys"]
    assert keys["thread_id"] == thread["thread_id"]
    assert keys["graph_id"] == "context"
    assert keys["extra"] == "x"
    assert keys["run_id"] and keys["assistant_id"]
    runs = await client.runs.list(thread["thread_id"])
    assert runs[0]["metadata"]["tag"] == "t1"


async def test_factory_called_per_run_with_config(client):
    thread = await client.threads.create()
    a = await client.runs.wait(thread["thread_id"], "factory", input={}, config={"configurable": {"model": "m1"}})
    b = await client.runs.wait(thread["thread_id"], "factory", input={}, config={"configurable": {"model": "m2"}})
    # `model` is baked into the graph when the factory builds it: each run got its own build
    assert a["model"] == "m1" and b["model"] == "m2"
    assert a["build"] >= 1 and b["build"] >= 1


async def test_checkpoint_fork(client):
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "steps", input={"steps": []})
    history = await client.threads.get_history(thread["thread_id"], limit=100)
    # a checkpoint in the middle of the run: fork from there
    mid = next(h for h in history if h["values"].get("steps") == ["step_0", "step_1", "step_2"])
    out = await client.runs.wait(
        thread["thread_id"], "steps", input=None, checkpoint_id=mid["checkpoint"]["checkpoint_id"]
    )
    assert out["steps"] == [f"step_{i}" for i in range(10)]
    history2 = await client.threads.get_history(thread["thread_id"], limit=200)
    assert len(history2) > len(history)


async def test_durability_exit_writes_only_final_checkpoint(client):
    t1 = await client.threads.create()
    await client.runs.wait(t1["thread_id"], "steps", input={"steps": []}, durability="exit")
    h1 = await client.threads.get_history(t1["thread_id"], limit=100)
    t2 = await client.threads.create()
    await client.runs.wait(t2["thread_id"], "steps", input={"steps": []}, durability="sync")
    h2 = await client.threads.get_history(t2["thread_id"], limit=100)
    assert len(h1) < len(h2)
    assert h1[0]["values"]["steps"][-1] == "step_9"


async def test_interrupt_before_and_after(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "steps", input={"steps": []}, interrupt_before=["step_3"])
    assert out["steps"] == ["step_0", "step_1", "step_2"]
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["step_3"]
    assert (await client.threads.get(thread["thread_id"]))["status"] == "interrupted"
    out = await client.runs.wait(thread["thread_id"], "steps", input=None, interrupt_after=["step_5"])
    assert out["steps"][-1] == "step_5"
    out = await client.runs.wait(thread["thread_id"], "steps", input=None)
    assert out["steps"][-1] == "step_9"
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_webhook_posts_finished_run(client):
    received: list[dict] = []
    got = asyncio.Event()

    async def handle(reader, writer):
        data = await reader.read(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(body) < length:
            body += await reader.read(65536)
        import json

        received.append(json.loads(body))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        got.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        thread = await client.threads.create()
        run = await client.runs.create(
            thread["thread_id"], "echo", input={"value": 7}, webhook=f"http://127.0.0.1:{port}/hook"
        )
        await asyncio.wait_for(got.wait(), 10)
    assert received[0]["run_id"] == run["run_id"]
    assert received[0]["status"] == "success"
    assert received[0]["values"]["value"] == 7


async def test_webhook_failure_does_not_fail_run(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1}, webhook="http://127.0.0.1:9/none")
    await client.runs.join(thread["thread_id"], run["run_id"])
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
