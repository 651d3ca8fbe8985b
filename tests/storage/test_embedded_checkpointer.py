"""DurableMemorySaver: real LangGraph graphs on it, then a fresh instance reopened from disk."""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import pytest
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from agentserver.storage.sqlite.journal import CheckpointerClosed
from agentserver.storage.sqlite.saver import DurableMemorySaver

DURABILITIES = ["sync", "async", "exit"]


# ---- graphs --------------------------------------------------------------------------------
class State(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    answer: str


def _step(name: str):
    def node(state: State) -> dict:
        return {"steps": [name]}

    return node


def ask(state: State) -> dict:
    answer = interrupt({"question": "continue?", "seen": list(state.get("steps", []))})
    return {"steps": ["ask"], "answer": answer}


def build_graph() -> StateGraph:
    """a -> b -> ask (interrupts) -> c -> d"""
    b = StateGraph(State)
    for name in ("a", "b", "c", "d"):
        b.add_node(name, _step(name))
    b.add_node("ask", ask)
    b.add_edge(START, "a")
    b.add_edge("a", "b")
    b.add_edge("b", "ask")
    b.add_edge("ask", "c")
    b.add_edge("c", "d")
    b.add_edge("d", END)
    return b


def build_parent_graph() -> StateGraph:
    """pre -> child (a subgraph that interrupts in its middle) -> post"""
    child = StateGraph(State)
    child.add_node("c1", _step("c1"))
    child.add_node("ask", ask)
    child.add_node("c2", _step("c2"))
    child.add_edge(START, "c1")
    child.add_edge("c1", "ask")
    child.add_edge("ask", "c2")
    child.add_edge("c2", END)
    parent = StateGraph(State)
    parent.add_node("pre", _step("pre"))
    parent.add_node("child", child.compile())
    parent.add_node("post", _step("post"))
    parent.add_edge(START, "pre")
    parent.add_edge("pre", "child")
    parent.add_edge("child", "post")
    parent.add_edge("post", END)
    return parent


def cfg(thread_id: str, run_id: str | None = None) -> dict:
    conf: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    if run_id is not None:
        conf["configurable"]["run_id"] = run_id
        conf["metadata"] = {"run_id": run_id}
    return conf


async def history(graph, config) -> list[tuple]:
    """A comparable view of a thread's history: id, parent, values, next, metadata."""
    out = []
    async for snap in graph.aget_state_history(config):
        out.append(
            (
                snap.config["configurable"]["checkpoint_id"],
                (snap.parent_config or {}).get("configurable", {}).get("checkpoint_id"),
                snap.values,
                snap.next,
                snap.metadata.get("step"),
                snap.metadata.get("source"),
                tuple(i.value["question"] for t in snap.tasks for i in t.interrupts),
            )
        )
    return out


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints.sqlite"


@pytest.fixture
async def opened():
    """Open savers on a path; every saver still open at the end is closed."""
    savers: list[DurableMemorySaver] = []

    async def open_(path: Path) -> DurableMemorySaver:
        saver = DurableMemorySaver(path)
        await saver.asetup()
        savers.append(saver)
        return saver

    yield open_
    for saver in savers:
        await saver.aclose()


# ---- the Pregel loop, every durability mode, reopen ----------------------------------------
@pytest.mark.parametrize("durability", DURABILITIES)
async def test_graph_interrupt_resume_and_reopen(db: Path, opened, durability: str):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    config = cfg("t-1", "run-1")
    result = await graph.ainvoke({"steps": []}, config, durability=durability)
    assert result["steps"] == ["a", "b"]
    assert result["__interrupt__"][0].value == {"question": "continue?", "seen": ["a", "b"]}
    state = await graph.aget_state(config)
    assert state.next == ("ask",)
    assert state.values == {"steps": ["a", "b"]}
    before = await history(graph, config)
    if durability == "exit":
        assert len(before) == 1  # only the state the run exited with
    else:
        assert len(before) == 4  # input, a, b, then the interrupted step
    await saver.flush()
    await saver.aclose()

    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    state2 = await graph2.aget_state(config)
    assert state2.values == state.values and state2.next == ("ask",)
    assert [i.value for t in state2.tasks for i in t.interrupts] == [{"question": "continue?", "seen": ["a", "b"]}]
    assert await history(graph2, config) == before

    # resume on the reopened saver
    final = await graph2.ainvoke(Command(resume="yes"), cfg("t-1", "run-2"), durability=durability)
    assert final == {"steps": ["a", "b", "ask", "c", "d"], "answer": "yes"}
    after = await history(graph2, config)
    await fresh.flush()
    await fresh.aclose()

    third = await opened(db)
    graph3 = build_graph().compile(checkpointer=third)
    state3 = await graph3.aget_state(config)
    assert state3.values == final and state3.next == ()
    assert await history(graph3, config) == after
    assert len(after) == (2 if durability == "exit" else 7)


async def test_close_persists_unflushed_writes(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    for i in range(20):
        await graph.ainvoke({"steps": []}, cfg(f"t-{i}"))
    await saver.aclose()  # no flush: close drains the journal
    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    for i in range(20):
        assert (await graph2.aget_state(cfg(f"t-{i}"))).values == {"steps": ["a", "b"]}


async def test_group_commit_batches_concurrent_runs(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    commits_before = saver.commits

    async def one(i: int) -> None:
        await graph.ainvoke({"steps": []}, cfg(f"g-{i}"), durability="async")
        await graph.ainvoke(Command(resume=str(i)), cfg(f"g-{i}"), durability="async")
        await saver.flush()

    await asyncio.gather(*(one(i) for i in range(40)))
    checkpoints = sum(1 for _ in saver.list(None))
    assert checkpoints == 40 * 7
    # many checkpoints (and more writes) per commit
    assert saver.commits - commits_before < checkpoints / 2
    await saver.aclose()
    fresh = await opened(db)
    assert sum(1 for _ in fresh.list(None)) == checkpoints
    graph2 = build_graph().compile(checkpointer=fresh)
    assert (await graph2.aget_state(cfg("g-7"))).values["answer"] == "7"


def test_sync_graph_from_threads(db: Path):
    """The sync Pregel loop runs checkpoint writes on executor threads: the saver's lock and
    flush_sync() must hold up."""
    with DurableMemorySaver(db) as saver:
        graph = build_graph().compile(checkpointer=saver)

        def work(n: int) -> None:
            for i in range(5):
                config = cfg(f"s-{n}-{i}")
                graph.invoke({"steps": []}, config, durability="sync")
                graph.invoke(Command(resume="ok"), config, durability="sync")
                saver.flush_sync(timeout=30)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    with DurableMemorySaver(db) as fresh:
        graph2 = build_graph().compile(checkpointer=fresh)
        for n in range(4):
            for i in range(5):
                assert graph2.get_state(cfg(f"s-{n}-{i}")).values["answer"] == "ok"


async def test_flush_from_another_event_loop(db: Path, opened):
    """Worker job loops (BG_JOB_ISOLATED_LOOPS) use the same saver from their own loop."""
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)

    async def on_other_loop() -> dict:
        out = await graph.ainvoke({"steps": []}, cfg("other-loop"))
        await saver.flush()
        return out

    result = await asyncio.to_thread(asyncio.run, on_other_loop())
    assert result["steps"] == ["a", "b"]
    await saver.aclose()
    fresh = await opened(db)
    assert fresh.get_tuple(cfg("other-loop")) is not None


async def test_acknowledged_writes_survive_a_crash(tmp_path: Path, db: Path, opened):
    """A process that flushed, then died by SIGKILL (no close, no cleanup), lost nothing."""
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, signal, sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            from langgraph.types import Command
            from tests.storage.test_embedded_checkpointer import build_graph, cfg
            from agentserver.storage.sqlite.saver import DurableMemorySaver

            async def main():
                saver = DurableMemorySaver({str(db)!r})
                await saver.asetup()
                saver._journal.linger = 5.0  # nothing commits unless someone flushes
                graph = build_graph().compile(checkpointer=saver)
                for i in range(5):
                    await graph.ainvoke({{"steps": []}}, cfg(f"c-{{i}}"))
                    await graph.ainvoke(Command(resume="r"), cfg(f"c-{{i}}"))
                await saver.flush()
                print("acknowledged", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "acknowledged" in proc.stdout
    saver = await opened(db)  # the dead process's lock is gone with it
    graph = build_graph().compile(checkpointer=saver)
    for i in range(5):
        state = await graph.aget_state(cfg(f"c-{i}"))
        assert state.values == {"steps": ["a", "b", "ask", "c", "d"], "answer": "r"}
        assert len(await history(graph, cfg(f"c-{i}"))) == 7


# ---- the journal: group commits that fail or die half-way -----------------------------------
class FaultyConnection:
    """Wraps the journal's connection: `fault()` runs at statement `at` (> 1) of every group
    commit while `failing` is set, i.e. after part of the group was written in its transaction."""

    def __init__(self, conn: sqlite3.Connection, fault, at: int = 2) -> None:
        self._conn, self._fault, self._at = conn, fault, at
        self.failing = True
        self.failures = 0
        self._statements = 0

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()

    def execute(self, sql: str, *args):
        if sql == "BEGIN IMMEDIATE":
            self._statements = 0
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, rows):
        self._statements += 1
        if self.failing and self._statements == self._at:
            self.failures += 1
            self._fault()
        return self._conn.executemany(sql, rows)


def _injected() -> None:
    raise sqlite3.OperationalError("injected fault")


def _rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return sum(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
        )
    finally:
        conn.close()


async def test_failed_group_commit_is_rolled_back_then_retried_whole(db: Path, opened):
    saver = await opened(db)
    saver._journal.linger = 5.0  # one group: everything below commits together, on flush
    graph = build_graph().compile(checkpointer=saver)
    await graph.ainvoke({"steps": []}, cfg("kept"))
    await saver.flush()
    durable = _rows(db)
    faulty = FaultyConnection(saver._journal._conn, _injected)
    saver._journal._conn = faulty
    await graph.ainvoke(Command(resume="yes"), cfg("kept"))
    await graph.ainvoke({"steps": []}, cfg("late"))
    expected = await history(graph, cfg("kept")), await history(graph, cfg("late"))
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        await saver.flush()  # the flusher gets the writer's error
    assert faulty.failures >= 1
    assert _rows(db) == durable  # the half-applied group was rolled back
    faulty.failing = False
    await saver.flush()  # the writer retried the whole group
    assert _rows(db) > durable
    await saver.aclose()
    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    assert (await history(graph2, cfg("kept")), await history(graph2, cfg("late"))) == expected


async def test_close_gives_up_on_a_commit_that_keeps_failing(db: Path, opened, caplog):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    await graph.ainvoke({"steps": []}, cfg("kept"))
    await saver.flush()
    kept = await history(graph, cfg("kept"))
    saver._journal._conn = FaultyConnection(saver._journal._conn, _injected)
    await graph.ainvoke(Command(resume="lost"), cfg("kept"))
    with caplog.at_level("ERROR"):
        await saver.aclose()  # retries a few times, then stops instead of hanging
    assert "not persisted" in caplog.text
    with pytest.raises(CheckpointerClosed):
        await saver.adelete_thread("kept")
    fresh = await opened(db)
    assert await history(build_graph().compile(checkpointer=fresh), cfg("kept")) == kept


async def test_crash_in_the_middle_of_a_group_commit(tmp_path: Path, db: Path, opened):
    """SIGKILL between two statements of a group commit (with pages already spilled to the
    WAL): the reopened file holds every acknowledged checkpoint and nothing of that group."""
    script = tmp_path / "crash_mid_commit.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, signal, sys
            sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
            from langgraph.types import Command
            from tests.storage.test_embedded_checkpointer import FaultyConnection, build_graph, cfg
            from agentserver.storage.sqlite.saver import DurableMemorySaver

            async def main():
                saver = DurableMemorySaver({str(db)!r})
                await saver.asetup()
                saver._journal.linger = 5.0  # one group, committed on flush
                graph = build_graph().compile(checkpointer=saver)
                await graph.ainvoke({{"steps": []}}, cfg("kept"))
                await saver.flush()
                print("acknowledged", flush=True)
                conn = saver._journal._conn
                conn.execute("PRAGMA cache_size=1")  # dirty pages spill to the WAL early
                die = lambda: os.kill(os.getpid(), signal.SIGKILL)
                saver._journal._conn = FaultyConnection(conn, die, at=100)
                for i in range(20):
                    await graph.ainvoke({{"steps": ["x" * 4096]}}, cfg(f"lost-{{i}}"))
                await graph.ainvoke(Command(resume="lost"), cfg("kept"))
                await saver.flush()
                print("not reached", flush=True)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "acknowledged" in proc.stdout and "not reached" not in proc.stdout
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    saver = await opened(db)
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"kept"}
    graph = build_graph().compile(checkpointer=saver)
    assert len(await history(graph, cfg("kept"))) == 4  # as acknowledged: interrupted at ask
    final = await graph.ainvoke(Command(resume="again"), cfg("kept"))
    assert final == {"steps": ["a", "b", "ask", "c", "d"], "answer": "again"}


# ---- maintenance operations ----------------------------------------------------------------
async def test_delete_thread(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    for tid in ("keep", "drop"):
        await graph.ainvoke({"steps": []}, cfg(tid))
    await saver.adelete_thread("drop")
    await saver.adelete_thread("never-existed")
    assert await saver.aget_tuple(cfg("drop")) is None
    assert [t async for t in saver.alist(cfg("drop"))] == []
    assert not any(k[0] == "drop" for k in saver.blobs) and not any(k[0] == "drop" for k in saver.writes)
    keep_history = await history(graph, cfg("keep"))
    await saver.aclose()

    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    assert await fresh.aget_tuple(cfg("drop")) is None
    assert await history(graph2, cfg("keep")) == keep_history
    # a deleted thread can start over
    await graph2.ainvoke({"steps": []}, cfg("drop"))
    assert (await graph2.aget_state(cfg("drop"))).values == {"steps": ["a", "b"]}


async def test_copy_thread(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    await graph.ainvoke({"steps": []}, cfg("src"))
    await saver.acopy_thread("src", "dst")
    src_history = await history(graph, cfg("src"))
    assert await history(graph, cfg("dst")) == src_history
    # the copy resumes on its own; the source is untouched
    assert (await graph.ainvoke(Command(resume="copy"), cfg("dst")))["answer"] == "copy"
    assert await history(graph, cfg("src")) == src_history
    await saver.aclose()

    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    assert await history(graph2, cfg("src")) == src_history
    assert (await graph2.aget_state(cfg("dst"))).values["answer"] == "copy"
    assert (await graph2.ainvoke(Command(resume="orig"), cfg("src")))["answer"] == "orig"


async def test_delete_for_runs_rolls_back_a_run(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    config = cfg("t")
    await graph.ainvoke({"steps": []}, cfg("t", "run-1"))
    interrupted = await history(graph, config)
    # run-2 resumes (its resume value is written on run-1's last checkpoint), then is rolled back
    await graph.ainvoke(Command(resume="first"), cfg("t", "run-2"))
    assert len(await history(graph, config)) > len(interrupted)
    await saver.adelete_for_runs(["run-2", "unknown-run"])
    assert await history(graph, config) == interrupted
    state = await graph.aget_state(config)
    assert state.next == ("ask",)
    head = await saver.aget_tuple(config)
    assert all(w[1] != "__resume__" for w in head.pending_writes)
    assert all(t.metadata.get("run_id") != "run-2" for t in saver.list(config))
    await saver.aclose()

    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    assert await history(graph2, config) == interrupted
    head2 = await fresh.aget_tuple(config)
    assert all(w[1] != "__resume__" for w in head2.pending_writes)
    final = await graph2.ainvoke(Command(resume="second"), cfg("t", "run-3"))
    assert final == {"steps": ["a", "b", "ask", "c", "d"], "answer": "second"}
    with pytest.raises(TypeError):
        await fresh.adelete_for_runs("run-3")


async def test_prune_keep_latest_and_delete(db: Path, opened):
    saver = await opened(db)
    graph = build_graph().compile(checkpointer=saver)
    for tid in ("p1", "p2", "p3"):
        await graph.ainvoke({"steps": []}, cfg(tid))
    await graph.ainvoke(Command(resume="done"), cfg("p1"))
    before = {tid: await graph.aget_state(cfg(tid)) for tid in ("p1", "p2", "p3")}
    n_blobs = len(saver.blobs)

    await saver.aprune(["p1", "p2"], strategy="keep_latest")
    for tid in ("p1", "p2"):
        tuples = [t async for t in saver.alist(cfg(tid))]
        assert len(tuples) == 1 and tuples[0].parent_config is None
        state = await graph.aget_state(cfg(tid))
        assert state.values == before[tid].values and state.next == before[tid].next
    assert len(await history(graph, cfg("p3"))) == 4  # not pruned
    assert len(saver.blobs) < n_blobs  # unreferenced blobs went too
    # the pruned interrupted thread still resumes
    assert (await graph.ainvoke(Command(resume="late"), cfg("p2")))["answer"] == "late"

    await saver.aprune(["p3"], strategy="delete")
    assert await saver.aget_tuple(cfg("p3")) is None
    with pytest.raises(ValueError):
        await saver.aprune(["p1"], strategy="bogus")
    with pytest.raises(TypeError):
        await saver.aprune("p1")
    p1 = await history(graph, cfg("p1"))
    p2 = await history(graph, cfg("p2"))
    await saver.aclose()

    fresh = await opened(db)
    graph2 = build_graph().compile(checkpointer=fresh)
    assert await history(graph2, cfg("p1")) == p1
    assert await history(graph2, cfg("p2")) == p2
    assert await fresh.aget_tuple(cfg("p3")) is None


async def test_prune_with_subgraphs(db: Path, opened):
    saver = await opened(db)
    graph = build_parent_graph().compile(checkpointer=saver)
    # an interrupt inside the subgraph: its namespace must survive keep_latest
    await graph.ainvoke({"steps": []}, cfg("sub"))
    namespaces = {ns for ns in saver.storage["sub"]}
    assert any(ns.startswith("child:") for ns in namespaces)
    await saver.aprune(["sub"], strategy="keep_latest")
    for ns, checkpoints in saver.storage["sub"].items():
        assert len(checkpoints) == 1, ns
    final = await graph.ainvoke(Command(resume="deep"), cfg("sub"))
    reference = build_parent_graph().compile(checkpointer=InMemorySaver())
    await reference.ainvoke({"steps": []}, cfg("ref"))
    assert final == await reference.ainvoke(Command(resume="deep"), cfg("ref"))
    assert final["answer"] == "deep" and final["steps"][-3:] == ["ask", "c2", "post"]
    # finished: the subgraph call's namespace goes with the root checkpoint it started from
    await saver.aprune(["sub"], strategy="keep_latest")
    assert set(saver.storage["sub"]) == {""}
    assert len(saver.storage["sub"][""]) == 1
    assert (await graph.aget_state(cfg("sub"))).values == final
    await saver.aclose()
    fresh = await opened(db)
    assert set(fresh.storage["sub"]) == {""}
    graph2 = build_parent_graph().compile(checkpointer=fresh)
    assert (await graph2.aget_state(cfg("sub"))).values == final


def _extend(state: list, writes: list) -> list:
    out = list(state)
    for w in writes:
        out.extend(w)
    return out


class DState(TypedDict):
    log: Annotated[list, DeltaChannel(_extend, snapshot_frequency=3)]


async def test_prune_keeps_delta_channel_history(db: Path, opened):
    b = StateGraph(DState)
    names = [f"n{i}" for i in range(7)]
    for name in names:
        b.add_node(name, lambda s, name=name: {"log": [name]})
    b.add_edge(START, names[0])
    for x, y in zip(names, names[1:]):
        b.add_edge(x, y)
    b.add_edge(names[-1], END)

    saver = await opened(db)
    graph = b.compile(checkpointer=saver)
    result = await graph.ainvoke({"log": []}, cfg("delta"))
    assert result["log"] == names
    await saver.aprune(["delta"], strategy="keep_latest")
    assert len([t async for t in saver.alist(cfg("delta"))]) < 9
    assert (await graph.aget_state(cfg("delta"))).values["log"] == names
    await saver.aclose()
    fresh = await opened(db)
    graph2 = b.compile(checkpointer=fresh)
    assert (await graph2.aget_state(cfg("delta"))).values["log"] == names
    again = await graph2.ainvoke({"log": ["x"]}, cfg("delta"))
    assert again["log"] == names + ["x"] + names


# ---- lifecycle -----------------------------------------------------------------------------
async def test_lifecycle_and_exclusive_lock(db: Path, opened):
    saver = await opened(db)
    with pytest.raises(RuntimeError, match="in use"):
        await DurableMemorySaver(db).asetup()
    await saver.flush()  # nothing pending: returns at once
    await saver.aclose()
    with pytest.raises(CheckpointerClosed):
        saver.put({"configurable": {"thread_id": "x", "checkpoint_ns": ""}}, _empty(), {}, {})
    await saver.aclose()  # idempotent
    unopened = DurableMemorySaver(db)
    with pytest.raises(CheckpointerClosed):
        await unopened.adelete_thread("x")
    again = await opened(db)  # the lock was released
    assert again.is_open


async def test_embedded_storage_refuses_a_second_instance_on_the_same_directory(tmp_path: Path):
    from agentserver.storage.sqlite import EmbeddedStorage

    first = EmbeddedStorage(tmp_path / "data")
    await first.setup()
    try:
        second = EmbeddedStorage(tmp_path / "data")
        with pytest.raises(RuntimeError, match="in use"):
            await second.setup()
        assert await first.thread_get(str(uuid.uuid4())) is None  # the first still works
        assert isinstance(first.checkpointer, DurableMemorySaver)
    finally:
        await first.close()


def _empty():
    from langgraph.checkpoint.base import empty_checkpoint

    return empty_checkpoint()


if os.name != "posix":  # pragma: no cover - flock and SIGKILL
    pytestmark = pytest.mark.skip("POSIX only")
