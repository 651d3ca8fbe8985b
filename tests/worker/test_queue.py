"""The queue of the embedded shape: slots, timeouts, restarts, shutdown, isolated loops.
Each test starts its own server process with the settings it needs."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
from langgraph_sdk import get_client

from tests.harness import ServerProcess


@pytest.fixture
def make_server():
    procs: list[ServerProcess] = []

    def make(**env) -> ServerProcess:
        data_dir = env.pop("data_dir", None)
        proc = ServerProcess("dev", env={k: str(v) for k, v in env.items()}, data_dir=data_dir).start()
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        p.kill()


async def test_timeout_ends_run_as_timeout(make_server):
    srv = make_server(BG_JOB_TIMEOUT_SECS="0.5")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 10})
    await client.runs.join(thread["thread_id"], run["run_id"])
    got = await client.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "timeout"
    assert (await client.threads.get(thread["thread_id"]))["status"] == "error"


async def test_slots_limit_concurrency(make_server):
    srv = make_server(N_JOBS_PER_WORKER="2")
    client = get_client(url=srv.url, api_key=None)
    threads = [await client.threads.create() for _ in range(4)]
    runs = [await client.runs.create(t["thread_id"], "sleeper", input={"secs": 1}) for t in threads]
    await asyncio.sleep(0.4)
    statuses = [(await client.runs.get(r["thread_id"], r["run_id"]))["status"] for r in runs]
    assert statuses.count("running") == 2 and statuses.count("pending") == 2
    for r in runs:
        await client.runs.join(r["thread_id"], r["run_id"])


async def test_run_resumes_after_process_dies(make_server, tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "steps.jsonl"
    srv = make_server(data_dir=data, BG_JOB_LEASE_SECS="1")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"], "counter", input={"path": str(log), "secs": 0.4}, durability="sync"
    )
    # wait until two steps finished, then kill -9 the process
    for _ in range(200):
        ends = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
        if sum(1 for e in ends if e["event"] == "end") >= 2:
            break
        await asyncio.sleep(0.05)
    srv.kill()
    srv2 = make_server(data_dir=data, BG_JOB_LEASE_SECS="1")
    client2 = get_client(url=srv2.url, api_key=None)
    result = await client2.runs.join(thread["thread_id"], run["run_id"])
    assert result["steps"] == [f"step_{i}" for i in range(1, 6)]
    got = await client2.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success"
    events = [json.loads(l) for l in log.read_text().splitlines()]
    starts = [e["step"] for e in events if e["event"] == "start"]
    # finished steps never ran twice; at most the in-flight one did
    assert len(starts) - len(set(starts)) <= 1
    assert sorted(set(starts)) == [f"step_{i}" for i in range(1, 6)]


async def test_state_survives_restart(make_server, tmp_path):
    data = tmp_path / "data"
    srv = make_server(data_dir=data)
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create(metadata={"k": "v"})
    await client.runs.wait(thread["thread_id"], "steps", input={"steps": []})
    assistant = await client.assistants.create("echo", name="mine")
    srv.stop()
    srv2 = make_server(data_dir=data)
    client2 = get_client(url=srv2.url, api_key=None)
    t = await client2.threads.get(thread["thread_id"])
    assert t["metadata"]["k"] == "v" and t["values"]["steps"][-1] == "step_9"
    state = await client2.threads.get_state(thread["thread_id"])
    assert state["values"]["steps"][-1] == "step_9"
    assert (await client2.assistants.get(assistant["assistant_id"]))["name"] == "mine"


async def test_sigterm_drains_running_runs(make_server):
    srv = make_server(BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS="10")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 1.5})
    await asyncio.sleep(0.5)
    srv.signal(signal.SIGTERM)
    code = await asyncio.to_thread(srv.proc.wait, 20)
    # uvicorn re-raises the signal after its graceful shutdown: killed by SIGTERM, not crashed
    assert code in (0, -signal.SIGTERM)
    srv2 = make_server(data_dir=srv.data_dir)
    client2 = get_client(url=srv2.url, api_key=None)
    got = await client2.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success"


async def test_sigterm_past_grace_requeues(make_server):
    srv = make_server(BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS="1")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 4})
    await asyncio.sleep(0.5)
    srv.signal(signal.SIGTERM)
    await asyncio.to_thread(srv.proc.wait, 20)
    srv2 = make_server(data_dir=srv.data_dir)
    client2 = get_client(url=srv2.url, api_key=None)
    result = await client2.runs.join(thread["thread_id"], run["run_id"])
    assert result["slept"] == 4
    got = await client2.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "success"


async def test_isolated_loops_keep_api_responsive(make_server):
    srv = make_server(BG_JOB_ISOLATED_LOOPS="true")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "blocking", input={"secs": 3})
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
        worst = 0.0
        for _ in range(10):
            t0 = time.perf_counter()
            assert (await http.get("/ok")).status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.1)
    # the blocking node holds its own loop for 3 s; the API loop answered meanwhile
    assert worst < 1.0
    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "running"
    result = await client.runs.join(thread["thread_id"], run["run_id"])
    assert result["slept"] == 3


async def test_max_retries_bounds_requeues(make_server):
    """With BG_JOB_MAX_RETRIES=0 a run cut off by shutdown is not retried: it fails."""
    srv = make_server(BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS="0", BG_JOB_MAX_RETRIES="0")
    client = get_client(url=srv.url, api_key=None)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 5})
    await asyncio.sleep(0.5)
    srv.signal(signal.SIGTERM)
    await asyncio.to_thread(srv.proc.wait, 20)
    srv2 = make_server(data_dir=srv.data_dir, BG_JOB_MAX_RETRIES="0")
    client2 = get_client(url=srv2.url, api_key=None)
    got = await client2.runs.get(thread["thread_id"], run["run_id"])
    assert got["status"] == "error"
