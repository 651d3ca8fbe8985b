"""The Postgres storage (scaled shape): assistants, threads, runs (the queue), checkpoints, store.

One connection pool per event loop (`pool.py`), shared by our queries and LangGraph's
`AsyncPostgresSaver` / `AsyncPostgresStore`. Each resource module keeps its SQL at its top,
next to the methods that run it; the schema is `migrations/NNNN_<name>.sql`, applied by
`migrate.py`.

  storage.py       `PostgresStorage`: pool, setup/close, checkpointer and store, composition
  assistants.py    assistants and their versions
  threads.py       threads: create, update, state mirror, delete, search, TTL expiry
  runs.py          runs, API side: create (multitask strategies), get, list, delete, in-flight
  queue.py         runs, worker side: claim (FOR UPDATE SKIP LOCKED), leases, finish, requeue,
                   exhausted, next wakeup
  checkpointer.py  LangGraph's checkpointer on our pool, with rollback and thread copy
  search.py        the search page shared by assistant and thread search
  rows.py          column lists, shared SQL fragments, record <-> row/parameter conversions
  db.py            running statements: on a pooled connection, retried, in a transaction or not
  pool.py          connection pools: sizing, health, outage handling, transient-error retries
  migrate.py       schema migrations under an advisory lock, then LangGraph's setup

A new resource gets a module of its own in the same shape (SQL on top, a `Db` mixin below,
composed into `PostgresStorage`): crons go to `crons.py`; store items are LangGraph's
`AsyncPostgresStore` (set up in `storage.py`), and SQL of our own over them goes to `store.py`.
"""

from agentserver.storage.postgres.migrate import migrate
from agentserver.storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage", "migrate"]
