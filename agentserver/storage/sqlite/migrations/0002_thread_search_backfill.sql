-- Fill the search tables of 0001 from the threads already there: `thread_meta` (its triggers
-- fill `thread_meta_counts`) and the per-status thread counters of `row_counts`. For a database
-- made before those tables existed (release schema version 1); a no-op on an empty database,
-- and idempotent: it rebuilds both from `threads`.
DELETE FROM thread_meta;
DELETE FROM thread_meta_counts;
INSERT OR IGNORE INTO thread_meta (key, kind, value, created_at, thread_id)
SELECT j.key,
        CASE j.type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n'
                    WHEN 'true' THEN 't' WHEN 'false' THEN 'f' ELSE 'z' END,
        CASE WHEN j.type IN ('text', 'integer', 'real') THEN j.atom ELSE 0 END,
        t.created_at, t.thread_id
    FROM threads AS t, json_each(t.metadata) AS j
    WHERE json_type(t.metadata) = 'object' AND j.type NOT IN ('object', 'array');
DELETE FROM row_counts WHERE name LIKE 'threads.status:%';
INSERT INTO row_counts SELECT 'threads.status:' || status, count(*) FROM threads GROUP BY status;
