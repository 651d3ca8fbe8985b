"""A Postgres database made by release 0.1 upgrades in place.

`tests/fixtures/postgres-release-0.1.sql` is a `pg_dump --no-owner --no-privileges` of a database
that release 0.1 (commit a1d1718) served, holding: assistant ASSISTANT (graph `echo`, with
metadata), thread ECHO_THREAD (with metadata) with one finished `echo` run, and thread
HITL_THREAD with a run of `hitl` stopped at its interrupt. The test loads it into a fresh
database, starts this code's API server and queue worker on it, and reads everything back through
the SDK; new runs work, and `schema_migrations` keeps every row the release recorded.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.schema import Command

from agentserver.storage.postgres.migrate import load_migrations
from tests.harness import pg_bin
from tests.harness import ScaledCluster

DUMP = Path(__file__).parents[1] / "fixtures" / "postgres-release-0.1.sql"
ASSISTANT = "5b0f8a4e-0000-4000-8000-000000000001"
ECHO_THREAD = "5b0f8a4e-0000-4000-8000-0000000000a1"
HITL_THREAD = "5b0f8a4e-0000-4000-8000-0000000000a2"


def _schema_migrations(uri: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(uri) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


@pytest.fixture
def release_db(postgres_server) -> str:
    uri = postgres_server.create_database(f"release_0_1_{uuid.uuid4().hex[:12]}")
    subprocess.run(
        [pg_bin("psql"), uri, "-q", "-v", "ON_ERROR_STOP=1", "-f", str(DUMP)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return uri


async def test_release_database_upgrades_in_place(release_db, redis_server):
    before = _schema_migrations(release_db)
    assert "0001" in before
    cluster = ScaledCluster(
        release_db, redis_server.uri, n_api=1, n_workers=1, env={"REDIS_KEY_PREFIX": "upgrade:"}
    ).start()
    try:
        client = get_client(url=cluster.url, api_key=None)

        assistant = await client.assistants.get(ASSISTANT)
        assert assistant["graph_id"] == "echo"
        assert assistant["name"] == "release echo"
        assert assistant["metadata"] == {"owner": "release-0.1", "tier": "gold"}
        found = await client.assistants.search(metadata={"owner": "release-0.1"})
        assert [a["assistant_id"] for a in found] == [ASSISTANT]

        # the finished echo run, its thread and checkpoints
        thread = await client.threads.get(ECHO_THREAD)
        assert thread["status"] == "idle"
        assert thread["metadata"] == {"user": "ada", "n": 1, "graph_id": "echo", "assistant_id": ASSISTANT}
        assert thread["values"]["value"] == "hello"
        (run,) = await client.runs.list(ECHO_THREAD)
        assert run["status"] == "success"
        assert run["metadata"] == {"purpose": "finished"}
        assert (await client.runs.get(ECHO_THREAD, run["run_id"]))["run_id"] == run["run_id"]
        state = await client.threads.get_state(ECHO_THREAD)
        assert state["values"]["value"] == "hello"
        assert [m["content"] for m in state["values"]["messages"]] == ["hi"]
        assert state["next"] == []
        history = await client.threads.get_history(ECHO_THREAD)
        assert len(history) >= 2 and history[0]["checkpoint"] == state["checkpoint"]
        found = await client.threads.search(metadata={"user": "ada"})
        assert [t["thread_id"] for t in found] == [ECHO_THREAD]

        # the interrupted hitl run: its thread waits at the interrupt, and resumes
        hitl = await client.threads.get(HITL_THREAD)
        assert hitl["status"] == "interrupted"
        assert hitl["metadata"]["user"] == "bob" and hitl["metadata"]["graph_id"] == "hitl"
        (interrupt,) = [i for items in hitl["interrupts"].values() for i in items]
        assert interrupt["value"] == {"question": "Ship it?"}
        (stopped,) = await client.runs.list(HITL_THREAD)
        assert stopped["metadata"] == {"purpose": "interrupted"}
        waiting = await client.threads.get_state(HITL_THREAD)
        assert waiting["next"] == ["ask"]
        out = await client.runs.wait(HITL_THREAD, "hitl", command=Command(resume="yes"))
        assert out == {"question": "Ship it?", "answer": "yes", "done": True}
        resumed = await client.threads.get(HITL_THREAD)
        assert resumed["status"] == "idle" and resumed["interrupts"] == {}
        assert len(await client.runs.list(HITL_THREAD)) == 2

        # new runs on the old thread and the old assistant
        out = await client.runs.wait(ECHO_THREAD, ASSISTANT, input={"value": "again"})
        assert out["value"] == "again"
        assert [m["content"] for m in out["messages"]] == ["hi"]
        assert len(await client.runs.list(ECHO_THREAD)) == 2
        assert len(await client.threads.get_history(ECHO_THREAD)) > len(history)
        out = await client.runs.wait(None, "echo", input={"value": "fresh"})
        assert out["value"] == "fresh"
    finally:
        cluster.stop()

    after = _schema_migrations(release_db)
    assert {v: after[v] for v in before} == before  # unchanged or extended
    assert set(after) == {m.version for m in load_migrations()}  # this code's files all applied
