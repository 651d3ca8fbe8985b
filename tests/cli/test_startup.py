"""The first hour with real processes: start-up problems are one line naming the cause (before
anything says "startup complete"), start-up says what it serves, /docs works offline, and
Ctrl-C drains, then stops at once on a second signal with the unfinished runs resumed later."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from langgraph_sdk import get_client

from tests.harness import free_port
from tests.harness import ROOT, ServerProcess

EXAMPLES = ROOT / "examples" / "langgraph.json"


def _agentserver(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentserver", *args],
        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
        env={**os.environ, "LOG_LEVEL": "WARNING", "LOG_COLOR": "false", **(env or {})},
    )


def _lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


def _one_line_failure(r: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one line on stderr, and said nothing else."""
    assert r.returncode != 0
    lines = _lines(r)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("agentserver: ")
    return lines[0]


def test_version():
    r = _agentserver("--version")
    assert r.returncode == 0 and re.fullmatch(r"agentserver \d+\.\d+\.\d+\S*\n", r.stdout)


@pytest.mark.parametrize("port", ["67937", "0", "-1"])
def test_port_out_of_range(port, tmp_path):
    line = _one_line_failure(_agentserver("dev", "--port", port, "--data-dir", str(tmp_path)))
    assert f"--port {port}" in line and "1-65535" in line


def test_invalid_log_level_is_named(tmp_path):
    r = _agentserver("dev", "--config", str(EXAMPLES), "--port", str(free_port()), "--data-dir", str(tmp_path),
                     env={"LOG_LEVEL": "LOUD"})
    line = _one_line_failure(r)
    assert "LOG_LEVEL" in line and "LOUD" in line


def test_port_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _agentserver("dev", "--config", str(EXAMPLES), "--port", str(port), "--data-dir", str(tmp_path))
    line = _one_line_failure(r)
    assert f"127.0.0.1:{port}" in line and "already in use" in line


def test_auth_refused_naming_the_key(tmp_path):
    shutil.copy(ROOT / "tests" / "graphs" / "echo.py", tmp_path / "echo.py")
    (tmp_path / "langgraph.json").write_text(
        json.dumps({"graphs": {"echo": "./echo.py:graph"}, "auth": {"path": "./auth.py:auth"}})
    )
    r = _agentserver("dev", "--config", str(tmp_path / "langgraph.json"), "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"))
    line = _one_line_failure(r)
    assert "'auth'" in line and "langgraph.json" in line


def test_second_dev_on_one_data_dir(tmp_path):
    first = ServerProcess("dev", config=EXAMPLES, data_dir=tmp_path).start()
    try:
        r = _agentserver("dev", "--config", str(EXAMPLES), "--port", str(free_port()), "--data-dir", str(tmp_path))
        line = _one_line_failure(r)
        assert str(tmp_path / "agentserver.lock") in line and f"pid {first.proc.pid}" in line
        assert httpx.get(first.url + "/ok").status_code == 200  # the first one is unharmed
    finally:
        first.stop()
    # the lock goes with the process: the directory can be used again
    ServerProcess("dev", config=EXAMPLES, data_dir=tmp_path).start().stop()


def _unreachable_failure(r: subprocess.CompletedProcess, what: str, host: str, secret: str) -> None:
    assert r.returncode != 0
    lines = _lines(r)
    assert "s3cret" not in r.stderr and secret not in r.stderr
    assert "Traceback" not in r.stderr and "startup complete" not in r.stderr.lower()
    # at most one "waiting" warning, then the failure
    assert len(lines) <= 2 and all("waiting up to" in line for line in lines[:-1]), r.stderr
    assert lines[-1].startswith(f"agentserver: cannot reach {what} at ") and host in lines[-1]
    assert "STARTUP_WAIT_SECS" in lines[-1]


def test_postgres_unreachable_is_one_line_without_password():
    port = free_port()  # nothing listens there
    r = _agentserver(
        "serve", "--config", str(EXAMPLES), "--port", str(free_port()),
        env={"POSTGRES_URI_CUSTOM": f"postgresql://bob:s3cret@127.0.0.1:{port}/app",
             "REDIS_URI_CUSTOM": f"redis://:r3dis@127.0.0.1:{free_port()}/0", "STARTUP_WAIT_SECS": "1"},
    )
    _unreachable_failure(r, "Postgres", f"bob@127.0.0.1:{port}/app", "r3dis")


def test_redis_unreachable_is_one_line_without_password(postgres_server):
    port = free_port()
    r = _agentserver(
        "worker", "--config", str(EXAMPLES),
        env={"POSTGRES_URI_CUSTOM": postgres_server.create_database("startup_redis_down"),
             "REDIS_URI_CUSTOM": f"redis://:r3dis@127.0.0.1:{port}/0", "STARTUP_WAIT_SECS": "1"},
    )
    _unreachable_failure(r, "Redis", f"127.0.0.1:{port}/0", "r3dis")


