"""Multitask strategies, cancellation and human-in-the-loop through the official SDK."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from langgraph_sdk.errors import NotFoundError
from langgraph_sdk.schema import Command


async def _wait_status(client, thread_id, run_id, statuses, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await client.runs.get(thread_id, run_id)
        if run["status"] in statuses:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run stayed {run['status']}")
        await asyncio.sleep(0.05)


async def test_fifty_concurrent_reject_runs(url):
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=60)) as http:
        t = (await http.post("/threads", json={})).json()
        body = {"assistant_id": "sleeper", "input": {"secs": 1}, "multitask_strategy": "reject"}
        rs = await asyncio.gather(*[http.post(f"/threads/{t['thread_id']}/runs", json=body) for _ in range(50)])
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 1 and codes.count(409) == 49, codes
    assert all("detail" in r.json() for r in rs if r.status_code == 409)


async def test_enqueue_runs_fifo_one_at_a_time(client):
    thread = await client.threads.create()
    runs = [
        await client.runs.create(thread["thread_id"], "steps", input={"steps": [f"run{i}"]}, multitask_strategy="enqueue")
        for i in range(3)
    ]
    assert (await client.threads.get(thread["thread_id"]))["status"] == "busy"
    await client.runs.join(thread["thread_id"], runs[-1]["run_id"])
    state = await client.threads.get_state(thread["thread_id"])
    steps = state["values"]["steps"]
    # each run appended its marker then ten steps, strictly one after the other
    assert [s for s in steps if s.startswith("run")] == ["run0", "run1", "run2"]
    assert steps.index("run1") == 11 and steps.index("run2") == 22
    for r in runs:
        assert (await client.runs.get(thread["thread_id"], r["run_id"]))["status"] == "success"


async def test_interrupt_strategy(client):
    thread = await client.threads.create()
    first = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 30})
    await _wait_status(client, thread["thread_id"], first["run_id"], {"running"})
    second = await client.runs.create(thread["thread_id"], "echo", input={"value": "second"}, multitask_strategy="interrupt")
    await client.runs.join(thread["thread_id"], second["run_id"])
    assert (await client.runs.get(thread["thread_id"], first["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(thread["thread_id"], second["run_id"]))["status"] == "success"
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "idle" and t["values"]["value"] == "second"


async def test_rollback_strategy_deletes_the_old_run(client):
    thread = await client.threads.create()
    first = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 30})
    await _wait_status(client, thread["thread_id"], first["run_id"], {"running"})
    second = await client.runs.create(thread["thread_id"], "echo", input={"value": "second"}, multitask_strategy="rollback")
    await client.runs.join(thread["thread_id"], second["run_id"])
    for _ in range(50):
        try:
            await client.runs.get(thread["thread_id"], first["run_id"])
        except NotFoundError:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("rolled back run still exists")
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "idle" and t["values"]["value"] == "second"
    history = await client.threads.get_history(thread["thread_id"], limit=100)
    assert all((h["metadata"] or {}).get("run_id") != first["run_id"] for h in history)


async def test_cancel_running_interrupt_and_wait(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 30})
    await _wait_status(client, thread["thread_id"], run["run_id"], {"running"})
    await client.runs.cancel(thread["thread_id"], run["run_id"], wait=True)
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "interrupted"
    assert (await client.threads.get(thread["thread_id"]))["status"] in ("idle", "interrupted")


async def test_cancel_pending_run_at_once(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1}, after_seconds=60)
    await client.runs.cancel(thread["thread_id"], run["run_id"])
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "interrupted"
    assert (await client.threads.get(thread["thread_id"]))["status"] != "busy"


async def test_cancel_rollback(client):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 30})
    await _wait_status(client, thread["thread_id"], run["run_id"], {"running"})
    await client.runs.cancel(thread["thread_id"], run["run_id"], action="rollback", wait=True)
    with pytest.raises(NotFoundError):
        await client.runs.get(thread["thread_id"], run["run_id"])
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_cancel_finished_or_unknown_run(client, url):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1})
    await client.runs.join(thread["thread_id"], run["run_id"])
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(f"/threads/{thread['thread_id']}/runs/{run['run_id']}/cancel")
        assert r.status_code in (404, 409)
        r = await http.post(f"/threads/{thread['thread_id']}/runs/00000000-0000-0000-0000-000000000000/cancel")
        assert r.status_code == 404


async def test_bulk_cancel(client, url):
    thread = await client.threads.create()
    runs = [await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 30}) for _ in range(3)]
    await client.runs.cancel_many(thread_id=thread["thread_id"], run_ids=[r["run_id"] for r in runs])
    for r in runs:
        await _wait_status(client, thread["thread_id"], r["run_id"], {"interrupted"})
    assert (await client.threads.get(thread["thread_id"]))["status"] != "busy"


async def test_hitl_round_trip_with_stream(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "hitl", input={"question": "name?"}, stream_mode="updates")]
    interrupts = [p.data["__interrupt__"] for p in parts if p.event == "updates" and "__interrupt__" in p.data]
    assert interrupts and interrupts[0][0]["value"]["question"] == "name?"
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "interrupted" and t["interrupts"]
    parts = [p async for p in client.runs.stream(thread["thread_id"], "hitl", command=Command(resume="Ada"))]
    final = [p.data for p in parts if p.event == "values"][-1]
    assert final["answer"] == "Ada" and final["done"] is True
    t = await client.threads.get(thread["thread_id"])
    assert t["status"] == "idle" and not t["interrupts"]


async def test_hitl_round_trip_with_wait(client):
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "hitl", input={"question": "q?"})
    assert out["__interrupt__"][0]["value"]["question"] == "q?"
    out = await client.runs.wait(thread["thread_id"], "hitl", command=Command(resume="yes"))
    assert out["answer"] == "yes" and out["done"] is True


async def test_interrupt_values_frame_without_updates_mode(client):
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "hitl", input={"question": "x"}, stream_mode="values")]
    assert any(p.event == "values" and "__interrupt__" in p.data for p in parts)


async def test_command_update_and_goto(client):
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "steps", input={"steps": []}, interrupt_before=["step_8"])
    out = await client.runs.wait(
        thread["thread_id"], "steps", command=Command(update={"steps": ["injected"]}, goto="step_9")
    )
    assert "injected" in out["steps"] and out["steps"][-1] == "step_9"
