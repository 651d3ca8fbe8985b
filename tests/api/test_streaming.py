"""Streams through the official SDK: modes, framing, subgraphs, resumable joins."""

from __future__ import annotations

import asyncio

import httpx


async def test_values_stream_starts_with_metadata(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "steps", input={"steps": []})]
    assert parts[0].event == "metadata"
    assert parts[0].data["run_id"] and parts[0].data["attempt"] == 1
    values = [p for p in parts if p.event == "values"]
    assert values[-1].data["steps"] == [f"step_{i}" for i in range(10)]


async def test_several_modes_at_once(client):
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "steps", input={"steps": []},
            stream_mode=["updates", "values", "debug", "tasks", "checkpoints"],
        )
    ]
    events = {p.event for p in parts}
    assert {"metadata", "updates", "values", "debug", "tasks", "checkpoints"} <= events
    updates = [p.data for p in parts if p.event == "updates"]
    assert list(updates[0].keys()) == ["step_0"]


async def test_custom_events_in_order(client):
    thread = await client.threads.create()
    parts = [
        p async for p in client.runs.stream(thread["thread_id"], "streamer", input={"n": 50}, stream_mode="custom")
    ]
    custom = [p.data for p in parts if p.event == "custom"]
    assert custom == [{"i": i} for i in range(50)]


async def test_messages_tuple_and_messages_modes(client):
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "agent", input={"messages": [{"role": "user", "content": "hi"}]},
            stream_mode="messages-tuple",
        )
    ]
    chunks = [p.data for p in parts if p.event == "messages"]
    assert chunks, [p.event for p in parts]
    msg, meta = chunks[0]
    assert msg["type"] in ("AIMessageChunk", "ai") and "langgraph_node" in meta

    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "agent", input={"messages": [{"role": "user", "content": "hi"}]},
            stream_mode="messages",
        )
    ]
    names = [p.event for p in parts]
    assert "messages/metadata" in names and "messages/partial" in names


async def test_events_mode(client):
    thread = await client.threads.create()
    parts = [
        p async for p in client.runs.stream(thread["thread_id"], "echo", input={"value": 1}, stream_mode="events")
    ]
    evs = [p.data for p in parts if p.event == "events"]
    assert any(e["event"] == "on_chain_start" for e in evs)
    assert any(e["event"] == "on_chain_end" for e in evs)


async def test_events_mode_streams_chat_model_tokens(client):
    """LangChain's astream_events v2, as the official server streams it: chain and chat model
    events of the nodes, the model's tokens as on_chat_model_stream."""
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "agent", input={"messages": [{"role": "user", "content": "hi"}]}, stream_mode="events"
        )
    ]
    assert parts[0].event == "metadata"
    evs = [p.data for p in parts if p.event == "events"]
    kinds = {e["event"] for e in evs}
    assert {"on_chain_start", "on_chain_stream", "on_chain_end", "on_chat_model_start", "on_chat_model_stream", "on_chat_model_end"} <= kinds
    tokens = "".join(e["data"]["chunk"]["content"] for e in evs if e["event"] == "on_chat_model_stream")
    assert tokens.startswith("You said: hi.")
    assert all({"run_id", "name", "data", "metadata"} <= e.keys() for e in evs)


async def test_subgraph_namespaces(client):
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "subgraph", input={"steps": []}, stream_mode="updates", stream_subgraphs=True
        )
    ]
    names = [p.event for p in parts]
    assert "updates" in names
    assert any(n.startswith("updates|child:") for n in names), names


async def test_error_frame(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "failing", input={})]
    assert parts[-1].event == "error"
    assert parts[-1].data == {"error": "ValueError", "message": "boom"}


async def test_raw_sse_framing(url):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        t = (await http.post("/threads", json={})).json()
        async with http.stream(
            "POST", f"/threads/{t['thread_id']}/runs/stream",
            json={"assistant_id": "failing", "input": {}},
        ) as r:
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-accel-buffering"] == "no"
            assert r.headers["location"].endswith("/stream")
            raw = b"".join([c async for c in r.aiter_raw()])
    assert raw.startswith(b"event: metadata\r\ndata: {")
    assert b'event: error\r\ndata: {"error":"ValueError","message":"boom"}\r\n\r\n' in raw


async def test_resumable_stream_replays_from_last_event_id(client, url):
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "streamer", input={"n": 40, "delay": 0.01}, stream_mode="custom", stream_resumable=True
    )
    first: list = []
    async for p in client.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1"):
        if p.event == "custom":
            first.append((p.id, p.data))
        if len(first) == 10:
            break
    last_id = first[-1][0]
    rest = [
        (p.id, p.data)
        async for p in client.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id=last_id)
        if p.event == "custom"
    ]
    data = [d for _, d in first + rest]
    assert data == [{"i": i} for i in range(40)]
    # after the end, a full replay is still available
    again = [
        p.data
        async for p in client.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1")
        if p.event == "custom"
    ]
    assert again == [{"i": i} for i in range(40)]


async def test_join_finished_non_resumable_stream_is_empty(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1})
    await client.runs.join(thread["thread_id"], run["run_id"])
    parts = [p async for p in client.runs.join_stream(thread["thread_id"], run["run_id"])]
    assert [p for p in parts if p.event not in ("metadata",)] == []


async def test_thread_stream_follows_runs(client):
    thread = await client.threads.create()

    async def collect():
        out = []
        async for p in await client.threads.join_stream(thread["thread_id"]):
            out.append(p)
            if p.event == "metadata" and isinstance(p.data, dict) and p.data.get("status") == "run_done":
                break
        return out

    task = asyncio.create_task(collect())
    await asyncio.sleep(0.3)
    await client.runs.create(thread["thread_id"], "echo", input={"value": 5})
    parts = await asyncio.wait_for(task, 20)
    assert any(p.event == "values" and p.data.get("value") == 5 for p in parts)


async def test_cancel_on_disconnect(client, url):
    thread = await client.threads.create()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream(
            "POST", f"/threads/{thread['thread_id']}/runs/stream",
            json={"assistant_id": "sleeper", "input": {"secs": 30}, "on_disconnect": "cancel"},
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
    for _ in range(100):
        runs = await client.runs.list(thread["thread_id"])
        if runs and runs[0]["status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.1)
    assert runs[0]["status"] == "interrupted"
