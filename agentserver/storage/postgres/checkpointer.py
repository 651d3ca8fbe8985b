"""The checkpointer: LangGraph's `AsyncPostgresSaver` on our pool, completed with rollback
(`adelete_for_runs`) and thread copy (`acopy_thread`), whose SQL works on LangGraph's tables
(`checkpoints`, `checkpoint_blobs`, `checkpoint_writes`, created by its own `setup()`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from agentserver.storage.postgres.pool import connection as pooled_connection

# ---- SQL ---------------------------------------------------------------------------------------
SQL_CKPT_RUN_THREADS = "SELECT run_id, thread_id FROM runs WHERE run_id = ANY(%s)"
SQL_CKPT_OF_RUNS_IN_THREADS = """
SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints
WHERE thread_id = ANY(%(thread_ids)s) AND metadata ->> 'run_id' = ANY(%(run_ids)s)
"""
SQL_CKPT_OF_RUNS_ANYWHERE = """
SELECT thread_id, checkpoint_ns, checkpoint_id FROM checkpoints
WHERE metadata ->> 'run_id' = ANY(%(run_ids)s)
"""
SQL_CKPT_CHAIN = """
SELECT checkpoint_id, parent_checkpoint_id, checkpoint -> 'channel_versions' AS versions
FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s
"""
SQL_CKPT_DELETE_WRITES = """
DELETE FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
SQL_CKPT_DELETE = """
DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
SQL_CKPT_REPARENT = """
UPDATE checkpoints SET parent_checkpoint_id = %s
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s
"""
SQL_CKPT_DELETE_BLOB = """
DELETE FROM checkpoint_blobs
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = ANY(%s)
"""
SQL_CKPT_COPY = (
    """
INSERT INTO checkpoints
    (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
SELECT %(dst)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
    CASE WHEN metadata ->> 'thread_id' = %(src)s
         THEN jsonb_set(metadata, '{thread_id}', to_jsonb(%(dst)s::text)) ELSE metadata END
FROM checkpoints WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, type = EXCLUDED.type,
    checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
""",
    """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
SELECT %(dst)s, checkpoint_ns, channel, version, type, blob
FROM checkpoint_blobs WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO UPDATE SET
    type = EXCLUDED.type, blob = EXCLUDED.blob
""",
    """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path)
SELECT %(dst)s, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path
FROM checkpoint_writes WHERE thread_id = %(src)s
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
    channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob,
    task_path = EXCLUDED.task_path
""",
)


class PostgresCheckpointer(AsyncPostgresSaver):
    """LangGraph's `AsyncPostgresSaver` on our pool, with two changes:

    * On a pool, no process-wide lock: the stock class serialises every call of the saver
      through one `asyncio.Lock` (needed for a single connection, not for a pool), which would
      make all the runs of a worker take turns to write checkpoints. Each call borrows its own
      connection, with the outage-aware borrowing of `pool.py`.
    * `adelete_for_runs` (rollback) and `acopy_thread` (thread copy), which the stock class
      leaves unimplemented, in SQL on LangGraph's tables.
    """

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        if self.pipe is not None or not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with pooled_connection(self.conn) as conn:
            if pipeline and self.supports_pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            elif pipeline:
                async with conn.transaction(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints written by these runs (metadata `run_id`), with their writes
        and the blobs no remaining checkpoint uses. A surviving checkpoint whose parent was
        deleted is re-attached to its nearest surviving ancestor.

        Writes a run made on a checkpoint of an earlier run (e.g. the resume value and task
        results of a resumed run that had not saved a checkpoint yet) cannot be told apart from
        that earlier run's own writes in LangGraph's schema, and are kept."""
        if isinstance(run_ids, str):
            raise TypeError("run_ids must be a sequence of run IDs, not a str")
        ids = sorted({str(r) for r in run_ids})
        if not ids:
            return
        async with self._cursor() as cur:
            async with cur.connection.transaction():
                await cur.execute(SQL_CKPT_RUN_THREADS, (ids,))
                known = await cur.fetchall()
                doomed: dict[tuple[str, str], set[str]] = {}
                rows: list[dict[str, Any]] = []
                if known:
                    await cur.execute(
                        SQL_CKPT_OF_RUNS_IN_THREADS,
                        {"thread_ids": sorted({r["thread_id"] for r in known}), "run_ids": ids},
                    )
                    rows += await cur.fetchall()
                unknown = sorted(set(ids) - {r["run_id"] for r in known})
                if unknown:  # runs already deleted: no thread to narrow the search to
                    await cur.execute(SQL_CKPT_OF_RUNS_ANYWHERE, {"run_ids": unknown})
                    rows += await cur.fetchall()
                for row in rows:
                    key = (row["thread_id"], row["checkpoint_ns"])
                    doomed.setdefault(key, set()).add(row["checkpoint_id"])
                for (thread_id, ns), checkpoint_ids in sorted(doomed.items()):
                    await self._delete_checkpoints(cur, thread_id, ns, checkpoint_ids)

    @staticmethod
    async def _delete_checkpoints(cur: AsyncCursor[DictRow], thread_id: str, ns: str, doomed: set[str]) -> None:
        await cur.execute(SQL_CKPT_CHAIN, (thread_id, ns))
        chain = {r["checkpoint_id"]: r for r in await cur.fetchall()}
        survivors = [cid for cid in chain if cid not in doomed]
        for cid in survivors:
            parent = chain[cid]["parent_checkpoint_id"]
            if parent not in doomed:
                continue
            seen: set[str] = set()
            while parent is not None and parent in doomed and parent not in seen:
                seen.add(parent)
                parent = chain[parent]["parent_checkpoint_id"] if parent in chain else None
            await cur.execute(SQL_CKPT_REPARENT, (parent, thread_id, ns, cid))
        ids = sorted(doomed)
        await cur.execute(SQL_CKPT_DELETE_WRITES, (thread_id, ns, ids))
        await cur.execute(SQL_CKPT_DELETE, (thread_id, ns, ids))

        def versions(cid: str) -> set[tuple[str, str]]:
            found = (chain.get(cid) or {}).get("versions") or {}
            return {(channel, str(version)) for channel, version in found.items()}

        garbage: set[tuple[str, str]] = set()
        for cid in doomed:
            garbage |= versions(cid)
        for cid in survivors:
            garbage -= versions(cid)
        by_channel: dict[str, list[str]] = {}
        for channel, version in garbage:
            by_channel.setdefault(channel, []).append(version)
        for channel, dead in sorted(by_channel.items()):
            await cur.execute(SQL_CKPT_DELETE_BLOB, (thread_id, ns, channel, sorted(dead)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of a thread to another (replacing the
        target's rows with the same keys)."""
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        async with self._cursor() as cur:
            async with cur.connection.transaction():
                for sql in SQL_CKPT_COPY:
                    await cur.execute(sql, {"src": src, "dst": dst})
