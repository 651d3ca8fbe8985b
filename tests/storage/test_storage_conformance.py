"""The storage conformance suite: every implementation of `agentserver.storage.base.Storage`
passes this one module. Run one backend with `-k embedded` or `-k postgres`.

Conventions the suite pins down (beyond base.py's docstrings):
  * records carry the wire fields plus the internals named in base.py; timestamps are
    timezone-aware UTC datetimes;
  * metadata / values filters follow Postgres `@>` (JSON containment) semantics;
  * thread `ttl` is None or {"strategy": "delete" | "keep_latest", "ttl": minutes}; the TTL clock
    restarts whenever the thread is written (update, state, run created or finished);
    `thread_expired` never returns a busy thread;
  * `run_create` adds graph_id (from the run's `kwargs.config.configurable` or the `thread`
    fields) and assistant_id to the thread's metadata;
  * a `reject` run on a busy thread raises Conflict and stores nothing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from agentserver.errors import Conflict, NotFound
from agentserver.storage.base import AssistantQuery, RunEnd, Storage, ThreadQuery
from agentserver.utils import now, uuid7

LONG = 60.0  # a lease that never expires during a test
SHORT = 0.05  # a lease that expires after EXPIRE seconds
EXPIRE = 0.25


# ---- fixtures ------------------------------------------------------------------------------
class Backend:
    """Opens storages on one location (a directory, a database) and closes them at the end."""

    def __init__(self) -> None:
        self.factory: Any = None
        self.opened: list[Storage] = []
        self.closed: set[int] = set()

    async def open(self) -> Storage:
        storage = self.factory()
        await storage.setup()
        self.opened.append(storage)
        return storage

    async def close(self, storage: Storage) -> None:
        if id(storage) not in self.closed:
            self.closed.add(id(storage))
            await storage.close()

    async def close_all(self) -> None:
        for storage in reversed(self.opened):
            await self.close(storage)


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture(params=["embedded", "postgres"])
async def storage(request, tmp_path, backend: Backend):
    if request.param == "embedded":
        from agentserver.storage.sqlite import EmbeddedStorage

        path = tmp_path / "agentserver"
        backend.factory = lambda: EmbeddedStorage(path)
    else:
        from agentserver.storage.postgres import PostgresStorage

        server = request.getfixturevalue("postgres_server")
        uri = server.create_database(f"conformance_{uuid.uuid4().hex[:20]}")
        backend.factory = lambda: PostgresStorage(uri, pool_max_size=10)
    storage = await backend.open()
    try:
        yield storage
    finally:
        await backend.close_all()


# ---- helpers -------------------------------------------------------------------------------
def assistant_rec(**kw: Any) -> dict:
    return {
        "assistant_id": str(uuid.uuid4()),
        "graph_id": "agent",
        "config": {"configurable": {"model": "m"}},
        "context": {"lang": "en"},
        "metadata": {},
        "name": "assistant",
        "description": None,
        **kw,
    }


def thread_rec(**kw: Any) -> dict:
    return {
        "thread_id": uuid7(),
        "metadata": {},
        "config": {},
        "status": "idle",
        "values": None,
        "interrupts": {},
        "ttl": None,
        **kw,
    }


def run_rec(thread_id: str, *, created_at: datetime | None = None, delay: float = 0.0, **kw: Any) -> dict:
    created = created_at or now()
    run_id = kw.pop("run_id", None) or uuid7()
    return {
        "run_id": run_id,
        "thread_id": thread_id,
        "assistant_id": "asst-1",
        "metadata": {"m": 1},
        "status": "pending",
        "kwargs": {
            "input": {"x": 1},
            "config": {"configurable": {"graph_id": "agent", "assistant_id": "asst-1", "run_id": run_id}},
            "stream_mode": ["values"],
        },
        "multitask_strategy": kw.pop("multitask_strategy", "enqueue"),
        "created_at": created,
        "updated_at": created,
        "attempt": 0,
        "available_at": created + timedelta(seconds=delay),
        **kw,
    }


async def add_run(
    storage: Storage,
    thread_id: str,
    *,
    strategy: str = "enqueue",
    if_not_exists: str = "reject",
    **kw: Any,
):
    run = run_rec(thread_id, multitask_strategy=strategy, **kw)
    thread = thread_rec(thread_id=thread_id, status="busy", metadata={"graph_id": "agent", "assistant_id": "asst-1"})
    return await storage.run_create(run, thread=thread, if_not_exists=if_not_exists, multitask_strategy=strategy)


async def new_thread(storage: Storage, **kw: Any) -> dict:
    return await storage.thread_create(thread_rec(**kw))


def assert_utc(value: Any) -> None:
    assert isinstance(value, datetime), value
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


def ids(records: list[dict], key: str) -> list[str]:
    return [r[key] for r in records]


def close_to(a: datetime, b: datetime, tol: float = 0.002) -> bool:
    return abs((a - b).total_seconds()) <= tol


# ---- assistants ----------------------------------------------------------------------------
async def test_assistant_create_get_delete(storage: Storage):
    rec = assistant_rec(metadata={"owner": "me"}, description="d")
    created = await storage.assistant_create(rec)
    for key in ("assistant_id", "graph_id", "config", "context", "metadata", "name", "description"):
        assert created[key] == rec[key]
    assert created["version"] == 1
    assert_utc(created["created_at"])
    assert_utc(created["updated_at"])
    assert await storage.assistant_get(rec["assistant_id"]) == created

    with pytest.raises(Conflict):
        await storage.assistant_create(assistant_rec(assistant_id=rec["assistant_id"], name="other"))
    same = await storage.assistant_create(
        assistant_rec(assistant_id=rec["assistant_id"], name="other"), if_exists="do_nothing"
    )
    assert same == created

    assert await storage.assistant_get(str(uuid.uuid4())) is None
    assert await storage.assistant_delete(rec["assistant_id"]) is True
    assert await storage.assistant_get(rec["assistant_id"]) is None
    assert await storage.assistant_delete(rec["assistant_id"]) is False
    assert await storage.assistant_versions(rec["assistant_id"], metadata=None, limit=10, offset=0) == []


async def test_assistant_versions_and_set_latest(storage: Storage):
    rec = assistant_rec(metadata={"a": 1, "keep": True}, name="v1")
    first = await storage.assistant_create(rec)
    aid = rec["assistant_id"]

    second = await storage.assistant_update(aid, {"name": "v2", "metadata": {"b": 2}, "config": {"configurable": {"model": "n"}}})
    assert second["version"] == 2
    assert second["name"] == "v2"
    assert second["metadata"] == {"a": 1, "keep": True, "b": 2}  # merged
    assert second["config"] == {"configurable": {"model": "n"}}
    assert second["context"] == rec["context"]  # untouched
    assert second["graph_id"] == "agent"
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] >= first["updated_at"]
    assert await storage.assistant_get(aid) == second

    third = await storage.assistant_update(aid, {"description": "third", "metadata": {"a": 3}})
    assert third["version"] == 3
    assert third["name"] == "v2" and third["description"] == "third"
    assert third["metadata"] == {"a": 3, "keep": True, "b": 2}

    versions = await storage.assistant_versions(aid, metadata=None, limit=10, offset=0)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["name"] for v in versions] == ["v2", "v2", "v1"]
    for v in versions:
        assert v["assistant_id"] == aid and v["graph_id"] == "agent"
        assert_utc(v["created_at"])
    assert versions[2]["metadata"] == {"a": 1, "keep": True}
    assert [v["version"] for v in await storage.assistant_versions(aid, metadata=None, limit=1, offset=1)] == [2]
    filtered = await storage.assistant_versions(aid, metadata={"b": 2}, limit=10, offset=0)
    assert [v["version"] for v in filtered] == [3, 2]
    assert await storage.assistant_versions(aid, metadata={"a": 3}, limit=10, offset=0) == [versions[0]]

    latest = await storage.assistant_set_latest(aid, 1)
    assert latest["version"] == 1 and latest["name"] == "v1"
    assert latest["metadata"] == {"a": 1, "keep": True}
    assert (await storage.assistant_get(aid))["version"] == 1
    # a new version after switching back still takes max + 1
    fourth = await storage.assistant_update(aid, {"name": "v4"})
    assert fourth["version"] == 4
    assert fourth["metadata"] == {"a": 1, "keep": True}  # based on the current (version 1)

    with pytest.raises(NotFound):
        await storage.assistant_set_latest(aid, 99)
    with pytest.raises(NotFound):
        await storage.assistant_set_latest(str(uuid.uuid4()), 1)
    with pytest.raises(NotFound):
        await storage.assistant_update(str(uuid.uuid4()), {"name": "x"})


async def test_assistant_search(storage: Storage):
    a = await storage.assistant_create(assistant_rec(name="alpha bot", graph_id="g1", metadata={"team": "x", "level": 1, "flags": {"beta": True, "tier": "gold"}, "tags": ["a", "b"]}))
    b = await storage.assistant_create(assistant_rec(name="beta", graph_id="g1", metadata={"team": "y", "level": True}))
    c = await storage.assistant_create(assistant_rec(name="gamma bot", graph_id="g2", metadata={"team": "x", "level": None, "flags": {"beta": False}}))

    page, total = await storage.assistant_search(AssistantQuery(limit=10))
    assert total == 3
    assert ids(page, "assistant_id") == [c["assistant_id"], b["assistant_id"], a["assistant_id"]]  # created_at desc

    page, total = await storage.assistant_search(AssistantQuery(graph_id="g1"))
    assert total == 2 and set(ids(page, "assistant_id")) == {a["assistant_id"], b["assistant_id"]}

    page, total = await storage.assistant_search(AssistantQuery(name="BOT"))  # substring, any case
    assert total == 2 and set(ids(page, "name")) == {"alpha bot", "gamma bot"}
    page, total = await storage.assistant_search(AssistantQuery(name="%"))  # literal, not a wildcard
    assert total == 0 and page == []

    async def meta(filt: dict) -> set[str]:
        page, total = await storage.assistant_search(AssistantQuery(metadata=filt, limit=100))
        assert total == len(page)
        return set(ids(page, "name"))

    assert await meta({"team": "x"}) == {"alpha bot", "gamma bot"}
    assert await meta({"team": "x", "level": 1}) == {"alpha bot"}
    assert await meta({"level": True}) == {"beta"}  # true is not 1
    assert await meta({"level": 1.0}) == {"alpha bot"}
    assert await meta({"level": None}) == {"gamma bot"}  # present and null
    assert await meta({"flags": {"beta": True}}) == {"alpha bot"}  # nested containment
    assert await meta({"flags": {}}) == {"alpha bot", "gamma bot"}
    assert await meta({"tags": ["b"]}) == {"alpha bot"}  # array containment
    assert await meta({"tags": ["b", "z"]}) == set()
    assert await meta({"missing": "x"}) == set()
    assert await meta({"team": "x", "flags": {"tier": "gold"}}) == {"alpha bot"}

    page, _ = await storage.assistant_search(AssistantQuery(sort_by="name", sort_order="asc"))
    assert ids(page, "name") == ["alpha bot", "beta", "gamma bot"]
    page, _ = await storage.assistant_search(AssistantQuery(sort_by="name", sort_order="desc"))
    assert ids(page, "name") == ["gamma bot", "beta", "alpha bot"]
    page, _ = await storage.assistant_search(AssistantQuery(sort_by="graph_id", sort_order="desc"))
    assert ids(page, "graph_id")[0] == "g2"
    page, _ = await storage.assistant_search(AssistantQuery(sort_by="created_at", sort_order="asc"))
    assert ids(page, "assistant_id") == [a["assistant_id"], b["assistant_id"], c["assistant_id"]]
    page, _ = await storage.assistant_search(AssistantQuery(sort_by="assistant_id", sort_order="asc"))
    assert ids(page, "assistant_id") == sorted(ids(page, "assistant_id"))

    await storage.assistant_update(a["assistant_id"], {"description": "touched"})
    page, _ = await storage.assistant_search(AssistantQuery(sort_by="updated_at", sort_order="desc", limit=1))
    assert ids(page, "assistant_id") == [a["assistant_id"]]

    page, total = await storage.assistant_search(AssistantQuery(sort_by="created_at", sort_order="asc", limit=2, offset=1))
    assert total == 3
    assert ids(page, "assistant_id") == [b["assistant_id"], c["assistant_id"]]
    page, total = await storage.assistant_search(AssistantQuery(limit=2, offset=5))
    assert page == [] and total == 3


# ---- threads -------------------------------------------------------------------------------
async def test_thread_create_get_update_delete(storage: Storage):
    rec = thread_rec(metadata={"owner": "me", "n": 1}, config={"configurable": {"k": "v"}})
    created = await storage.thread_create(rec)
    assert created["thread_id"] == rec["thread_id"]
    assert created["metadata"] == {"owner": "me", "n": 1}
    assert created["config"] == {"configurable": {"k": "v"}}
    assert created["status"] == "idle"
    assert created["values"] is None
    assert created["interrupts"] == {}
    assert created["ttl"] is None
    assert created.get("error") is None
    for key in ("created_at", "updated_at", "state_updated_at"):
        assert_utc(created[key])
    assert await storage.thread_get(rec["thread_id"]) == created

    with pytest.raises(Conflict):
        await storage.thread_create(thread_rec(thread_id=rec["thread_id"]))
    assert await storage.thread_create(thread_rec(thread_id=rec["thread_id"], metadata={"x": 1}), if_exists="do_nothing") == created

    updated = await storage.thread_update(rec["thread_id"], metadata={"n": 2, "extra": True})
    assert updated["metadata"] == {"owner": "me", "n": 2, "extra": True}
    assert updated["updated_at"] > created["updated_at"]
    assert updated["created_at"] == created["created_at"]
    with pytest.raises(NotFound):
        await storage.thread_update(uuid7(), metadata={"a": 1})

    await storage.thread_set_state(rec["thread_id"], values={"messages": [1, 2]}, interrupts={"task": [{"value": "q", "id": "i1"}]}, status="interrupted")
    state = await storage.thread_get(rec["thread_id"])
    assert state["values"] == {"messages": [1, 2]}
    assert state["interrupts"] == {"task": [{"value": "q", "id": "i1"}]}
    assert state["status"] == "interrupted"
    assert state["state_updated_at"] > created["state_updated_at"]
    await storage.thread_set_state(rec["thread_id"], values={"messages": []}, interrupts={})
    state = await storage.thread_get(rec["thread_id"])
    assert state["status"] == "interrupted"  # status None: unchanged
    assert state["values"] == {"messages": []} and state["interrupts"] == {}

    run = (await add_run(storage, rec["thread_id"])).run
    assert await storage.thread_delete(rec["thread_id"]) is True
    assert await storage.thread_get(rec["thread_id"]) is None
    assert await storage.run_get(run["run_id"]) is None
    assert await storage.run_inflight() == []
    assert await storage.thread_delete(rec["thread_id"]) is False
    assert await storage.thread_get(uuid7()) is None


async def test_thread_search(storage: Storage):
    t1 = await new_thread(storage, metadata={"user": "u1", "kind": "chat", "n": 1})
    t2 = await new_thread(storage, metadata={"user": "u2", "kind": "chat", "nested": {"a": {"b": [1, 2]}}})
    t3 = await new_thread(storage, metadata={"user": "u1", "kind": "job"}, status="error")
    await storage.thread_set_state(t1["thread_id"], values={"topic": "cats", "count": 3, "messages": [{"type": "human", "content": "hi"}]}, interrupts={})
    await storage.thread_set_state(t2["thread_id"], values={"topic": "dogs", "count": 3, "done": False}, interrupts={}, status="interrupted")

    async def search(**kw: Any) -> tuple[list[str], int]:
        page, total = await storage.thread_search(ThreadQuery(**{"limit": 100, **kw}))
        return ids(page, "thread_id"), total

    everything, total = await search()
    assert total == 3
    assert everything == [t3["thread_id"], t2["thread_id"], t1["thread_id"]]  # created_at desc

    assert set((await search(metadata={"user": "u1"}))[0]) == {t1["thread_id"], t3["thread_id"]}
    assert (await search(metadata={"user": "u1", "kind": "job"}))[0] == [t3["thread_id"]]
    assert (await search(metadata={"nested": {"a": {"b": [2]}}}))[0] == [t2["thread_id"]]
    assert (await search(metadata={"n": "1"}))[0] == []  # a string is not a number
    assert (await search(values={"topic": "cats"}))[0] == [t1["thread_id"]]
    assert set((await search(values={"count": 3}))[0]) == {t1["thread_id"], t2["thread_id"]}
    assert (await search(values={"done": False}))[0] == [t2["thread_id"]]
    assert (await search(values={"messages": [{"content": "hi"}]}))[0] == [t1["thread_id"]]
    assert (await search(values={"topic": "cats", "count": 4}))[0] == []
    assert (await search(status="interrupted"))[0] == [t2["thread_id"]]
    assert (await search(status="error"))[0] == [t3["thread_id"]]
    assert (await search(status="busy")) == ([], 0)
    assert set((await search(ids=[t1["thread_id"], t3["thread_id"], uuid7()]))[0]) == {t1["thread_id"], t3["thread_id"]}
    assert (await search(ids=[]))[0] == []
    assert (await search(ids=[t1["thread_id"], t2["thread_id"]], metadata={"user": "u2"}))[0] == [t2["thread_id"]]
    assert (await search(metadata={"kind": "chat"}, status="idle")) == ([t1["thread_id"]], 1)

    # sorting
    assert (await search(sort_by="created_at", sort_order="asc"))[0] == [t1["thread_id"], t2["thread_id"], t3["thread_id"]]
    assert (await search(sort_by="thread_id", sort_order="asc"))[0] == sorted(everything)
    assert (await search(sort_by="thread_id", sort_order="desc"))[0] == sorted(everything, reverse=True)
    assert (await search(sort_by="updated_at", sort_order="desc"))[0][0] == t2["thread_id"]
    await storage.thread_update(t3["thread_id"], metadata={"touched": True})
    assert (await search(sort_by="updated_at", sort_order="desc"))[0][0] == t3["thread_id"]
    assert (await search(sort_by="state_updated_at", sort_order="desc"))[0][0] == t2["thread_id"]
    by_status, _ = await search(sort_by="status", sort_order="asc")
    assert by_status == [t3["thread_id"], t1["thread_id"], t2["thread_id"]]  # error < idle < interrupted

    # pagination: total counts every match, not the page
    page, total = await storage.thread_search(ThreadQuery(limit=2, offset=0, sort_by="created_at", sort_order="asc"))
    assert total == 3 and ids(page, "thread_id") == [t1["thread_id"], t2["thread_id"]]
    page, total = await storage.thread_search(ThreadQuery(limit=2, offset=2, sort_by="created_at", sort_order="asc"))
    assert total == 3 and ids(page, "thread_id") == [t3["thread_id"]]
    page, total = await storage.thread_search(ThreadQuery(limit=1, metadata={"user": "u1"}))
    assert total == 2 and len(page) == 1
    for rec in page:
        assert_utc(rec["created_at"])


def contains(doc: Any, filt: Any) -> bool:
    """Reference JSON containment (Postgres `@>` for object filters): objects need every key
    with a contained value; arrays need every element contained in some element; scalars are
    equal, numbers numerically, booleans never equal to numbers."""
    if isinstance(filt, dict):
        return isinstance(doc, dict) and all(k in doc and contains(doc[k], v) for k, v in filt.items())
    if isinstance(filt, list):
        return isinstance(doc, list) and all(any(contains(d, f) for d in doc) for f in filt)
    if isinstance(filt, bool) or isinstance(doc, bool):
        return isinstance(doc, bool) and isinstance(filt, bool) and doc == filt
    if isinstance(filt, (int, float)):
        return isinstance(doc, (int, float)) and not isinstance(doc, bool) and doc == filt
    return doc == filt


# Values each metadata key takes (a key keeps one "shape": scalars, or objects, or arrays).
META_POOLS: dict[str, list[Any]] = {
    "user": ["u0", "u1", "u2", "U1", "", "u1 "],
    "k": [0, 1, 2, 1.0, 2.5, -0.0, "1", True, False, None, 2**40, 1e3, 1000],
    "flag": [True, False, None, 0, 1, "true"],
    "graph_id": ["agent", "other"],
    'we"ird\\key': ["x", 1, None],
    "ü.key": ["é", "e\u0301", "line\nbreak"],
    "": ["empty", 0],
    "nested": [{"a": 1}, {"a": {"b": [1, 2]}}, {"a": 1.0, "c": None}, {}],
    "tags": [["a", "b"], ["c"], [], [1, "1", True]],
}
NESTED_FILTERS = [{"a": 1}, {"a": {}}, {"a": {"b": [2]}}, {"c": None}, {}, {"a": True}]
TAG_FILTERS = [["a"], ["a", "c"], [], ["1"], [1], [True], [1.0]]


def random_metadata(rnd: random.Random) -> dict[str, Any]:
    keys = rnd.sample(sorted(META_POOLS), rnd.randint(0, 6))
    return {k: rnd.choice(META_POOLS[k]) for k in keys}


def random_filter(rnd: random.Random, docs: list[dict]) -> dict[str, Any]:
    """Mostly parts of an existing document (so there are matches), with look-alike values."""
    base = rnd.choice(docs) if docs else {}
    filt: dict[str, Any] = {}
    for key in rnd.sample(sorted(META_POOLS), rnd.randint(1, 3)):
        if key == "nested":
            filt[key] = rnd.choice(NESTED_FILTERS)
        elif key == "tags":
            filt[key] = rnd.choice(TAG_FILTERS)
        elif key in base and rnd.random() < 0.7:
            filt[key] = base[key]
        else:
            filt[key] = rnd.choice(META_POOLS[key])
    return filt


async def test_thread_search_metadata_matches_containment(storage: Storage):
    """Randomised: every metadata filter (alone, with status, ids, sorting and pagination)
    returns exactly the threads a reference containment check selects, in order, with the
    right total, while threads are created, updated, run, copied and deleted."""
    rnd = random.Random(20240607)
    statuses = ["idle", "busy", "error", "interrupted"]
    for _ in range(40):
        await new_thread(storage, metadata=random_metadata(rnd), status=rnd.choice(statuses))
    everything, _ = await storage.thread_search(ThreadQuery(limit=1000))
    for rec in rnd.sample(everything, 12):  # merges change values, kinds and shapes
        await storage.thread_update(rec["thread_id"], metadata=random_metadata(rnd))
    for rec in rnd.sample(everything, 6):  # state changes move threads between statuses
        await storage.thread_set_state(rec["thread_id"], values={"v": 1}, interrupts={}, status=rnd.choice(statuses))
    for rec in rnd.sample(everything, 4):  # runs add graph_id / assistant_id
        await add_run(storage, rec["thread_id"])
    for rec in rnd.sample(everything, 3):
        await storage.thread_create(thread_rec(metadata=dict(rec["metadata"])))  # a copy
    for rec in rnd.sample(everything, 5):
        assert await storage.thread_delete(rec["thread_id"])
    await storage.thread_create(thread_rec(metadata={}))  # a run on a new thread: one insert
    await storage.run_create(
        run_rec(tid := uuid7()), thread=thread_rec(thread_id=tid, metadata={"user": "u1"}), if_not_exists="create"
    )

    threads, total = await storage.thread_search(ThreadQuery(limit=1000))
    assert total == len(threads)
    docs = [t["metadata"] for t in threads]
    sort_keys = ["created_at", "updated_at", "thread_id", "status"]

    def expected(filt: dict, status: str | None, pool: list[dict], sort_by: str, order: str) -> list[str]:
        hits = [t for t in pool if contains(t["metadata"], filt) and (status is None or t["status"] == status)]
        hits.sort(key=lambda t: (t[sort_by], t["thread_id"]), reverse=order == "desc")
        return [t["thread_id"] for t in hits]

    for i in range(150):
        filt = random_filter(rnd, docs)
        status = rnd.choice(statuses) if i % 3 == 0 else None
        sort_by, order = rnd.choice(sort_keys), rnd.choice(["asc", "desc"])
        pool = threads
        query_ids = None
        if i % 10 == 0:
            pool = rnd.sample(threads, 8)
            query_ids = [t["thread_id"] for t in pool] + [uuid7()]
        want = expected(filt, status, pool, sort_by, order)
        for limit, offset in [(1000, 0), (2, 0), (3, 1), (1, max(0, len(want) - 1)), (5, len(want) + 2)]:
            page, total = await storage.thread_search(
                ThreadQuery(ids=query_ids, metadata=filt, status=status, limit=limit, offset=offset, sort_by=sort_by, sort_order=order)
            )
            context = (filt, status, sort_by, order, limit, offset, query_ids is not None)
            if sort_by == "status":  # ties broken by thread_id: compare as a set per page
                assert set(ids(page, "thread_id")) <= set(want), context
            else:
                assert ids(page, "thread_id") == want[offset : offset + limit], context
            assert total == len(want), context


async def test_thread_search_universal_and_missing_terms(storage: Storage):
    """A term every thread matches filters nothing; a term no thread matches empties the
    result; both stay right as threads come and go."""
    made = [await new_thread(storage, metadata={"graph_id": "agent", "k": i % 3}) for i in range(6)]

    async def search(**kw: Any) -> tuple[list[str], int]:
        page, total = await storage.thread_search(ThreadQuery(**{"limit": 100, **kw}))
        return ids(page, "thread_id"), total

    k1 = [t["thread_id"] for t in reversed(made) if t["metadata"]["k"] == 1]
    assert await search(metadata={"graph_id": "agent", "k": 1}) == (k1, 2)
    assert await search(metadata={"graph_id": "agent"}) == ([t["thread_id"] for t in reversed(made)], 6)
    assert await search(metadata={"graph_id": "agent", "k": 7}) == ([], 0)
    assert await search(metadata={"graph_id": "other"}) == ([], 0)
    assert await search(metadata={"graph_id": "agent"}, status="busy") == ([], 0)
    assert (await search(metadata={"graph_id": "agent", "k": 1}, limit=1))[1] == 2

    odd = await new_thread(storage, metadata={"k": 1})  # no graph_id: the term filters again
    assert await search(metadata={"graph_id": "agent", "k": 1}) == (k1, 2)
    assert await search(metadata={"k": 1}) == ([odd["thread_id"], *k1], 3)
    await storage.thread_update(odd["thread_id"], metadata={"graph_id": "agent"})
    assert await search(metadata={"graph_id": "agent", "k": 1}) == ([odd["thread_id"], *k1], 3)
    await storage.thread_update(odd["thread_id"], metadata={"k": "1"})  # a string is not a number
    assert await search(metadata={"graph_id": "agent", "k": 1}) == (k1, 2)
    assert await search(metadata={"k": "1"}) == ([odd["thread_id"]], 1)
    for t in made:
        await storage.thread_delete(t["thread_id"])
    assert await search(metadata={"graph_id": "agent"}) == ([odd["thread_id"]], 1)
    assert await search(metadata={"k": 1}) == ([], 0)
    assert await search(status="idle") == ([odd["thread_id"]], 1)
    page, total = await storage.thread_search(ThreadQuery(metadata={"graph_id": "agent"}, limit=0))
    assert page == [] and total == 1
    page, total = await storage.thread_search(ThreadQuery(status="idle", limit=0))
    assert page == [] and total == 1


async def test_thread_ttl(storage: Storage):
    ttl_delete = {"strategy": "delete", "ttl": 1}
    t1 = await new_thread(storage, ttl=ttl_delete)
    t2 = await new_thread(storage, ttl={"strategy": "keep_latest", "ttl": 2})
    t3 = await new_thread(storage)
    assert t1["ttl"] == ttl_delete
    assert t3["ttl"] is None
    assert (await storage.thread_get(t2["thread_id"]))["ttl"] == {"strategy": "keep_latest", "ttl": 2}

    t0 = now()
    assert await storage.thread_expired(t0) == []
    assert await storage.thread_expired(t0 + timedelta(seconds=90)) == [(t1["thread_id"], "delete")]
    later = await storage.thread_expired(t0 + timedelta(minutes=5))
    assert sorted(later) == sorted([(t1["thread_id"], "delete"), (t2["thread_id"], "keep_latest")])
    assert len(await storage.thread_expired(t0 + timedelta(minutes=5), limit=1)) == 1

    # setting a TTL on an existing thread
    await storage.thread_update(t3["thread_id"], ttl={"strategy": "delete", "ttl": 0.5})
    assert (await storage.thread_get(t3["thread_id"]))["ttl"] == {"strategy": "delete", "ttl": 0.5}
    assert (t3["thread_id"], "delete") in await storage.thread_expired(t0 + timedelta(seconds=45))

    # the clock restarts when the thread is written; busy threads never expire
    short = await new_thread(storage, ttl={"strategy": "delete", "ttl": 0.005})  # 0.3 s
    await asyncio.sleep(0.4)
    assert (short["thread_id"], "delete") in await storage.thread_expired(now())
    await storage.thread_update(short["thread_id"], metadata={"touch": 1})
    assert (short["thread_id"], "delete") not in await storage.thread_expired(now())
    await asyncio.sleep(0.4)
    assert (short["thread_id"], "delete") in await storage.thread_expired(now())
    await add_run(storage, short["thread_id"])
    await asyncio.sleep(0.4)
    assert short["thread_id"] not in [t for t, _ in await storage.thread_expired(now() + timedelta(hours=1))]


# ---- runs: creation, multitask -------------------------------------------------------------
async def test_run_create_and_thread(storage: Storage):
    tid = uuid7()
    with pytest.raises(NotFound):
        await add_run(storage, tid)
    assert await storage.thread_get(tid) is None

    result = await add_run(storage, tid, if_not_exists="create")
    run = result.run
    assert result.to_cancel == []
    assert run["thread_id"] == tid and run["status"] == "pending"
    assert run["assistant_id"] == "asst-1"
    assert run["metadata"] == {"m": 1}
    assert run["kwargs"]["input"] == {"x": 1}
    assert run["multitask_strategy"] == "enqueue"
    assert run["attempt"] == 0
    for key in ("created_at", "updated_at", "available_at"):
        assert_utc(run[key])
    thread = await storage.thread_get(tid)
    assert thread["status"] == "busy"
    assert thread["metadata"]["graph_id"] == "agent"
    assert thread["metadata"]["assistant_id"] == "asst-1"
    assert await storage.run_get(run["run_id"]) == run
    assert await storage.run_get(run["run_id"], tid) == run
    assert await storage.run_get(run["run_id"], uuid7()) is None
    assert await storage.run_get(uuid7()) is None

    # an existing thread gains graph_id/assistant_id and keeps its metadata
    t2 = await new_thread(storage, metadata={"owner": "me"})
    await add_run(storage, t2["thread_id"])
    thread = await storage.thread_get(t2["thread_id"])
    assert thread["metadata"] == {"owner": "me", "graph_id": "agent", "assistant_id": "asst-1"}
    assert thread["status"] == "busy"

    with pytest.raises(Conflict):
        await add_run(storage, t2["thread_id"], run_id=run["run_id"])


@pytest.mark.parametrize("strategy", ["reject", "interrupt", "rollback", "enqueue"])
async def test_multitask_strategies(storage: Storage, strategy: str):
    t = await new_thread(storage)
    tid = t["thread_id"]
    # on an idle thread every strategy just inserts
    first = await add_run(storage, tid, strategy=strategy)
    assert first.to_cancel == []
    second_id = uuid7()
    if strategy == "reject":
        with pytest.raises(Conflict):
            await add_run(storage, tid, strategy=strategy, run_id=second_id)
        assert await storage.run_get(second_id) is None
        assert ids(await storage.run_inflight(thread_id=tid), "run_id") == [first.run["run_id"]]
        return
    # claim the first one so that one is running and one pending
    claimed = await storage.claim_runs("w1", 10, LONG, 3)
    assert ids([c.run for c in claimed], "run_id") == [first.run["run_id"]]
    mid = await add_run(storage, tid, strategy="enqueue")
    second = await add_run(storage, tid, strategy=strategy, run_id=second_id)
    assert second.run["status"] == "pending"
    assert second.run["multitask_strategy"] == strategy
    if strategy == "enqueue":
        assert second.to_cancel == []
    else:
        cancel = second.to_cancel
        assert ids(cancel, "run_id") == [first.run["run_id"], mid.run["run_id"]]
        assert [r["status"] for r in cancel] == ["running", "pending"]
    inflight = await storage.run_inflight(thread_id=tid)
    assert ids(inflight, "run_id") == [first.run["run_id"], mid.run["run_id"], second_id]
    assert (await storage.thread_get(tid))["status"] == "busy"


async def test_run_list_delete_inflight(storage: Storage):
    t = await new_thread(storage)
    tid = t["thread_id"]
    base = now() - timedelta(seconds=1)
    runs = [(await add_run(storage, tid, created_at=base + timedelta(milliseconds=i))).run for i in range(4)]
    other = (await add_run(storage, (await new_thread(storage))["thread_id"], created_at=base + timedelta(milliseconds=10))).run
    (claimed,) = await storage.claim_runs("w", 1, LONG, 3)
    assert claimed.run["run_id"] == runs[0]["run_id"]
    assert await storage.run_finish(runs[0]["run_id"], claimed.lease_id, RunEnd(status="success"))

    listed = await storage.run_list(tid, status=None, limit=10, offset=0)
    assert ids(listed, "run_id") == [r["run_id"] for r in reversed(runs)]  # newest first
    assert ids(await storage.run_list(tid, status=None, limit=2, offset=1), "run_id") == [runs[2]["run_id"], runs[1]["run_id"]]
    assert ids(await storage.run_list(tid, status="success", limit=10, offset=0), "run_id") == [runs[0]["run_id"]]
    assert ids(await storage.run_list(tid, status="pending", limit=10, offset=0), "run_id") == [r["run_id"] for r in reversed(runs[1:])]
    assert await storage.run_list(uuid7(), status=None, limit=10, offset=0) == []

    everything = await storage.run_inflight()
    assert ids(everything, "run_id") == [runs[1]["run_id"], runs[2]["run_id"], runs[3]["run_id"], other["run_id"]]
    assert ids(await storage.run_inflight(thread_id=tid), "run_id") == [r["run_id"] for r in runs[1:]]
    claimed2 = await storage.claim_runs("w", 10, LONG, 3)
    assert ids([c.run for c in claimed2], "run_id") == [runs[1]["run_id"], other["run_id"]]
    assert ids(await storage.run_inflight(status="running"), "run_id") == [runs[1]["run_id"], other["run_id"]]
    assert ids(await storage.run_inflight(status="pending"), "run_id") == [runs[2]["run_id"], runs[3]["run_id"]]
    assert ids(await storage.run_inflight(thread_id=tid, status="running"), "run_id") == [runs[1]["run_id"]]

    assert await storage.run_delete(runs[0]["run_id"], uuid7()) is False
    assert await storage.run_delete(runs[0]["run_id"], tid) is True
    assert await storage.run_get(runs[0]["run_id"]) is None
    assert await storage.run_delete(runs[0]["run_id"]) is False


# ---- the queue -----------------------------------------------------------------------------
async def test_claim_fifo_one_running_per_thread(storage: Storage):
    ta = (await new_thread(storage))["thread_id"]
    tb = (await new_thread(storage))["thread_id"]
    base = now() - timedelta(seconds=1)
    a = [(await add_run(storage, ta, created_at=base + timedelta(milliseconds=i * 10))).run for i in range(3)]
    b1 = (await add_run(storage, tb, created_at=base + timedelta(milliseconds=5))).run

    claimed = await storage.claim_runs("w1", 10, LONG, 3)
    assert ids([c.run for c in claimed], "run_id") == [a[0]["run_id"], b1["run_id"]]
    for c in claimed:
        assert c.attempt == 1
        assert c.run["status"] == "running"
        assert c.run["attempt"] == 1
        assert c.run["lease_id"] == c.lease_id
        assert c.run["lease_owner"] == "w1"
        assert_utc(c.run["lease_expires_at"])
        assert c.run["lease_expires_at"] > now() + timedelta(seconds=LONG - 5)
    assert claimed[0].lease_id != claimed[1].lease_id
    stored = await storage.run_get(a[0]["run_id"])
    assert stored["status"] == "running" and stored["lease_id"] == claimed[0].lease_id

    assert await storage.claim_runs("w2", 10, LONG, 3) == []  # a[1] waits for a[0]
    assert await storage.run_finish(a[0]["run_id"], claimed[0].lease_id, RunEnd(status="success"))
    assert (await storage.thread_get(ta))["status"] == "busy"  # a[1], a[2] still pending
    nxt = await storage.claim_runs("w2", 10, LONG, 3)
    assert ids([c.run for c in nxt], "run_id") == [a[1]["run_id"]]
    assert await storage.claim_runs("w2", 0, LONG, 3) == []


async def test_claim_limit_and_order(storage: Storage):
    base = now() - timedelta(seconds=1)
    expected = []
    for i in range(5):
        tid = (await new_thread(storage))["thread_id"]
        expected.append((await add_run(storage, tid, created_at=base + timedelta(milliseconds=(5 - i) * 10))).run["run_id"])
    expected.reverse()  # the last created thread has the oldest run
    first = await storage.claim_runs("w", 2, LONG, 3)
    second = await storage.claim_runs("w", 2, LONG, 3)
    third = await storage.claim_runs("w", 2, LONG, 3)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert ids([c.run for c in first + second + third], "run_id") == expected


async def test_claim_respects_available_at(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    assert await storage.next_wakeup() is None
    delayed = (await add_run(storage, tid, delay=0.3)).run
    assert await storage.claim_runs("w", 10, LONG, 3) == []
    wake = await storage.next_wakeup()
    assert wake is not None and close_to(wake, delayed["available_at"])
    # a delayed run at the head of its thread holds back the runs behind it (FIFO)
    behind = (await add_run(storage, tid)).run
    other_tid = (await new_thread(storage))["thread_id"]
    far = (await add_run(storage, other_tid, delay=3600)).run
    assert await storage.claim_runs("w", 10, LONG, 3) == []
    assert close_to(await storage.next_wakeup(), delayed["available_at"])
    await asyncio.sleep(0.4)
    claimed = await storage.claim_runs("w", 10, LONG, 3)
    assert ids([c.run for c in claimed], "run_id") == [delayed["run_id"]]
    assert close_to(await storage.next_wakeup(), far["available_at"])
    assert await storage.run_finish(delayed["run_id"], claimed[0].lease_id, RunEnd(status="success"))
    assert ids([c.run for c in await storage.claim_runs("w", 10, LONG, 3)], "run_id") == [behind["run_id"]]


async def test_expired_lease_is_reclaimed_and_fenced(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    run = (await add_run(storage, tid)).run
    (old,) = await storage.claim_runs("w1", 10, SHORT, 3)
    assert old.attempt == 1
    await asyncio.sleep(EXPIRE)
    (new,) = await storage.claim_runs("w2", 10, LONG, 3)
    assert new.run["run_id"] == run["run_id"]
    assert new.attempt == 2 and new.run["attempt"] == 2
    assert new.lease_id != old.lease_id
    assert new.run["lease_owner"] == "w2"

    # the stalled old worker can neither finish, requeue nor renew
    assert await storage.run_finish(run["run_id"], old.lease_id, RunEnd(status="success", values={"stale": True}, thread_status="idle")) is False
    assert await storage.run_requeue(run["run_id"], old.lease_id) is False
    assert await storage.renew_leases("w1", [old.lease_id], LONG) == {old.lease_id}
    stored = await storage.run_get(run["run_id"])
    assert stored["status"] == "running" and stored["lease_id"] == new.lease_id
    thread = await storage.thread_get(tid)
    assert thread["status"] == "busy" and thread["values"] is None

    assert await storage.renew_leases("w2", [new.lease_id], LONG) == set()
    assert await storage.run_finish(run["run_id"], new.lease_id, RunEnd(status="success", values={"ok": 1}))
    assert (await storage.thread_get(tid))["values"] == {"ok": 1}
    assert await storage.run_finish(run["run_id"], new.lease_id, RunEnd(status="error")) is False  # already ended
    assert (await storage.run_get(run["run_id"]))["status"] == "success"


async def test_live_lease_blocks_thread(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    first = (await add_run(storage, tid)).run
    (c1,) = await storage.claim_runs("w1", 10, LONG, 3)
    # an interrupt-strategy run is inserted behind the running one: it must wait
    second = await add_run(storage, tid, strategy="interrupt")
    assert ids(second.to_cancel, "run_id") == [first["run_id"]]
    assert await storage.claim_runs("w2", 10, LONG, 3) == []
    assert await storage.run_finish(first["run_id"], c1.lease_id, RunEnd(status="interrupted", thread_status="idle"))
    (c2,) = await storage.claim_runs("w2", 10, LONG, 3)
    assert c2.run["run_id"] == second.run["run_id"]

    # a run stamped earlier than the running one (clock skew between API servers) becomes
    # the oldest in flight, but must still wait for the live lease
    skewed = (await add_run(storage, tid, created_at=second.run["created_at"] - timedelta(seconds=1))).run
    assert await storage.claim_runs("w3", 10, LONG, 3) == []
    assert await storage.run_finish(second.run["run_id"], c2.lease_id, RunEnd(status="success", thread_status="idle"))
    (c3,) = await storage.claim_runs("w3", 10, LONG, 3)
    assert c3.run["run_id"] == skewed["run_id"]


async def test_max_attempts_and_fail_exhausted(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    base = now() - timedelta(seconds=1)
    doomed = (await add_run(storage, tid, created_at=base)).run
    after = (await add_run(storage, tid, created_at=base + timedelta(milliseconds=1))).run
    for attempt in (1, 2):
        (c,) = await storage.claim_runs("w", 10, SHORT, 2)
        assert c.run["run_id"] == doomed["run_id"] and c.attempt == attempt
        assert await storage.fail_exhausted(2) == []  # lease still live
        await asyncio.sleep(EXPIRE)
    assert await storage.claim_runs("w", 10, LONG, 2) == []  # exhausted, and it blocks its thread
    assert await storage.fail_exhausted(3) == []  # with more attempts allowed it is not exhausted
    failed = await storage.fail_exhausted(2)
    assert ids(failed, "run_id") == [doomed["run_id"]]
    assert failed[0]["status"] == "error"
    assert (await storage.run_get(doomed["run_id"]))["status"] == "error"
    assert await storage.fail_exhausted(2) == []
    assert (await storage.thread_get(tid))["status"] == "busy"  # `after` is pending
    (c,) = await storage.claim_runs("w", 10, LONG, 2)
    assert c.run["run_id"] == after["run_id"] and c.attempt == 1

    # alone on its thread, an exhausted run leaves the thread in error
    t2 = (await new_thread(storage))["thread_id"]
    lone = (await add_run(storage, t2)).run
    (c,) = await storage.claim_runs("w", 10, SHORT, 1)
    assert c.run["run_id"] == lone["run_id"]
    await asyncio.sleep(EXPIRE)
    assert ids(await storage.fail_exhausted(1), "run_id") == [lone["run_id"]]
    assert (await storage.thread_get(t2))["status"] == "error"


async def test_renew_leases(storage: Storage):
    t1 = (await new_thread(storage))["thread_id"]
    t2 = (await new_thread(storage))["thread_id"]
    r1 = (await add_run(storage, t1)).run
    await add_run(storage, t2)
    c1 = (await storage.claim_runs("w1", 1, 0.4, 3))[0]
    c2 = (await storage.claim_runs("w2", 1, 0.4, 3))[0]
    assert c1.run["run_id"] == r1["run_id"]
    unknown = uuid7()
    lost = await storage.renew_leases("w1", [c1.lease_id, c2.lease_id, unknown], LONG)
    assert lost == {c2.lease_id, unknown}  # w2's lease is not w1's to renew
    assert await storage.renew_leases("w1", [], LONG) == set()
    await asyncio.sleep(0.6)
    reclaimed = await storage.claim_runs("w3", 10, LONG, 3)
    assert ids([c.run for c in reclaimed], "run_id") == [c2.run["run_id"]]  # only the unrenewed one
    assert (await storage.run_get(r1["run_id"]))["lease_expires_at"] > now() + timedelta(seconds=LONG - 5)
    assert await storage.renew_leases("w2", [c2.lease_id], LONG) == {c2.lease_id}


async def test_run_finish_thread_status(storage: Storage):
    async def one_run(end: RunEnd, **thread_kw: Any) -> tuple[str, str]:
        tid = (await new_thread(storage, **thread_kw))["thread_id"]
        run = (await add_run(storage, tid)).run
        (c,) = [c for c in await storage.claim_runs("w", 10, LONG, 3) if c.run["run_id"] == run["run_id"]]
        assert await storage.run_finish(run["run_id"], c.lease_id, end) is True
        return tid, run["run_id"]

    tid, rid = await one_run(RunEnd(status="success", values={"v": 1}, interrupts={}, thread_status="idle"))
    thread = await storage.thread_get(tid)
    assert thread["status"] == "idle" and thread["values"] == {"v": 1} and thread["interrupts"] == {}
    assert thread.get("error") is None
    run = await storage.run_get(rid)
    assert run["status"] == "success" and run["updated_at"] >= run["created_at"]

    intr = {"t1": [{"value": "approve?", "id": "i1"}]}
    tid, rid = await one_run(RunEnd(status="success", values={"v": 2}, interrupts=intr, thread_status="interrupted"))
    thread = await storage.thread_get(tid)
    assert thread["status"] == "interrupted" and thread["interrupts"] == intr and thread["values"] == {"v": 2}

    err = {"error": "ValueError", "message": "boom"}
    tid, rid = await one_run(RunEnd(status="error", thread_status="error", error=err))
    thread = await storage.thread_get(tid)
    assert thread["status"] == "error" and thread["error"] == err
    assert (await storage.run_get(rid))["status"] == "error"

    tid, rid = await one_run(RunEnd(status="timeout", thread_status="error", error={"error": "TimeoutError", "message": "t"}))
    assert (await storage.run_get(rid))["status"] == "timeout"

    # values None leaves the thread's values alone
    tid, rid = await one_run(RunEnd(status="interrupted", thread_status="idle"))
    await storage.thread_set_state(tid, values={"keep": 1}, interrupts={})
    thread_before = await storage.thread_get(tid)
    run2 = (await add_run(storage, tid)).run
    (c,) = [c for c in await storage.claim_runs("w", 10, LONG, 3) if c.run["run_id"] == run2["run_id"]]
    assert await storage.run_finish(run2["run_id"], c.lease_id, RunEnd(status="interrupted", thread_status="idle"))
    thread = await storage.thread_get(tid)
    assert thread["values"] == {"keep": 1} and thread["status"] == "idle"
    assert thread["state_updated_at"] == thread_before["state_updated_at"]

    # rollback deletes the run
    tid, rid = await one_run(RunEnd(status="interrupted", thread_status="idle", delete_run=True))
    assert await storage.run_get(rid) is None
    assert (await storage.thread_get(tid))["status"] == "idle"


async def test_run_finish_busy_while_another_run_in_flight(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    first = (await add_run(storage, tid)).run
    (c,) = await storage.claim_runs("w", 10, LONG, 3)
    second = (await add_run(storage, tid)).run
    assert await storage.run_finish(first["run_id"], c.lease_id, RunEnd(status="error", thread_status="error", error={"error": "E", "message": "m"}, values={"v": 1}))
    thread = await storage.thread_get(tid)
    assert thread["status"] == "busy" and thread["values"] == {"v": 1}
    (c2,) = await storage.claim_runs("w", 10, LONG, 3)
    assert c2.run["run_id"] == second["run_id"]
    assert await storage.run_finish(second["run_id"], c2.lease_id, RunEnd(status="success", thread_status="idle"))
    assert (await storage.thread_get(tid))["status"] == "idle"


async def test_cancel_pending_run_without_lease(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    base = now() - timedelta(seconds=1)
    running = (await add_run(storage, tid, created_at=base)).run
    pending = (await add_run(storage, tid, created_at=base + timedelta(milliseconds=1))).run
    (c,) = await storage.claim_runs("w", 10, LONG, 3)
    assert await storage.run_finish(running["run_id"], None, RunEnd(status="interrupted")) is False  # it is running
    assert await storage.run_finish(pending["run_id"], None, RunEnd(status="interrupted", thread_status="idle")) is True
    assert (await storage.run_get(pending["run_id"]))["status"] == "interrupted"
    assert (await storage.thread_get(tid))["status"] == "busy"
    assert await storage.run_finish(pending["run_id"], None, RunEnd(status="interrupted")) is False  # already ended
    assert await storage.run_finish(running["run_id"], c.lease_id, RunEnd(status="success", thread_status="idle"))
    assert (await storage.thread_get(tid))["status"] == "idle"

    # a pending run cancelled with rollback disappears
    lone = (await add_run(storage, tid)).run
    assert await storage.run_finish(lone["run_id"], None, RunEnd(status="interrupted", thread_status="idle", delete_run=True))
    assert await storage.run_get(lone["run_id"]) is None
    assert (await storage.thread_get(tid))["status"] == "idle"
    assert await storage.run_finish(uuid7(), None, RunEnd(status="interrupted")) is False


async def test_requeue(storage: Storage):
    tid = (await new_thread(storage))["thread_id"]
    run = (await add_run(storage, tid)).run
    (c,) = await storage.claim_runs("w1", 10, LONG, 3)
    assert await storage.run_requeue(run["run_id"], "not-my-lease") is False
    assert await storage.run_requeue(run["run_id"], c.lease_id) is True
    stored = await storage.run_get(run["run_id"])
    assert stored["status"] == "pending" and stored["attempt"] == 1 and stored["lease_id"] is None
    assert (await storage.thread_get(tid))["status"] == "busy"
    assert await storage.renew_leases("w1", [c.lease_id], LONG) == {c.lease_id}
    assert await storage.run_finish(run["run_id"], c.lease_id, RunEnd(status="success")) is False

    (c2,) = await storage.claim_runs("w2", 10, LONG, 3)
    assert c2.run["run_id"] == run["run_id"] and c2.attempt == 2
    assert await storage.run_requeue(run["run_id"], c2.lease_id, delay_secs=3600) is True
    assert await storage.claim_runs("w2", 10, LONG, 3) == []
    wake = await storage.next_wakeup()
    assert wake is not None and now() + timedelta(seconds=3590) < wake < now() + timedelta(seconds=3610)
    assert close_to((await storage.run_get(run["run_id"]))["available_at"], wake)


async def test_concurrent_claimers_never_double_claim(storage: Storage):
    n_threads, per_thread = 12, 4
    base = now() - timedelta(seconds=5)
    order: dict[str, list[str]] = {}
    k = 0
    for _ in range(n_threads):
        tid = (await new_thread(storage))["thread_id"]
        order[tid] = []
        for _ in range(per_thread):
            run = (await add_run(storage, tid, created_at=base + timedelta(milliseconds=k))).run
            order[tid].append(run["run_id"])
            k += 1
    total = n_threads * per_thread
    claimed_ids: list[str] = []
    claims_per_thread: dict[str, list[str]] = {tid: [] for tid in order}
    running: set[str] = set()
    done = asyncio.Event()
    errors: list[str] = []

    async def worker(name: str) -> None:
        rng = random.Random(name)
        while not done.is_set():
            claimed = await storage.claim_runs(name, rng.randint(1, 4), LONG, 3)
            for c in claimed:
                tid = c.run["thread_id"]
                if tid in running:
                    errors.append(f"thread {tid} has two running runs")
                running.add(tid)
                claimed_ids.append(c.run["run_id"])
                claims_per_thread[tid].append(c.run["run_id"])
            for c in claimed:
                await asyncio.sleep(0)
                running.discard(c.run["thread_id"])
                assert await storage.run_finish(c.run["run_id"], c.lease_id, RunEnd(status="success", values={"by": name}))
            if len(claimed_ids) >= total:
                done.set()
            elif not claimed:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(*(worker(f"w{i}") for i in range(6))), 60)
    assert errors == []
    assert len(claimed_ids) == total and len(set(claimed_ids)) == total
    assert claims_per_thread == order  # per-thread FIFO
    assert await storage.run_inflight() == []
    for tid in order:
        assert (await storage.thread_get(tid))["status"] == "idle"


# ---- durability, checkpointer, store -------------------------------------------------------
async def test_survives_reopen(storage: Storage, backend: Backend):
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    class State(TypedDict):
        n: int

    builder = StateGraph(State)
    builder.add_node("inc", lambda s: {"n": s["n"] + 1})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", END)
    graph = builder.compile(checkpointer=storage.checkpointer)

    assistant = await storage.assistant_create(assistant_rec(metadata={"k": "v"}))
    await storage.assistant_update(assistant["assistant_id"], {"name": "second"})
    thread = await new_thread(storage, metadata={"user": "u"}, ttl={"strategy": "delete", "ttl": 10})
    tid = thread["thread_id"]
    await storage.thread_set_state(tid, values={"n": 2}, interrupts={})
    done = (await add_run(storage, tid)).run
    (c,) = await storage.claim_runs("w", 1, LONG, 3)
    assert await storage.run_finish(done["run_id"], c.lease_id, RunEnd(status="success", values={"n": 2}))
    pending = (await add_run(storage, tid)).run
    config = {"configurable": {"thread_id": tid}}
    assert (await graph.ainvoke({"n": 1}, config)) == {"n": 2}
    await storage.store.aput(("users", "u"), "prefs", {"color": "blue"})
    await storage.checkpoint_barrier()
    before = {
        "assistant": await storage.assistant_get(assistant["assistant_id"]),
        "versions": await storage.assistant_versions(assistant["assistant_id"], metadata=None, limit=10, offset=0),
        "thread": await storage.thread_get(tid),
        "done": await storage.run_get(done["run_id"]),
        "pending": await storage.run_get(pending["run_id"]),
    }
    await backend.close(storage)

    again = await backend.open()
    after = {
        "assistant": await again.assistant_get(assistant["assistant_id"]),
        "versions": await again.assistant_versions(assistant["assistant_id"], metadata=None, limit=10, offset=0),
        "thread": await again.thread_get(tid),
        "done": await again.run_get(done["run_id"]),
        "pending": await again.run_get(pending["run_id"]),
    }
    assert after == before
    assert (await again.thread_search(ThreadQuery()))[1] == 1
    assert (await again.assistant_search(AssistantQuery()))[1] == 1
    item = await again.store.aget(("users", "u"), "prefs")
    assert item is not None and item.value == {"color": "blue"}
    latest = await again.checkpointer.aget_tuple(config)
    assert latest is not None and latest.checkpoint["channel_values"]["n"] == 2
    history = [t async for t in again.checkpointer.alist(config)]
    assert len(history) >= 2
    (c2,) = await again.claim_runs("w", 1, LONG, 3)
    assert c2.run["run_id"] == pending["run_id"]


# ---- the rules of agentserver.storage.rules, the same on every backend ---------------------
async def test_rule_reject_message(storage: Storage):
    from agentserver.storage import rules

    tid = (await new_thread(storage))["thread_id"]
    await add_run(storage, tid)
    with pytest.raises(Conflict) as info:
        await add_run(storage, tid, strategy="reject")
    assert info.value.detail == rules.REJECT_MESSAGE


async def test_rule_thread_graph_metadata(storage: Storage):
    from agentserver.storage import rules

    # the run's graph_id (from its configurable) and assistant_id win over the thread's
    t = await new_thread(storage, metadata={"graph_id": "old", "assistant_id": "old-asst", "k": 1})
    run = run_rec(t["thread_id"])
    await storage.run_create(run, thread=t, multitask_strategy="enqueue")
    expected = rules.thread_graph_metadata(run, t)
    assert expected == {"graph_id": "agent", "assistant_id": "asst-1"}
    assert (await storage.thread_get(t["thread_id"]))["metadata"] == {"k": 1, **expected}

    # a run without a graph_id of its own keeps the one the thread has
    t2 = await new_thread(storage, metadata={"graph_id": "kept"})
    run2 = run_rec(t2["thread_id"], kwargs={"input": {}, "config": {"configurable": {}}})
    await storage.run_create(run2, thread=t2, multitask_strategy="enqueue")
    assert rules.thread_graph_metadata(run2, t2) == {"graph_id": "kept", "assistant_id": "asst-1"}
    assert (await storage.thread_get(t2["thread_id"]))["metadata"] == {"graph_id": "kept", "assistant_id": "asst-1"}

    # a thread created by its run gets the same
    tid = uuid7()
    run3 = run_rec(tid)
    await storage.run_create(run3, thread=thread_rec(thread_id=tid, metadata={"graph_id": "x", "k": 2}), if_not_exists="create")
    assert (await storage.thread_get(tid))["metadata"] == {"graph_id": "agent", "assistant_id": "asst-1", "k": 2}


async def test_rule_settled_thread(storage: Storage):
    from agentserver.storage import rules

    t = await new_thread(storage, ttl={"strategy": "delete", "ttl": 60}, values={"v": 0}, interrupts={"t": [{"id": "i"}]})
    tid = t["thread_id"]
    base = now() - timedelta(seconds=1)
    first = (await add_run(storage, tid, created_at=base)).run
    second = (await add_run(storage, tid, created_at=base + timedelta(milliseconds=1))).run
    (c,) = await storage.claim_runs("w", 10, LONG, 3)
    before = await storage.thread_get(tid)
    await asyncio.sleep(0.01)
    end = RunEnd(status="error", values={"v": 1}, thread_status="error", error={"error": "E", "message": "m"})
    assert await storage.run_finish(first["run_id"], c.lease_id, end)
    th = await storage.thread_get(tid)
    # another run in flight: busy; values mirrored (the end carries them), interrupts kept
    assert th["status"] == rules.settled_status(True, "error") == "busy"
    assert th["values"] == {"v": 1} and th["interrupts"] == {"t": [{"id": "i"}]}
    assert th["error"] == {"error": "E", "message": "m"}
    assert th["state_updated_at"] > before["state_updated_at"]
    assert th["expires_at"] > before["expires_at"] and th["updated_at"] > before["updated_at"]

    (c,) = await storage.claim_runs("w", 10, LONG, 3)
    assert c.run["run_id"] == second["run_id"]
    await asyncio.sleep(0.01)
    assert await storage.run_finish(second["run_id"], c.lease_id, RunEnd(status="success", interrupts={}))
    after = await storage.thread_get(tid)
    # nothing else in flight: the resting status; values kept, interrupts cleared, error cleared
    assert after["status"] == rules.settled_status(False, "idle") == "idle"
    assert after["values"] == {"v": 1} and after["interrupts"] == {}
    assert after["error"] is None
    assert after["state_updated_at"] > th["state_updated_at"]
    assert after["expires_at"] > th["expires_at"]

    # an end carrying neither values nor interrupts leaves the state (and its clock) alone
    third = (await add_run(storage, tid)).run
    (c,) = await storage.claim_runs("w", 10, LONG, 3)
    assert await storage.run_finish(third["run_id"], c.lease_id, RunEnd(status="interrupted", thread_status="interrupted"))
    last = await storage.thread_get(tid)
    assert last["status"] == "interrupted"
    assert (last["values"], last["interrupts"]) == ({"v": 1}, {})
    assert last["state_updated_at"] == after["state_updated_at"]


async def test_rule_retries_exhausted_error(storage: Storage):
    from agentserver.storage import rules

    tid = (await new_thread(storage))["thread_id"]
    run = (await add_run(storage, tid)).run
    for attempt in (1, 2):
        (c,) = await storage.claim_runs("w", 10, SHORT, 2)
        assert c.attempt == attempt
        await asyncio.sleep(EXPIRE)
    (failed,) = await storage.fail_exhausted(2)
    assert failed["run_id"] == run["run_id"] and failed["status"] == "error"
    th = await storage.thread_get(tid)
    assert th["status"] == "error"
    assert th["error"] == rules.retries_exhausted_error(run["run_id"], 2, 2)


async def test_rule_graph_metadata_precedence(storage: Storage):
    """The run record's own graph_id comes before its configurable's and the thread's; a run
    without an assistant_id takes the thread's."""
    from agentserver.storage import rules

    t = await new_thread(storage, metadata={"graph_id": "thread-graph", "assistant_id": "thread-asst"})
    run = run_rec(t["thread_id"], graph_id="own-graph", assistant_id=None)
    await storage.run_create(run, thread=t, multitask_strategy="enqueue")
    expected = rules.thread_graph_metadata(run, t)
    assert expected == {"graph_id": "own-graph", "assistant_id": "thread-asst"}
    assert (await storage.thread_get(t["thread_id"]))["metadata"] == expected


