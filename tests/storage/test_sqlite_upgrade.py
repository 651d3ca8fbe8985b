"""A data directory made by release 0.1 (`tests/fixtures/embedded-release-0.1/`: its
`agentserver dev`, driven through the SDK) upgrades in place under this release: everything
it held is there, new runs work, and `schema_migrations` records every migration file.

The fixture holds an assistant with metadata, a thread with metadata and a finished run of
`echo`, and a thread whose `hitl` run stopped at its interrupt. Release 0.1 kept the schema as
a Python string (`PRAGMA user_version` 2) and had no `schema_migrations` table.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from langgraph_sdk import get_client
from langgraph_sdk.schema import Command

from agentserver.storage import migrations
from tests.harness import ServerProcess

FIXTURE = Path(__file__).parents[1] / "fixtures" / "embedded-release-0.1"
ASSISTANT = "a0000000-0000-4000-8000-000000000001"
THREAD_ECHO = "10000000-0000-4000-8000-000000000001"
THREAD_HITL = "10000000-0000-4000-8000-000000000002"


def _ledger(data_dir: Path) -> tuple[list[tuple], int]:
    conn = sqlite3.connect(data_dir / "agentserver.sqlite")
    try:
        rows = conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        return rows, user_version
    finally:
        conn.close()


def _fixture_copy(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("agentserver.sqlite", "checkpoints.sqlite", "store.sqlite"):
        shutil.copy2(FIXTURE / name, data_dir / name)
    conn = sqlite3.connect(data_dir / "agentserver.sqlite")
    try:  # what the fixture is: a release-0.1 database, without a record of migrations
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "threads" in tables and "schema_migrations" not in tables
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        conn.close()
    return data_dir


async def test_release_data_dir_upgrades_in_place(tmp_path):
    data_dir = _fixture_copy(tmp_path)
    srv = ServerProcess("dev", data_dir=data_dir).start()
    try:
        client = get_client(url=srv.url, api_key=None)

        assistant = await client.assistants.get(ASSISTANT)
        assert assistant["graph_id"] == "echo" and assistant["name"] == "fixture-echo"
        assert assistant["metadata"] == {"owner": "fixture", "tier": 1} and assistant["version"] == 1
        found = await client.assistants.search(metadata={"owner": "fixture"})
        assert [a["assistant_id"] for a in found] == [ASSISTANT]

        echo = await client.threads.get(THREAD_ECHO)
        assert echo["status"] == "idle"
        assert echo["metadata"] == {"purpose": "echo", "n": 1, "graph_id": "echo", "assistant_id": ASSISTANT}
        assert echo["values"]["value"] == "hello"
        hitl = await client.threads.get(THREAD_HITL)
        assert hitl["status"] == "interrupted" and hitl["metadata"]["graph_id"] == "hitl"
        (interrupts,) = hitl["interrupts"].values()
        assert interrupts[0]["value"] == {"question": "name?"}
        # the release's metadata index serves searches (and its counters the totals)
        found = await client.threads.search(metadata={"purpose": "hitl"})
        assert [t["thread_id"] for t in found] == [THREAD_HITL]
        assert await client.threads.count(metadata={"n": 1}) == 1
        assert await client.threads.count(status="interrupted") == 1

        (echo_run,) = await client.runs.list(THREAD_ECHO)
        assert echo_run["status"] == "success" and echo_run["metadata"]["kind"] == "finished"
        assert echo_run["assistant_id"] == ASSISTANT
        (hitl_run,) = await client.runs.list(THREAD_HITL)
        assert hitl_run["metadata"]["kind"] == "interrupted"
        assert hitl_run["status"] in ("success", "interrupted")

        # checkpoints: state and history as the release left them
        state = await client.threads.get_state(THREAD_ECHO)
        assert state["values"]["value"] == "hello" and state["next"] == []
        assert len(await client.threads.get_history(THREAD_ECHO)) == 3
        state = await client.threads.get_state(THREAD_HITL)
        assert state["next"] == ["ask"]
        assert state["tasks"][0]["interrupts"][0]["value"] == {"question": "name?"}
        assert len(await client.threads.get_history(THREAD_HITL)) == 2

        # new runs work: resume the interrupted one, run the assistant again
        out = await client.runs.wait(THREAD_HITL, "hitl", command=Command(resume="Ada"))
        assert out == {"question": "name?", "answer": "Ada", "done": True}
        assert (await client.threads.get(THREAD_HITL))["status"] == "idle"
        out = await client.runs.wait(THREAD_ECHO, ASSISTANT, input={"value": "again"})
        assert out["value"] == "again"
        assert len(await client.runs.list(THREAD_ECHO)) == 2
        assert len(await client.threads.get_history(THREAD_ECHO)) > 3
        assert await client.threads.count() == 2
    finally:
        srv.stop()

    files = migrations.load("agentserver.storage.sqlite")
    rows, user_version = _ledger(data_dir)
    assert [(v, n, c) for v, n, c, _ in rows] == [(m.version, m.name, m.checksum) for m in files]
    assert user_version == int(files[-1].version)

    # a second start applies nothing and keeps everything
    srv = ServerProcess("dev", data_dir=data_dir).start()
    try:
        client = get_client(url=srv.url, api_key=None)
        assert (await client.threads.get(THREAD_HITL))["values"]["answer"] == "Ada"
        assert len(await client.runs.list(THREAD_ECHO)) == 2
    finally:
        srv.stop()
    assert _ledger(data_dir) == (rows, user_version)


async def test_release_database_is_baselined_not_rebuilt(tmp_path):
    """Opening the release database records its schema without running the files again: the
    metadata index the release kept is used as is (not rebuilt), totals are right."""
    from agentserver.storage.base import ThreadQuery
    from agentserver.storage.sqlite import EmbeddedStorage

    data_dir = _fixture_copy(tmp_path)
    conn = sqlite3.connect(data_dir / "agentserver.sqlite")
    conn.execute("INSERT INTO thread_meta_counts VALUES ('marker', 's', 'kept', 7)")
    conn.commit()
    conn.close()
    storage = EmbeddedStorage(data_dir)
    await storage.setup()
    try:
        page, total = await storage.thread_search(ThreadQuery(metadata={"purpose": "echo"}))
        assert [t["thread_id"] for t in page] == [THREAD_ECHO] and total == 1
    finally:
        await storage.close()
    rows, _ = _ledger(data_dir)
    assert [r[0] for r in rows] == [m.version for m in migrations.load("agentserver.storage.sqlite")]
    conn = sqlite3.connect(data_dir / "agentserver.sqlite")
    try:  # 0002 (which rebuilds the index) was recorded, not run
        assert conn.execute("SELECT n FROM thread_meta_counts WHERE key = 'marker'").fetchone() == (7,)
    finally:
        conn.close()


async def test_new_data_dir_records_every_file_and_refuses_unknown_versions(tmp_path):
    import pytest

    from agentserver.storage.migrations import MigrationError
    from agentserver.storage.sqlite import EmbeddedStorage

    files = migrations.load("agentserver.storage.sqlite")
    assert [m.version for m in files] == [f"{i:04d}" for i in range(1, len(files) + 1)]
    storage = EmbeddedStorage(tmp_path)
    await storage.setup()
    await storage.close()
    rows, user_version = _ledger(tmp_path)
    assert [(v, c) for v, _, c, _ in rows] == [(m.version, m.checksum) for m in files]
    assert user_version == int(files[-1].version)

    conn = sqlite3.connect(tmp_path / "agentserver.sqlite")
    conn.execute("INSERT INTO schema_migrations VALUES ('9999', 'from_the_future', 'x', 0)")
    conn.commit()
    conn.close()
    storage = EmbeddedStorage(tmp_path)
    with pytest.raises(MigrationError, match="9999"):
        await storage.setup()
    await storage.close()


def test_processes_starting_together_apply_each_file_once(tmp_path):
    """`migrate` holds SQLite's write lock from reading the record to committing each file: of
    several connections migrating one new database at once, each file is applied by one."""
    import threading

    from agentserver.storage.sqlite import schema

    applied: list[list[str]] = []
    errors: list[BaseException] = []

    # The storage switches a new file to WAL when it opens it; switching needs the file to itself.
    first = sqlite3.connect(tmp_path / "agentserver.sqlite", isolation_level=None)
    first.execute("PRAGMA journal_mode=WAL")
    first.close()

    def open_and_migrate() -> None:
        conn = sqlite3.connect(tmp_path / "agentserver.sqlite", isolation_level=None, timeout=10)
        try:
            applied.append(schema.migrate(conn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_and_migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = [m.label for m in migrations.load("agentserver.storage.sqlite")]
    assert errors == [] and len(applied) == 4
    assert sorted(label for done in applied for label in done) == labels
