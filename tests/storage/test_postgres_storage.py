"""Postgres-specific behaviour of the storage: migrations under concurrency, the race-free
`reject` strategy, concurrent claimers, outages, checkpoint rollback/copy, scale.

The behaviour both storages share is in test_storage_conformance.py.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg import errors as pg_errors

from agentserver.errors import Conflict, Unavailable
from agentserver.storage.base import RunEnd, ThreadQuery
from agentserver.storage.postgres import PostgresStorage, migrate
from agentserver.storage.postgres.migrate import load_migrations
from agentserver.storage.postgres.pool import create_pool, pool_size_per_loop
from agentserver.utils import now, uuid7
from tests.harness import PostgresServer


async def _fresh_db(server) -> str:
    return await asyncio.to_thread(server.create_database, f"pg_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def uri(postgres_server):
    return await _fresh_db(postgres_server)


@pytest.fixture
async def storage(uri):
    st = PostgresStorage(uri, pool_max_size=10)
    await st.setup()
    yield st
    await st.close()


def _run(thread_id: str, **extra) -> dict:
    created = now()
    return {
        "run_id": uuid7(),
        "thread_id": thread_id,
        "assistant_id": "asst",
        "metadata": {},
        "status": "pending",
        "kwargs": {"input": {"n": 1}},
        "multitask_strategy": extra.pop("multitask_strategy", "enqueue"),
        "created_at": created,
        "updated_at": created,
        "attempt": 0,
        "available_at": created,
        **extra,
    }


async def _thread(st: PostgresStorage, **fields) -> str:
    thread_id = uuid7()
    await st.thread_create({"thread_id": thread_id, "metadata": {}, "status": "idle", **fields})
    return thread_id


# ---- migrations ---------------------------------------------------------------------------------


async def test_migrations_apply_once_from_concurrent_starts(uri):
    versions = [m.version for m in load_migrations()]
    assert versions and versions[0] == "0001"

    results = await asyncio.gather(*(migrate(uri) for _ in range(4)))

    assert sorted(results, key=len) == [[], [], [], versions]
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        rows = await (await conn.execute("SELECT version FROM schema_migrations ORDER BY version")).fetchall()
        assert [r[0] for r in rows] == versions
        # LangGraph's own migrations ran exactly once too (their tables record each version once).
        ck = await (await conn.execute("SELECT count(*), count(DISTINCT v) FROM checkpoint_migrations")).fetchone()
        assert ck[0] == ck[1] > 0
        st = await (await conn.execute("SELECT count(*), count(DISTINCT v) FROM store_migrations")).fetchone()
        assert st[0] == st[1] > 0
    # Later starts find nothing to do.
    assert await migrate(uri) == []


async def test_migrate_through_a_pool(uri):
    pool = create_pool(uri, max_size=2)
    await pool.open(wait=False)
    try:
        assert await migrate(pool) == [m.version for m in load_migrations()]
        assert await migrate(pool) == []
    finally:
        await pool.close()


# ---- multitask reject under concurrency ------------------------------------------------------


async def test_reject_is_race_free_across_50_concurrent_creates(storage):
    thread_id = await _thread(storage)

    async def attempt():
        try:
            return await storage.run_create(
                _run(thread_id, multitask_strategy="reject"), thread=None, multitask_strategy="reject"
            )
        except Conflict as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    created = [r for r in results if not isinstance(r, Conflict)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 1 and len(conflicts) == 49
    assert "already running" in conflicts[0].detail
    runs = await storage.run_list(thread_id, status=None, limit=100, offset=0)
    assert [r["run_id"] for r in runs] == [created[0].run["run_id"]]
    assert (await storage.thread_get(thread_id))["status"] == "busy"


async def test_reject_race_creating_the_thread(storage):
    """Concurrent creates with if_not_exists=create on a missing thread: one thread, one run."""
    thread_id = uuid7()

    async def attempt():
        try:
            return await storage.run_create(
                _run(thread_id),
                thread={"thread_id": thread_id, "metadata": {"graph_id": "g"}},
                if_not_exists="create",
                multitask_strategy="reject",
            )
        except Conflict as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    assert sum(not isinstance(r, Conflict) for r in results) == 1
    thread = await storage.thread_get(thread_id)
    assert thread["status"] == "busy"
    assert thread["metadata"] == {"graph_id": "g", "assistant_id": "asst"}


# ---- the queue ---------------------------------------------------------------------------------


async def test_concurrent_claimers_never_double_claim_nor_run_a_thread_twice(uri, storage):
    threads = [await _thread(storage) for _ in range(12)]
    order: dict[str, list[str]] = {t: [] for t in threads}
    for i in range(5):
        for t in threads:
            run = (await storage.run_create(_run(t), thread=None)).run
            order[t].append(run["run_id"])
    total = sum(len(v) for v in order.values())

    # Four claimers, each with its own pool, as four worker processes would be.
    claimers = [PostgresStorage(uri, pool_max_size=3) for _ in range(4)]
    for c in claimers:
        await c.setup()
    claimed_ids: list[str] = []
    claimed_order: dict[str, list[str]] = {t: [] for t in threads}
    running: dict[str, str] = {}  # thread -> run, as the workers see it
    violations: list[str] = []

    async def worker(st: PostgresStorage, name: str) -> None:
        idle_rounds = 0
        while len(claimed_ids) < total and idle_rounds < 200:
            got = await st.claim_runs(name, limit=3, lease_secs=30, max_attempts=3)
            if not got:
                idle_rounds += 1
                await asyncio.sleep(0.005)
                continue
            idle_rounds = 0
            for c in got:
                t = c.run["thread_id"]
                if t in running:
                    violations.append(f"{t} runs {running[t]} and {c.run['run_id']}")
                running[t] = c.run["run_id"]
                claimed_ids.append(c.run["run_id"])
                claimed_order[t].append(c.run["run_id"])
                assert c.attempt == 1 and c.run["lease_owner"] == name
            await asyncio.sleep(random.random() * 0.01)
            for c in got:
                running.pop(c.run["thread_id"], None)  # before the finish commits: no false alarm
                assert await st.run_finish(c.run["run_id"], c.lease_id, RunEnd(status="success"))

    try:
        await asyncio.gather(*(worker(c, f"w{i}") for i, c in enumerate(claimers)))
    finally:
        for c in claimers:
            await c.close()

    assert violations == []
    assert len(claimed_ids) == total == len(set(claimed_ids))
    assert claimed_order == order  # per-thread FIFO
    assert await storage.run_inflight() == []
    for t in threads:
        assert (await storage.thread_get(t))["status"] == "idle"


async def test_database_refuses_two_running_runs_of_a_thread(storage, uri):
    thread_id = await _thread(storage)
    a = (await storage.run_create(_run(thread_id), thread=None)).run
    b = (await storage.run_create(_run(thread_id), thread=None)).run
    [claimed] = await storage.claim_runs("w", 5, 30, 3)
    assert claimed.run["run_id"] == a["run_id"]
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        with pytest.raises(pg_errors.UniqueViolation):
            await conn.execute("UPDATE runs SET status = 'running' WHERE run_id = %s", (b["run_id"],))


async def test_expired_lease_is_reclaimed_and_the_old_worker_is_fenced(storage):
    thread_id = await _thread(storage)
    run = (await storage.run_create(_run(thread_id), thread=None)).run
    [first] = await storage.claim_runs("w1", 5, 0.2, 3)
    assert await storage.claim_runs("w2", 5, 10, 3) == []  # live lease
    await asyncio.sleep(0.3)
    [second] = await storage.claim_runs("w2", 5, 10, 3)
    assert second.run["run_id"] == run["run_id"] and second.attempt == 2
    assert second.lease_id != first.lease_id

    assert await storage.renew_leases("w1", [first.lease_id], 10) == {first.lease_id}
    assert await storage.renew_leases("w2", [second.lease_id], 10) == set()
    assert not await storage.run_finish(run["run_id"], first.lease_id, RunEnd(status="error", thread_status="error"))
    assert not await storage.run_requeue(run["run_id"], first.lease_id)
    assert (await storage.run_get(run["run_id"]))["status"] == "running"
    assert await storage.run_finish(run["run_id"], second.lease_id, RunEnd(status="success", values={"n": 2}))
    thread = await storage.thread_get(thread_id)
    assert thread["status"] == "idle" and thread["values"] == {"n": 2}


async def test_exhausted_runs_fail_and_block_nothing(storage):
    thread_id = await _thread(storage)
    run = (await storage.run_create(_run(thread_id), thread=None)).run
    nxt = (await storage.run_create(_run(thread_id), thread=None)).run
    [c] = await storage.claim_runs("w1", 5, 0.1, 1)
    await asyncio.sleep(0.2)
    assert await storage.claim_runs("w2", 5, 10, 1) == []  # attempt 1 of 1 used: not claimable
    failed = await storage.fail_exhausted(1)
    assert [r["run_id"] for r in failed] == [run["run_id"]] and failed[0]["status"] == "error"
    assert (await storage.thread_get(thread_id))["status"] == "busy"  # `nxt` is still pending
    [c2] = await storage.claim_runs("w2", 5, 10, 1)
    assert c2.run["run_id"] == nxt["run_id"]
    assert not await storage.run_finish(run["run_id"], c.lease_id, RunEnd(status="success"))


async def test_requeue_with_delay_and_next_wakeup(storage):
    thread_id = await _thread(storage)
    run = (await storage.run_create(_run(thread_id), thread=None)).run
    [c] = await storage.claim_runs("w1", 5, 10, 3)
    assert await storage.run_requeue(run["run_id"], c.lease_id, delay_secs=30)
    assert await storage.claim_runs("w1", 5, 10, 3) == []
    wake = await storage.next_wakeup()
    assert wake is not None and timedelta(seconds=25) < wake - now() <= timedelta(seconds=31)
    assert wake.tzinfo is not None


# ---- outages -----------------------------------------------------------------------------------


async def test_outage_raises_unavailable_then_recovers_within_a_second():
    server = await asyncio.to_thread(lambda: PostgresServer().start())
    st = None
    try:
        uri = await asyncio.to_thread(server.create_database, "outage")
        st = PostgresStorage(uri, pool_max_size=4)
        await st.setup()
        thread_id = await _thread(st)
        # several idle connections in the pool, all of which the outage will break
        await asyncio.gather(*(st.thread_get(thread_id) for _ in range(8)))

        await asyncio.to_thread(server.stop)
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                await st.thread_get(thread_id)
            assert time.monotonic() - t0 < 2.5
        with pytest.raises(Unavailable):
            await st.claim_runs("w", 1, 10, 3)

        await asyncio.to_thread(server.start)
        t0 = time.monotonic()
        while True:
            try:
                thread = await st.thread_get(thread_id)
                break
            except Unavailable:
                assert time.monotonic() - t0 < 3.0, "the pool did not recover"
                await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 1.5
        assert thread["thread_id"] == thread_id
        # Everything sharing the pool works again: writes, the queue, checkpoints.
        await st.run_create(_run(thread_id), thread=None)
        assert len(await st.claim_runs("w", 1, 10, 3)) == 1
        assert await st.checkpointer.aget({"configurable": {"thread_id": thread_id}}) is None
    finally:
        if st is not None:
            await st.close()
        await asyncio.to_thread(server.cleanup)


async def test_unreachable_database_at_setup_is_unavailable():
    from tests.harness import free_port

    st = PostgresStorage(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", pool_max_size=2)
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        await st.setup()
    assert time.monotonic() - t0 < 5
    await st.close()


# ---- checkpoints -------------------------------------------------------------------------------


async def test_checkpointer_rollback_and_copy(storage):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        n: int

    builder = StateGraph(State)
    builder.add_node("inc", lambda s: {"n": s["n"] + 1})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", END)
    graph = builder.compile(checkpointer=storage.checkpointer)

    thread_id = await _thread(storage)
    r1, r2 = _run(thread_id), _run(thread_id)
    for run in (r1, r2):
        await storage.run_create(run, thread=None)

    def cfg(run):
        return {"configurable": {"thread_id": thread_id}, "metadata": {"run_id": run["run_id"]}}

    await graph.ainvoke({"n": 1}, cfg(r1))
    after_r1 = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    await graph.ainvoke({"n": 10}, cfg(r2))
    assert (await graph.aget_state({"configurable": {"thread_id": thread_id}})).values == {"n": 11}

    copy_id = await _thread(storage)
    await storage.checkpointer.acopy_thread(thread_id, copy_id)
    copied = [c async for c in storage.checkpointer.alist({"configurable": {"thread_id": copy_id}})]
    original = [c async for c in storage.checkpointer.alist({"configurable": {"thread_id": thread_id}})]
    assert [c.checkpoint["id"] for c in copied] == [c.checkpoint["id"] for c in original]

    await storage.checkpointer.adelete_for_runs([r2["run_id"]])
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    assert state.values == {"n": 2}
    assert state.config["configurable"]["checkpoint_id"] == after_r1.config["configurable"]["checkpoint_id"]
    left = [c async for c in storage.checkpointer.alist({"configurable": {"thread_id": thread_id}})]
    assert all(c.metadata.get("run_id") == r1["run_id"] for c in left)
    # the copy is untouched, and the thread runs on from the surviving checkpoint
    assert (await graph.aget_state({"configurable": {"thread_id": copy_id}})).values == {"n": 11}
    await graph.ainvoke({"n": 5}, cfg(_run(thread_id)))
    assert (await graph.aget_state({"configurable": {"thread_id": thread_id}})).values == {"n": 6}


async def test_store_and_checkpointer_share_the_storage_pool(storage):
    assert storage.checkpointer.conn is storage.pool
    assert storage.store.conn is storage.pool
    await storage.store.aput(("users", "u1"), "prefs", {"theme": "dark"})
    item = await storage.store.aget(("users", "u1"), "prefs")
    assert item.value == {"theme": "dark"}


def test_pool_size_per_loop():
    assert pool_size_per_loop(150, 10) == 15
    assert pool_size_per_loop(150, 1) == 150
    assert pool_size_per_loop(5, 10) == 2


# ---- scale -------------------------------------------------------------------------------------


async def test_thread_search_stays_fast_at_100k_threads(storage, uri):
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute(
            """
            INSERT INTO threads (thread_id, created_at, updated_at, state_updated_at, metadata,
                                 status, "values")
            SELECT gen_random_uuid()::text, now() - g * interval '1 second',
                   now() - g * interval '1 second', now() - g * interval '1 second',
                   jsonb_build_object('user', 'u' || (g % 1000), 'tier', g % 3),
                   (ARRAY['idle', 'busy', 'interrupted', 'error'])[1 + g % 4],
                   jsonb_build_object('step', g % 50)
            FROM generate_series(1, 100000) AS g
            """
        )
        await conn.execute("ANALYZE threads")

    queries = [
        ThreadQuery(limit=10),
        ThreadQuery(metadata={"user": "u42"}, limit=10),
        ThreadQuery(metadata={"user": "u42", "tier": 0}, status="interrupted", limit=10),
        ThreadQuery(values={"step": 7}, sort_by="updated_at", sort_order="asc", limit=10),
        ThreadQuery(status="busy", limit=10, offset=5000),
    ]
    for q in queries:
        await storage.thread_search(q)  # warm up (prepare)
        t0 = time.monotonic()
        rows, total = await storage.thread_search(q)
        elapsed = time.monotonic() - t0
        assert len(rows) == 10 and total >= 10
        assert elapsed < 0.5, f"{q} took {elapsed:.3f}s"
    rows, total = await storage.thread_search(ThreadQuery(metadata={"user": "u42"}, limit=200))
    assert total == 100 and len(rows) == 100
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