async def test_rule_exhausted_with_another_run_in_flight(storage: Storage):
    """An exhausted run settles its thread like any end: busy while another run is in flight,
    with the retries-exhausted error; values and interrupts untouched."""
    from agentserver.storage import rules

    t = await new_thread(storage, values={"v": 1}, interrupts={"t": [{"id": "i"}]})
    tid = t["thread_id"]
    base = now() - timedelta(seconds=1)
    doomed = (await add_run(storage, tid, created_at=base)).run
    await add_run(storage, tid, created_at=base + timedelta(milliseconds=1))
    (c,) = await storage.claim_runs("w", 10, SHORT, 1)
    assert c.run["run_id"] == doomed["run_id"]
    await asyncio.sleep(EXPIRE)
    assert ids(await storage.fail_exhausted(1), "run_id") == [doomed["run_id"]]
    th = await storage.thread_get(tid)
    assert th["status"] == rules.settled_status(True, "error") == "busy"
    assert th["error"] == rules.retries_exhausted_error(doomed["run_id"], 1, 1)
    assert (th["values"], th["interrupts"]) == ({"v": 1}, {"t": [{"id": "i"}]})


async def test_embedded_search_index_migration(tmp_path):
    """A schema-1 database (no metadata index, no per-status counters) is migrated when it
    is opened: searches and totals are right at once, and reopening changes nothing."""
    import sqlite3

    from agentserver.storage.sqlite import DB_FILE, EmbeddedStorage

    path = tmp_path / "agentserver"
    storage = EmbeddedStorage(path)
    await storage.setup()
    made = [
        await new_thread(storage, metadata={"user": f"u{i % 3}", "n": i % 2, "deep": {"x": i}}, status="busy" if i % 4 == 0 else "idle")
        for i in range(12)
    ]
    await storage.close()
    conn = sqlite3.connect(path / DB_FILE)
    names = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' "
        "AND (name LIKE 'thread_meta%' OR name LIKE 'threads_status_count%')"
    ).fetchall()
    assert len(names) == 8
    for (name,) in names:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP TABLE thread_meta")
    conn.execute("DROP TABLE thread_meta_counts")
    conn.execute("DELETE FROM row_counts WHERE name LIKE 'threads.status:%'")
    conn.execute("DROP TABLE schema_migrations")  # as a release-0.1 database: no record of files
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    u1 = [t["thread_id"] for t in reversed(made) if t["metadata"]["user"] == "u1"]
    for _ in range(2):  # the migration, then a plain reopen
        storage = EmbeddedStorage(path)
        await storage.setup()
        try:
            page, total = await storage.thread_search(ThreadQuery(metadata={"user": "u1"}, limit=100))
            assert (ids(page, "thread_id"), total) == (u1, len(u1))
            page, total = await storage.thread_search(ThreadQuery(metadata={"user": "u1", "n": 1}, limit=1))
            assert total == len(u1) - 2 and len(page) == 1  # threads 7 and (before the update) 1
            page, total = await storage.thread_search(ThreadQuery(metadata={"deep": {"x": 4}, "n": 0}, limit=100))
            assert (ids(page, "thread_id"), total) == ([made[4]["thread_id"]], 1)
            assert (await storage.thread_search(ThreadQuery(status="busy", limit=1)))[1] == 3
            assert (await storage.thread_search(ThreadQuery(status="idle", limit=1)))[1] == 9
            await storage.thread_update(made[1]["thread_id"], metadata={"user": "u2"})  # kept up to date
            u1 = [t for t in u1 if t != made[1]["thread_id"]]
            page, total = await storage.thread_search(ThreadQuery(metadata={"user": "u1"}, limit=100))
            assert (ids(page, "thread_id"), total) == (u1, len(u1))
        finally:
            await storage.close()
