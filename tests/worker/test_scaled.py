"""Behaviour specific to the scaled shape: which processes execute runs, cross-server joins and
cancels, isolated job loops on Postgres."""

from __future__ import annotations

import asyncio

import pytest
from langgraph_sdk import get_client

from tests.harness import ScaledCluster


@pytest.fixture
def cluster_factory(postgres_server, redis_server):
    made: list[ScaledCluster] = []
    counter = iter(range(1000))

    def make(**kw) -> ScaledCluster:
        n = next(counter)
        env = {"REDIS_KEY_PREFIX": f"scaled{n}:", **kw.pop("env", {})}
        c = ScaledCluster(postgres_server.create_database(f"scaled_{n}_{id(made)}"), redis_server.uri, env=env, **kw)
        made.append(c.start())
        return c

    yield make
    for c in made:
        c.stop()


async def test_api_servers_execute_runs_without_queue_workers(cluster_factory):
    cluster = cluster_factory(n_api=1, n_workers=0, env={"QUEUE_ENABLED": "false"})
    client = get_client(url=cluster.url, api_key=None)
    out = await client.runs.wait(None, "echo", input={"value": "api-executed"})
    assert out["value"] == "api-executed"


async def test_with_queue_enabled_only_workers_execute(cluster_factory):
    cluster = cluster_factory(n_api=1, n_workers=0)
    client = get_client(url=cluster.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "echo", input={"value": 1})
    await asyncio.sleep(1.0)
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "pending"
    cluster.add_worker()
    await client.runs.join(thread["thread_id"], run["run_id"])
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"


async def test_stream_on_one_server_join_and_cancel_on_another(cluster_factory):
    cluster = cluster_factory(n_api=2, n_workers=1)
    a = get_client(url=cluster.apis[0].url, api_key=None)
    b = get_client(url=cluster.apis[1].url, api_key=None)
    thread = await a.threads.create()
    run = await a.runs.create(
        thread["thread_id"], "streamer", input={"n": 30, "delay": 0.01}, stream_mode="custom", stream_resumable=True
    )
    seen = [
        p.data["i"]
        async for p in b.runs.join_stream(thread["thread_id"], run["run_id"], last_event_id="-1")
        if p.event == "custom"
    ]
    assert seen == list(range(30))
    long = await a.runs.create(thread["thread_id"], "sleeper", input={"secs": 30})
    for _ in range(100):
        if (await b.runs.get(thread["thread_id"], long["run_id"]))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    await b.runs.cancel(thread["thread_id"], long["run_id"], wait=True)
    assert (await a.runs.get(thread["thread_id"], long["run_id"]))["status"] == "interrupted"


async def test_isolated_loops_on_postgres(cluster_factory):
    cluster = cluster_factory(
        n_api=1, n_workers=1,
        env={"BG_JOB_ISOLATED_LOOPS": "true", "N_JOBS_PER_WORKER": "4", "LANGGRAPH_POSTGRES_POOL_MAX_SIZE": "12"},
    )
    client = get_client(url=cluster.url, api_key=None)
    threads = [await client.threads.create() for _ in range(3)]
    runs = [
        await client.runs.create(threads[0]["thread_id"], "blocking", input={"secs": 1}),
        await client.runs.create(threads[1]["thread_id"], "steps", input={"steps": []}),
        await client.runs.create(threads[2]["thread_id"], "hitl", input={"question": "q"}),
    ]
    for r in runs:
        await client.runs.join(r["thread_id"], r["run_id"])
        assert (await client.runs.get(r["thread_id"], r["run_id"]))["status"] == "success"
    state = await client.threads.get_state(threads[1]["thread_id"])
    assert state["values"]["steps"][-1] == "step_9"
    assert (await client.threads.get(threads[2]["thread_id"]))["status"] == "interrupted"
    out = await client.runs.wait(threads[2]["thread_id"], "hitl", command={"resume": "ok"})
    assert out["answer"] == "ok"
