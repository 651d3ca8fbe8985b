"""Fault tests of the scaled shape. Each builds its own Postgres, Redis and processes, breaks one
of them, and checks that no run is lost or executed to completion twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from tests.harness import PostgresServer, RedisServer
from tests.harness import ScaledCluster


@pytest.fixture
def infra():
    pg = PostgresServer().start()
    redis = RedisServer().start()
    clusters: list[ScaledCluster] = []

    def make(**kw) -> ScaledCluster:
        env = {"BG_JOB_LEASE_SECS": "2", "BG_JOB_SWEEP_SECS": "0.5", **kw.pop("env", {})}
        cluster = ScaledCluster(pg.uri, redis.uri, env=env, **kw).start()
        clusters.append(cluster)
        return cluster

    yield pg, redis, make
    for c in clusters:
        for p in c.apis + c.workers:
            p.kill()
    redis.cleanup()
    pg.cleanup()


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_kill_9_worker_mid_run(infra, tmp_path):
    pg, redis, make = infra
    cluster = make(n_api=1, n_workers=2)
    client = get_client(url=cluster.url, api_key=None)
    log = tmp_path / "steps.jsonl"
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "counter", input={"path": str(log), "secs": 0.5}, durability="sync"
    )
    # wait until two steps have finished, then kill -9 the worker executing the run
    for _ in range(400):
        if sum(1 for e in _events(log) if e["event"] == "end") >= 2:
            break
        await asyncio.sleep(0.025)
    pid = await _find_worker_pid(cluster, run["run_id"], pg.uri)
    victim = next(w for w in cluster.workers if w.proc.pid == pid)
    killed_at = time.monotonic()
    victim.kill()
    n_before = len(_events(log))
    # the other worker picks it up (lease 2 s) and finishes it
    result = await client.runs.join(thread["thread_id"], run["run_id"])
    assert result["steps"] == [f"step_{i}" for i in range(1, 6)]
    got = await client.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success"
    events = _events(log)
    starts = [e["step"] for e in events if e["event"] == "start"]
    ends = [e["step"] for e in events if e["event"] == "end"]
    assert len(starts) - len(set(starts)) <= 1, starts  # at most the in-flight step ran again
    assert len(ends) - len(set(ends)) <= 1, ends
    assert sorted(set(ends)) == [f"step_{i}" for i in range(1, 6)]
    # steps finished before the kill were not executed again
    done_before = {e["step"] for e in events[:n_before] if e["event"] == "end"}
    assert all(starts.count(step) == 1 for step in done_before), starts
    print(f"resumed and finished {time.monotonic() - killed_at:.2f}s after kill -9")


async def _find_worker_pid(cluster: ScaledCluster, run_id: str, uri: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(uri) as conn:
        for _ in range(200):
            row = await (await conn.execute("SELECT lease_owner FROM runs WHERE run_id = %s", (run_id,))).fetchone()
            if row and row[0]:
                return int(row[0].split(":")[1])
            await asyncio.sleep(0.05)
    raise AssertionError("run was never claimed")


async def test_kill_9_resumes_within_10_seconds(infra, tmp_path):
    pg, redis, make = infra
    cluster = make(n_api=1, n_workers=2)
    client = get_client(url=cluster.url, api_key=None)
    log = tmp_path / "steps.jsonl"
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "counter", input={"path": str(log), "secs": 0.5})
    for _ in range(400):
        if any(e["event"] == "end" for e in _events(log)):
            break
        await asyncio.sleep(0.025)
    pid = await _find_worker_pid(cluster, run["run_id"], pg.uri)
    victim = next(w for w in cluster.workers if w.proc.pid == pid)
    n_before = len(_events(log))
    victim.kill()
    killed_at = time.monotonic()
    while len(_events(log)) == n_before or all(e["event"] != "start" for e in _events(log)[n_before:]):
        assert time.monotonic() - killed_at < 10, "work did not resume within 10 s of kill -9"
        await asyncio.sleep(0.05)
    await client.runs.join(thread["thread_id"], run["run_id"])
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"


async def test_sigterm_worker_drains_and_requeues(infra):
    pg, redis, make = infra
    cluster = make(n_api=1, n_workers=1, env={"BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS": "1"})
    client = get_client(url=cluster.url, api_key=None)
    short_t = await client.threads.create()
    long_t = await client.threads.create()
    short = await client.runs.create(short_t["thread_id"], "sleeper", input={"secs": 0.5})
    long = await client.runs.create(long_t["thread_id"], "sleeper", input={"secs": 3})
    await asyncio.sleep(0.3)
    worker = cluster.workers[0]
    worker.signal(signal.SIGTERM)
    t0 = time.monotonic()
    await asyncio.to_thread(worker.proc.wait, 20)
    drained_in = time.monotonic() - t0
    # the short run finished during the grace period; the long one went back to the queue
    assert (await client.runs.get(short_t["thread_id"], short["run_id"]))["status"] == "success"
    assert (await client.runs.get(long_t["thread_id"], long["run_id"]))["status"] == "pending"
    assert drained_in < 10
    cluster.add_worker()
    result = await client.runs.join(long_t["thread_id"], long["run_id"])
    assert result["slept"] == 3
    assert (await client.runs.get(long_t["thread_id"], long["run_id"]))["status"] == "success"


async def test_redis_restart_mid_stream(infra):
    pg, redis, make = infra
    cluster = make(n_api=1, n_workers=1)
    client = get_client(url=cluster.url, api_key=None)
    thread = await client.threads.create()
    n = 200
    received: list[int] = []

    async def consume():
        async for part in client.runs.stream(
            thread["thread_id"], "streamer", input={"n": n, "delay": 0.02},
            stream_mode="custom", stream_resumable=True,
        ):
            if part.event == "custom":
                received.append(part.data["i"])

    task = asyncio.create_task(consume())
    while len(received) < 40:
        await asyncio.sleep(0.02)
    await asyncio.to_thread(redis.restart)
    await asyncio.wait_for(task, 90)
    assert received == list(range(n))
    runs = await client.runs.list(thread["thread_id"])
    assert runs[0]["status"] == "success"


async def test_postgres_restart_under_load(infra):
    pg, redis, make = infra
    cluster = make(n_api=1, n_workers=1)
    url = cluster.apis[0].url
    statuses: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def load():
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            t = (await http.post("/threads", json={})).json()
            while not stop.is_set():
                for req in (
                    http.post("/threads", json={"metadata": {"k": 1}}),
                    http.get(f"/threads/{t['thread_id']}"),
                    http.post("/threads/search", json={"limit": 5}),
                ):
                    try:
                        r = await req
                        statuses.append((time.monotonic(), r.status_code))
                    except httpx.HTTPError:
                        statuses.append((time.monotonic(), -1))
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(pg.stop)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(pg.start)
    back_at = time.monotonic()
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks)
    codes = {c for _, c in statuses}
    assert 500 not in codes, "a request failed with 500"
    assert -1 not in codes, "a request failed without an HTTP answer"
    assert 503 in codes, "no request saw the outage"
    first_ok = min(t for t, c in statuses if t >= back_at and c == 200)
    recovery = first_ok - back_at
    print(f"recovered {recovery:.3f}s after Postgres came back")
    assert recovery < 1.0
    # after recovery every request succeeds
    assert all(c == 200 for t, c in statuses if t > first_ok + 0.5)


async def test_api_server_waits_for_postgres_at_start_up(tmp_path):
    """An API server started before its database comes up waits for it, then serves."""
    from tests.harness import ServerProcess

    pg = PostgresServer()
    redis = RedisServer().start()
    api = ServerProcess("serve", env={"POSTGRES_URI_CUSTOM": pg.uri, "REDIS_URI_CUSTOM": redis.uri})
    try:
        starting = asyncio.create_task(asyncio.to_thread(api.start, 60))
        await asyncio.sleep(2)
        assert not starting.done()
        await asyncio.to_thread(pg.start)
        await starting
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.post("/threads", json={})).status_code == 200
    finally:
        api.kill()
        redis.cleanup()
        pg.cleanup()
