"""The embedded storage: SQLite files in one local directory (the `dev` shape).

One module per concern, each a set of plain functions taking the connection, composed by the
class in `storage.py` (connection, thread executor, setup/close):
  * `schema.py`      applies the versioned files of `migrations/` (`NNNN_<name>.sql`);
  * `codec.py`       timestamps, JSON text, each table's columns and row -> record decoders;
  * `assistants.py`  assistants and their versions;
  * `threads.py`     threads, their TTL, search pages, how a thread settles after a run;
  * `runs.py`        the runs queue: create (multitask), claim, leases, finish, requeue, exhausted;
  * `search.py`      JSON containment filters and thread search plans;
  * `saver.py`, `journal.py`, `checkpoint_index.py`  the checkpointer (`checkpoints.sqlite`).
A new resource (crons, say) is a module of its own beside these, with its tables in a new
migration file; store items live in `store.sqlite`, kept by LangGraph's `AsyncSqliteStore`.
"""

from agentserver.storage.sqlite.storage import (
    CHECKPOINTS_FILE,
    DB_FILE,
    STORE_FILE,
    EmbeddedStorage,
)

__all__ = ["CHECKPOINTS_FILE", "DB_FILE", "STORE_FILE", "EmbeddedStorage"]
