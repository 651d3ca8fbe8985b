-- A run record may come without an assistant_id (the storage port does not require one; the
-- thread's metadata then keeps its own, as agentserver.storage.rules.thread_graph_metadata
-- says). Release 0.1 had the column NOT NULL. Dropping the constraint only changes the catalog.
ALTER TABLE runs ALTER COLUMN assistant_id DROP NOT NULL;
