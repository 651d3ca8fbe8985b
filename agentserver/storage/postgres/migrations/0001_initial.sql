-- Agent Server schema, version 0001: assistants (and their versions), threads, runs.
-- The runs table is also the queue (see PostgresStorage.claim_runs).
-- Checkpoints and store items live in LangGraph's own tables (checkpoints, store, ...),
-- created by their setup() under the same migration lock.

CREATE TABLE assistants (
    assistant_id text PRIMARY KEY,
    graph_id     text NOT NULL,
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    context      jsonb,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    name         text,
    description  text,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assistants_metadata_idx ON assistants USING gin (metadata jsonb_path_ops);
CREATE INDEX assistants_graph_id_idx ON assistants (graph_id, created_at);
CREATE INDEX assistants_created_at_idx ON assistants (created_at, assistant_id);
CREATE INDEX assistants_updated_at_idx ON assistants (updated_at, assistant_id);
CREATE INDEX assistants_name_idx ON assistants (name, assistant_id);

CREATE TABLE assistant_versions (
    assistant_id text NOT NULL REFERENCES assistants (assistant_id) ON DELETE CASCADE,
    version      integer NOT NULL,
    graph_id     text NOT NULL,
    config       jsonb NOT NULL DEFAULT '{}'::jsonb,
    context      jsonb,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    name         text,
    description  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assistant_id, version)
);
CREATE INDEX assistant_versions_metadata_idx ON assistant_versions USING gin (metadata jsonb_path_ops);

CREATE TABLE threads (
    thread_id        text PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    state_updated_at timestamptz NOT NULL DEFAULT now(),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'idle'
                     CHECK (status IN ('idle', 'busy', 'interrupted', 'error')),
    config           jsonb NOT NULL DEFAULT '{}'::jsonb,
    "values"         jsonb,
    interrupts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            jsonb,
    ttl_strategy     text,
    ttl_minutes      double precision,
    expires_at       timestamptz
);
CREATE INDEX threads_metadata_idx ON threads USING gin (metadata jsonb_path_ops);
CREATE INDEX threads_values_idx ON threads USING gin ("values" jsonb_path_ops);
CREATE INDEX threads_created_at_idx ON threads (created_at, thread_id);
CREATE INDEX threads_updated_at_idx ON threads (updated_at, thread_id);
CREATE INDEX threads_state_updated_at_idx ON threads (state_updated_at, thread_id);
CREATE INDEX threads_status_idx ON threads (status, created_at, thread_id);
CREATE INDEX threads_expires_at_idx ON threads (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE runs (
    run_id             text PRIMARY KEY,
    thread_id          text NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
    assistant_id       text NOT NULL,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'running', 'success', 'error', 'timeout', 'interrupted')),
    kwargs             jsonb NOT NULL DEFAULT '{}'::jsonb,
    multitask_strategy text NOT NULL DEFAULT 'enqueue',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    attempt            integer NOT NULL DEFAULT 0,
    available_at       timestamptz NOT NULL DEFAULT now(),
    lease_owner        text,
    lease_id           uuid,
    lease_expires_at   timestamptz
);
-- At most one running run per thread, whatever the workers believe.
CREATE UNIQUE INDEX runs_one_running_per_thread ON runs (thread_id) WHERE status = 'running';
-- Runs of a thread, newest first (run_list) and thread deletes.
CREATE INDEX runs_thread_idx ON runs (thread_id, created_at, run_id);
-- The queue: in-flight runs, oldest first.
CREATE INDEX runs_inflight_idx ON runs (created_at, run_id) WHERE status IN ('pending', 'running');
-- Per-thread FIFO: the oldest pending run of a thread.
CREATE INDEX runs_thread_pending_idx ON runs (thread_id, created_at, run_id) WHERE status = 'pending';
-- Delayed runs (next_wakeup).
CREATE INDEX runs_available_at_idx ON runs (available_at) WHERE status = 'pending';
-- Lease renewals.
CREATE INDEX runs_lease_idx ON runs (lease_id) WHERE status = 'running';
