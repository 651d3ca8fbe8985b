-- The schema of agentserver.sqlite as release 0.1 created it (its schema version 2, then kept
-- as a Python string). Every statement is `IF NOT EXISTS` / `OR IGNORE`, so applying this file
-- to a database a release made before versioned files changes nothing there (or only adds
-- what an older one lacks). Never edit an applied file: a change is a new NNNN_<name>.sql,
-- which drops and recreates what it changes (`IF NOT EXISTS` never replaces an object).
CREATE TABLE IF NOT EXISTS assistants (
    assistant_id TEXT PRIMARY KEY,
    graph_id TEXT NOT NULL,
    config TEXT NOT NULL,
    context TEXT NOT NULL,
    metadata TEXT NOT NULL,
    name TEXT,
    description TEXT,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS assistants_created ON assistants (created_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_updated ON assistants (updated_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_graph ON assistants (graph_id, created_at, assistant_id);
CREATE INDEX IF NOT EXISTS assistants_name ON assistants (name, assistant_id);

CREATE TABLE IF NOT EXISTS assistant_versions (
    assistant_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    graph_id TEXT NOT NULL,
    config TEXT NOT NULL,
    context TEXT NOT NULL,
    metadata TEXT NOT NULL,
    name TEXT,
    description TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (assistant_id, version)
);

CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state_updated_at INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    vals TEXT,
    interrupts TEXT NOT NULL,
    error TEXT,
    ttl TEXT,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS threads_created ON threads (created_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_updated ON threads (updated_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_state_updated ON threads (state_updated_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_status ON threads (status, created_at, thread_id);
CREATE INDEX IF NOT EXISTS threads_expires ON threads (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    assistant_id TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    multitask_strategy TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_id TEXT,
    lease_expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS runs_thread_status ON runs (thread_id, status, created_at, run_id);
CREATE INDEX IF NOT EXISTS runs_thread_created ON runs (thread_id, created_at, run_id);
CREATE INDEX IF NOT EXISTS runs_inflight ON runs (created_at, run_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS runs_lease ON runs (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_available ON runs (available_at) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS row_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO row_counts VALUES ('threads', 0), ('assistants', 0);
CREATE TRIGGER IF NOT EXISTS threads_count_ins AFTER INSERT ON threads
    BEGIN UPDATE row_counts SET n = n + 1 WHERE name = 'threads'; END;
CREATE TRIGGER IF NOT EXISTS threads_count_del AFTER DELETE ON threads
    BEGIN UPDATE row_counts SET n = n - 1 WHERE name = 'threads'; END;
CREATE TRIGGER IF NOT EXISTS assistants_count_ins AFTER INSERT ON assistants
    BEGIN UPDATE row_counts SET n = n + 1 WHERE name = 'assistants'; END;
CREATE TRIGGER IF NOT EXISTS assistants_count_del AFTER DELETE ON assistants
    BEGIN UPDATE row_counts SET n = n - 1 WHERE name = 'assistants'; END;

-- threads per status: row_counts 'threads.status:<status>'
CREATE TRIGGER IF NOT EXISTS threads_status_count_ins AFTER INSERT ON threads BEGIN
    INSERT INTO row_counts VALUES ('threads.status:' || NEW.status, 1)
        ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS threads_status_count_del AFTER DELETE ON threads BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'threads.status:' || OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS threads_status_count_upd AFTER UPDATE OF status ON threads
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE row_counts SET n = n - 1 WHERE name = 'threads.status:' || OLD.status;
    INSERT INTO row_counts VALUES ('threads.status:' || NEW.status, 1)
        ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;

-- Top-level scalar metadata of every thread. kind: 's' text, 'n' number (integer or real, equal
-- when numerically equal, as json_extract compares), 't' true, 'f' false, 'z' null; value: the
-- SQL value json_extract gives (0 for t/f/z). `value` has no affinity: text stays text.
CREATE TABLE IF NOT EXISTS thread_meta (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (key, kind, value, created_at, thread_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thread_meta_thread ON thread_meta (thread_id);
CREATE TRIGGER IF NOT EXISTS thread_meta_ins AFTER INSERT ON threads BEGIN
    INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)
    SELECT j.key,
        CASE j.type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n'
                    WHEN 'true' THEN 't' WHEN 'false' THEN 'f' ELSE 'z' END,
        CASE WHEN j.type IN ('text', 'integer', 'real') THEN j.atom ELSE 0 END,
        NEW.created_at, NEW.thread_id
    FROM json_each(NEW.metadata) AS j
    WHERE json_type(NEW.metadata) = 'object' AND j.type NOT IN ('object', 'array');
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_upd AFTER UPDATE OF metadata, created_at, thread_id ON threads
    WHEN OLD.metadata IS NOT NEW.metadata OR OLD.created_at IS NOT NEW.created_at
        OR OLD.thread_id IS NOT NEW.thread_id BEGIN
    -- only the entries that changed: unchanged ones keep their pages clean
    DELETE FROM thread_meta WHERE thread_id = OLD.thread_id
        AND (key, kind, value, created_at, thread_id) NOT IN (SELECT j.key,
        CASE j.type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n'
                    WHEN 'true' THEN 't' WHEN 'false' THEN 'f' ELSE 'z' END,
        CASE WHEN j.type IN ('text', 'integer', 'real') THEN j.atom ELSE 0 END,
        NEW.created_at, NEW.thread_id
    FROM json_each(NEW.metadata) AS j
    WHERE json_type(NEW.metadata) = 'object' AND j.type NOT IN ('object', 'array'));
    INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)
    SELECT j.key,
        CASE j.type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n'
                    WHEN 'true' THEN 't' WHEN 'false' THEN 'f' ELSE 'z' END,
        CASE WHEN j.type IN ('text', 'integer', 'real') THEN j.atom ELSE 0 END,
        NEW.created_at, NEW.thread_id
    FROM json_each(NEW.metadata) AS j
    WHERE json_type(NEW.metadata) = 'object' AND j.type NOT IN ('object', 'array');
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_del AFTER DELETE ON threads BEGIN
    DELETE FROM thread_meta WHERE thread_id = OLD.thread_id;
END;
-- threads per (key, kind, value) of thread_meta (numerically equal numbers share a row)
CREATE TABLE IF NOT EXISTS thread_meta_counts (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value BLOB NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (key, kind, value)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS thread_meta_count_ins AFTER INSERT ON thread_meta BEGIN
    INSERT INTO thread_meta_counts VALUES (NEW.key, NEW.kind, NEW.value, 1)
        ON CONFLICT (key, kind, value) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS thread_meta_count_del AFTER DELETE ON thread_meta BEGIN
    UPDATE thread_meta_counts SET n = n - 1
        WHERE key = OLD.key AND kind = OLD.kind AND value = OLD.value;
    DELETE FROM thread_meta_counts
        WHERE key = OLD.key AND kind = OLD.kind AND value = OLD.value AND n <= 0;
END;
