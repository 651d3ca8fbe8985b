"""Wire details where we follow (or improve on) the official server, seen through the SDK:
cancelling ended runs, thread-stream ids and resumption, full replays of joined runs, history
`before` forms, stream modes in queries, bulk-cancel actions, join cancel-on-disconnect, and
the health and info endpoints."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from langgraph_sdk import get_client

from tests.harness import PostgresServer, RedisServer
from tests.harness import ServerProcess


def _status(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response.status_code


async def _finished_run(client, graph="streamer", **kw):
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], graph, **kw)
    await client.runs.join(thread["thread_id"], run["run_id"])
    return thread["thread_id"], run["run_id"]


# ---- cancelling ------------------------------------------------------------------------------


async def test_cancelling_an_ended_run_is_404(client):
    tid, rid = await _finished_run(client, input={"n": 2})
    for wait in (False, True):
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await client.runs.cancel(tid, rid, wait=wait)
        assert _status(exc) == 404
        assert rid in exc.value.response.json()["detail"]
    with pytest.raises(httpx.HTTPStatusError) as exc:
        await client.runs.cancel_many(thread_id=tid, run_ids=[rid])
    assert _status(exc) == 404
    # a status filter that matches nothing is also "nothing to cancel" (404, as upstream)
    with pytest.raises(httpx.HTTPStatusError) as exc:
        await client.runs.cancel_many(thread_id=tid, status="running")
    assert _status(exc) == 404 and "running" in exc.value.response.json()["detail"]


async def test_bulk_cancel_honours_rollback_on_a_pending_run(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "sleeper", input={"secs": 0.1}, after_seconds=600)
    await client.runs.cancel_many(thread_id=tid, run_ids=[run["run_id"]], action="rollback")
    with pytest.raises(httpx.HTTPStatusError) as exc:
        await client.runs.get(tid, run["run_id"])
    assert _status(exc) == 404  # rolled back: the run is deleted


async def test_bulk_cancel_honours_rollback_on_a_running_run(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(
        tid, "streamer", input={"n": 600, "delay": 0.05}, stream_mode="custom", stream_resumable=True
    )
    seen = 0

    async def follow() -> None:
        nonlocal seen
        async for part in client.runs.join_stream(tid, run["run_id"], last_event_id="-1"):
            if part.event == "custom":
                seen += 1
                if seen == 1:  # it is running
                    await client.runs.cancel_many(thread_id=tid, run_ids=[run["run_id"]], action="rollback")

    await asyncio.wait_for(follow(), 20)  # the stream ends when the run has ended
    assert 0 < seen < 600
    with pytest.raises(httpx.HTTPStatusError) as exc:
        await client.runs.get(tid, run["run_id"])
    assert _status(exc) == 404


async def test_bulk_cancel_interrupt_keeps_the_run(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "sleeper", input={"secs": 0.1}, after_seconds=600)
    await client.runs.cancel_many(thread_id=tid, run_ids=[run["run_id"]], action="interrupt")
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"


async def test_bulk_cancel_rejects_an_unknown_action(url):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/runs/cancel", params={"action": "explode"}, json={"status": "pending"})
    # upstream answers 404 "No runs found to cancel" here, without looking at the action
    assert r.status_code == 422 and "action" in r.json()["detail"]


# ---- join cancel_on_disconnect ---------------------------------------------------------------


async def _join_then_disconnect(url: str, tid: str, rid: str, **params) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream("GET", f"/threads/{tid}/runs/{rid}/join", params=params) as r:
            assert r.status_code == 200  # the server is in the join; leaving now disconnects


async def test_join_with_cancel_on_disconnect_cancels_the_run(client, url):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "sleeper", input={"secs": 60})
    await _join_then_disconnect(url, tid, run["run_id"], cancel_on_disconnect="true")
    await asyncio.wait_for(client.runs.join(tid, run["run_id"]), 20)
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "interrupted"


async def test_join_without_cancel_on_disconnect_leaves_the_run(client, url):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "sleeper", input={"secs": 1})
    await _join_then_disconnect(url, tid, run["run_id"])
    assert await asyncio.wait_for(client.runs.join(tid, run["run_id"]), 20) == {"secs": 1, "slept": 1}
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"


async def test_join_rejects_a_bad_cancel_on_disconnect(client, url):
    tid, rid = await _finished_run(client, input={"n": 1})
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get(f"/threads/{tid}/runs/{rid}/join", params={"cancel_on_disconnect": "maybe"})
    assert r.status_code == 422 and "cancel_on_disconnect" in r.json()["detail"]


# ---- joined run streams ----------------------------------------------------------------------


async def test_full_replay_of_a_finished_run_starts_with_metadata(client):
    tid, rid = await _finished_run(client, input={"n": 5}, stream_mode=["custom", "values"], stream_resumable=True)
    parts = [p async for p in client.runs.join_stream(tid, rid, last_event_id="-1")]
    assert parts[0].event == "metadata"
    assert parts[0].data == {"run_id": rid, "attempt": 1} and parts[0].id == "0"
    assert [p.data for p in parts if p.event == "custom"] == [{"i": i} for i in range(5)]
    ids = [int(p.id) for p in parts]
    assert ids == sorted(set(ids))
    # resuming after the metadata frame replays the events, not the metadata again
    rest = [p async for p in client.runs.join_stream(tid, rid, last_event_id="0")]
    assert [p.id for p in rest] == [p.id for p in parts[1:]]


async def test_join_rejects_a_foreign_last_event_id_before_streaming(client, url):
    tid, rid = await _finished_run(client, input={"n": 1}, stream_resumable=True)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get(f"/threads/{tid}/runs/{rid}/stream", headers={"Last-Event-ID": "abc"})
        # used to fail after the 200 had gone out, leaving the client hanging
        assert r.status_code == 422 and "Last-Event-ID" in r.json()["detail"]
        r = await http.get(f"/threads/{tid}/runs/{rid}/stream", headers={"Last-Event-ID": ""})
        assert r.status_code == 200  # empty: a live join, like no header


async def test_join_with_modes_as_a_json_array(client, url):
    # @langchain/langgraph-sdk 2 sends ?stream_mode=["custom"]; that used to stream nothing
    tid, rid = await _finished_run(client, input={"n": 3}, stream_mode=["custom", "values"], stream_resumable=True)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get(
            f"/threads/{tid}/runs/{rid}/stream", params={"stream_mode": '["custom"]'}, headers={"Last-Event-ID": "-1"}
        )
    assert r.status_code == 200
    events = [line for line in r.text.split("\r\n") if line.startswith("event: ")]
    assert events == ["event: metadata"] + ["event: custom"] * 3
    # the SDK's own list form (repeated keys) agrees
    parts = [p async for p in client.runs.join_stream(tid, rid, stream_mode=["custom"], last_event_id="-1")]
    assert [p.event for p in parts] == ["metadata"] + ["custom"] * 3


async def test_unknown_stream_modes_are_422_everywhere(client, url):
    tid, rid = await _finished_run(client, input={"n": 1}, stream_resumable=True)
    # upstream answers these joins with 200 and an empty stream
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for query in ("bogus", '["custom","bogus"]', "custom,bogus", '["custom"', "[1]"):
            for path in (f"/threads/{tid}/runs/{rid}/stream", f"/threads/{tid}/stream"):
                r = await http.get(path, params={"stream_mode": query})
                assert r.status_code == 422, (path, query, r.text)
                detail = r.json()["detail"]
                assert "stream_mode" in detail
                if "bogus" in query and query != '["custom"':
                    assert "'bogus'" in detail
    for mode in ("bogus", ["values", "bogus"]):
        with pytest.raises(httpx.HTTPStatusError) as exc:
            await client.runs.create(tid, "streamer", input={"n": 1}, stream_mode=mode)
        assert _status(exc) == 422 and "'bogus'" in exc.value.response.json()["detail"]
        with pytest.raises(httpx.HTTPStatusError) as exc:
            [p async for p in client.runs.stream(None, "streamer", input={"n": 1}, stream_mode=mode)]
        assert _status(exc) == 422 and "'bogus'" in exc.value.response.json()["detail"]


# ---- thread streams --------------------------------------------------------------------------


async def _thread_parts(client, tid: str, last_event_id: str, runs_done: int, **kw) -> list:
    """A thread stream's parts up to (and with) the `runs_done`-th run_done frame."""
    out, done = [], 0
    async for p in await client.threads.join_stream(tid, last_event_id=last_event_id, **kw):
        out.append(p)
        if p.event == "metadata" and p.data.get("status") == "run_done":
            done += 1
            if done == runs_done:
                return out
    raise AssertionError(f"the thread stream ended: {out}")