def test_start_up_names_graphs_data_dir_docs_and_ignored_settings(tmp_path):
    shutil.copy(ROOT / "tests" / "graphs" / "echo.py", tmp_path / "echo.py")
    (tmp_path / "langgraph.json").write_text(json.dumps({
        "graphs": {"echo": "./echo.py:graph"},
        "store": {"index": {"dims": 3, "embed": "fake"}},
        "http": {"disable_meta": True},
        "python_version": "3.12",
    }))
    env = {"LOG_LEVEL": "INFO", "DD_API_KEY": "x", "POSTGRES_URI_CUSTOM": "postgresql://h/db"}
    srv = ServerProcess("dev", config=tmp_path / "langgraph.json", data_dir=tmp_path / "data", env=env).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            docs = http.get("/docs")
            assert docs.status_code == 200
            assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text) + re.findall(r"url: '([^']+)'", docs.text)
            assert len(assets) >= 4
            for asset in assets:
                assert asset.startswith("/"), asset  # nothing from a CDN
                assert http.get(asset).status_code == 200, asset
        log = srv.log()
    finally:
        srv.stop()
    ready = log.index("startup complete")
    for needle in (
        "loaded 1 graph(s)", "echo",
        f"data directory: {tmp_path / 'data'}",
        "not implemented by agentserver yet, ignored: ", "store (", "http (",
        "DD_API_KEY (", "ignored by `agentserver dev`", "POSTGRES_URI_CUSTOM",
        "image-build keys", "python_version",
    ):
        assert -1 < log.find(needle) < ready, needle
    assert f"API docs at {srv.url}/docs" in log


def test_readme_snippet_runs_as_pasted():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Drive it with the SDK"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "asyncio.run(main())" in code and "examples/" in section
    srv = ServerProcess("dev", config=EXAMPLES).start()
    try:
        r = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:2024", srv.url)],
                           capture_output=True, text=True, timeout=60)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    assert "custom" in r.stdout and "messages" in r.stdout


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


async def _running(client, runs: list[dict]) -> bool:
    statuses = [(await client.runs.get(r["thread_id"], r["run_id"]))["status"] for r in runs]
    return statuses == ["running"] * len(runs)


async def test_ctrl_c_twice_stops_at_once_and_runs_resume(tmp_path):
    """First SIGINT: stop taking runs and say what the drain waits for. Second: stop now. An
    async node (sleeper) and a sync one in a thread (blocking) both go back to the queue and
    finish after the next start."""
    env = {"LOG_LEVEL": "INFO", "BG_JOB_LEASE_SECS": "1"}
    srv = ServerProcess("dev", data_dir=tmp_path, env=env).start()
    client = get_client(url=srv.url, api_key=None)
    runs = []
    for graph in ("sleeper", "blocking"):
        thread = await client.threads.create()
        runs.append(await client.runs.create(thread["thread_id"], graph, input={"secs": 4}))
    for _ in range(100):
        if await _running(client, runs):
            break
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    srv.signal(signal.SIGINT)
    await asyncio.to_thread(_wait_for, lambda: "for 2 running run(s)" in srv.log(), 5, "drain line")
    assert srv.proc.poll() is None  # draining, not gone
    srv.signal(signal.SIGINT)
    code = await asyncio.to_thread(srv.proc.wait, 10)
    stopped_in = time.monotonic() - t0
    assert code == 0 and stopped_in < 3, (code, stopped_in, srv.log())
    assert "putting 2 unfinished run(s) back in the queue" in srv.log()

    srv2 = ServerProcess("dev", data_dir=tmp_path).start()
    try:
        client2 = get_client(url=srv2.url, api_key=None)
        for r in runs:
            result = await client2.runs.join(r["thread_id"], r["run_id"])
            assert result["slept"] == 4
            assert (await client2.runs.get(r["thread_id"], r["run_id"]))["status"] == "success"
    finally:
        srv2.stop()


async def test_worker_second_sigterm_stops_at_once(postgres_server, redis_server):
    from tests.harness import ScaledCluster

    cluster = ScaledCluster(
        postgres_server.create_database("startup_worker_signals"), redis_server.uri, n_api=1, n_workers=1,
        env={"REDIS_KEY_PREFIX": "startup-signals:", "BG_JOB_LEASE_SECS": "2", "LOG_LEVEL": "INFO"},
    ).start()
    try:
        client = get_client(url=cluster.url, api_key=None)
        thread = await client.threads.create()
        run = await client.runs.create(thread["thread_id"], "sleeper", input={"secs": 4})
        for _ in range(100):
            if await _running(client, [run]):
                break
            await asyncio.sleep(0.05)
        worker = cluster.workers[0]
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        await asyncio.to_thread(_wait_for, lambda: "for 1 running run(s)" in worker.log(), 5, "drain line")
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 10)
        assert code == 0 and time.monotonic() - t0 < 3
        assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "pending"
        cluster.add_worker()
        assert (await client.runs.join(thread["thread_id"], run["run_id"]))["slept"] == 4
    finally:
        cluster.stop()