async def test_thread_stream_carries_ids_and_resumes_from_last_event_id(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run1 = await client.runs.create(tid, "streamer", input={"n": 4}, stream_mode="custom")
    await client.runs.join(tid, run1["run_id"])

    # "-": everything still kept, and then live
    first = await asyncio.wait_for(_thread_parts(client, tid, "-", 1), 20)
    assert [p.event for p in first] == ["metadata"] + ["custom"] * 4 + ["metadata"]
    assert first[0].data == {"run_id": run1["run_id"], "attempt": 1}
    assert all(p.id for p in first)
    assert len({p.id for p in first}) == len(first)

    # while nobody listens, a second run comes and goes
    run2 = await client.runs.create(tid, "streamer", input={"n": 2}, stream_mode="custom")
    await client.runs.join(tid, run2["run_id"])

    # resuming after the 2nd custom event of run 1: the rest of run 1, then all of run 2
    resumed = await asyncio.wait_for(_thread_parts(client, tid, first[2].id, 2), 20)
    assert [p.id for p in resumed[:3]] == [p.id for p in first[3:]]
    assert [p.data for p in resumed if p.event == "custom"] == [{"i": 2}, {"i": 3}, {"i": 0}, {"i": 1}]
    assert resumed[3].data == {"run_id": run2["run_id"], "attempt": 1}
    assert resumed[-1].data == {"status": "run_done", "run_id": run2["run_id"]}

    # resuming after run 1's run_done frame starts at run 2
    after_done = await asyncio.wait_for(_thread_parts(client, tid, first[-1].id, 1), 20)
    assert [p.id for p in after_done] == [p.id for p in resumed[3:]]


async def test_thread_stream_resumes_then_follows_live_runs(client):
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run1 = await client.runs.create(tid, "streamer", input={"n": 2}, stream_mode="custom")
    await client.runs.join(tid, run1["run_id"])
    # after run 1's end nothing is left to replay: the stream waits for the next run (no race
    # with its creation: every run after run 1 is new to this stream)
    follow = asyncio.create_task(_thread_parts(client, tid, f"{run1['run_id']}:done", 1, stream_mode="lifecycle"))
    run2 = await client.runs.create(tid, "streamer", input={"n": 2}, stream_mode="custom")
    parts = await asyncio.wait_for(follow, 20)
    assert [(p.event, p.data) for p in parts] == [
        ("metadata", {"run_id": run2["run_id"], "attempt": 1}),
        ("metadata", {"status": "run_done", "run_id": run2["run_id"]}),
    ]
    assert parts[0].id == f"{run2['run_id']}:0" and parts[1].id == f"{run2['run_id']}:done"


async def test_thread_stream_heartbeats_inside_a_quiet_run_are_not_run_ends(client):
    # a run silent for longer than the heartbeat interval (5 s): its heartbeats are comments,
    # not `run_done` frames (they used to be announced as the run's end)
    thread = await client.threads.create()
    tid = thread["thread_id"]
    run = await client.runs.create(tid, "sleeper", input={"secs": 5.5}, after_seconds=0.2)
    parts = await asyncio.wait_for(_thread_parts(client, tid, "-", 1), 30)
    assert parts[0].data == {"run_id": run["run_id"], "attempt": 1}
    assert [p.data for p in parts if p.event == "metadata"][1:] == [{"status": "run_done", "run_id": run["run_id"]}]
    assert parts[-2].event == "values" and parts[-2].data == {"secs": 5.5, "slept": 5.5}


async def test_thread_stream_rejects_foreign_last_event_ids(client, url):
    thread = await client.threads.create()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for bad in ("0", "17", "not-an-id", "01a2334c-9c20-779a-8b65-2f17fe9eff64:x"):
            r = await http.get(f"/threads/{thread['thread_id']}/stream", headers={"Last-Event-ID": bad})
            assert r.status_code == 422 and "Last-Event-ID" in r.json()["detail"], (bad, r.text)


# ---- history ---------------------------------------------------------------------------------


async def test_history_before_as_checkpoint_or_config(client):
    tid, _ = await _finished_run(client, "steps", input={"steps": []})
    history = await client.threads.get_history(tid, limit=20)
    ids = [s["checkpoint"]["checkpoint_id"] for s in history]
    assert len(ids) > 4
    pivot = ids[2]
    expected = ids[3:]
    # RemoteGraph sends a checkpoint; @langchain/langgraph-sdk sends a config. Upstream
    # drops the connection (a 500) on the checkpoint form and accepts only the config.
    for before in (pivot, {"checkpoint_id": pivot}, {"configurable": {"checkpoint_id": pivot}},
                   {"configurable": {"thread_id": tid, "checkpoint_ns": "", "checkpoint_id": pivot}}):
        got = await client.threads.get_history(tid, limit=20, before=before)
        assert [s["checkpoint"]["checkpoint_id"] for s in got] == expected, before
    with pytest.raises(httpx.HTTPStatusError) as exc:
        await client.threads.get_history(tid, before={"configurable": "nope"})
    assert _status(exc) == 422 and "configurable" in exc.value.response.json()["detail"]


# ---- health and info -------------------------------------------------------------------------


async def test_ok_check_db_and_info_metadata(url):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/ok", params={"check_db": 1})).json() == {"ok": True}
        assert (await http.get("/ok", params={"check_db": 0})).json() == {"ok": True}
        for bad in ("2", "true"):
            r = await http.get("/ok", params={"check_db": bad})
            assert r.status_code == 422 and "check_db" in r.json()["detail"]
        info = (await http.get("/info")).json()
    assert isinstance(info["metadata"], dict) and info["metadata"]["shape"] in ("embedded", "scaled")
    assert {"version", "langgraph_py_version", "flags", "metadata"} <= set(info)


async def test_ok_check_db_answers_503_when_a_backing_service_is_down():
    pg = PostgresServer().start()
    redis = RedisServer().start()
    api = ServerProcess(
        "serve", env={"POSTGRES_URI_CUSTOM": pg.uri, "REDIS_URI_CUSTOM": redis.uri, "QUEUE_ENABLED": "true"}
    )
    try:
        await asyncio.to_thread(api.start)
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            assert (await http.get("/ok", params={"check_db": 1})).status_code == 200

            await asyncio.to_thread(redis.stop)
            r = await http.get("/ok", params={"check_db": 1})
            assert r.status_code == 503 and "broker" in r.json()["detail"], r.text
            assert "storage" not in r.json()["detail"]
            assert (await http.get("/ok")).status_code == 200  # still alive, just not ready
            await asyncio.to_thread(redis.start)
            assert (await http.get("/ok", params={"check_db": 1})).status_code == 200

            await asyncio.to_thread(pg.stop)
            r = await http.get("/ok", params={"check_db": 1})
            assert r.status_code == 503 and "storage" in r.json()["detail"], r.text
            assert "broker" not in r.json()["detail"]
    finally:
        api.kill()
        redis.cleanup()
        pg.cleanup()
