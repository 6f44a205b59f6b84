-- Kiln's PostgreSQL schema, version 1.
--
-- The same tables as the SQLite schema, in PostgreSQL's own types: ids are `uuid` (UUIDv7,
-- so they sort by creation time), times `timestamptz` (written at millisecond precision),
-- JSON columns `jsonb`. `finished_at` is set exactly when a job is terminal (succeeded,
-- dead, cancelled), which lets one partial index serve retention.

CREATE TABLE users (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('client', 'operator', 'admin')),
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL
);

CREATE TABLE tokens (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       bytea       NOT NULL UNIQUE,
    kind       text        NOT NULL CHECK (kind IN ('session', 'api')),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz
);
CREATE INDEX tokens_by_user ON tokens (user_id, kind, created_at);

CREATE TABLE jobs (
    id               uuid        PRIMARY KEY,
    owner_id         bigint      NOT NULL REFERENCES users (id),
    type             text        NOT NULL,
    queue            text        NOT NULL,
    name             text,
    state            text        NOT NULL CHECK (state IN ('scheduled', 'queued', 'running',
                                     'failed', 'succeeded', 'dead', 'cancelled')),
    priority         smallint    NOT NULL,
    payload          jsonb       NOT NULL,
    result           jsonb,
    error            jsonb,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    progress         real        NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    run_at           timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    node             text,
    lease_expires_at timestamptz,
    -- The seq of the job's latest event: each state change bumps it in the same UPDATE, so
    -- the row lock orders a job's events (no `max(seq)` read that a racing writer could
    -- invalidate).
    event_seq        integer     NOT NULL DEFAULT 1
);

-- The claim: queued jobs in claim order (priority DESC, run_at, id).
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id) WHERE state = 'queued';
-- Due work for the promoter and the scheduler's next wake-up.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'failed');
-- Expired leases for the rescuer, and one node's leases at its restart.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_node ON jobs (node) WHERE state = 'running';
-- The owner's list in both sort orders; the operators' list across owners.
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at, id);
CREATE INDEX jobs_owner_priority ON jobs (owner_id, priority, id);
CREATE INDEX jobs_created ON jobs (created_at, id);
-- Retention (oldest terminal jobs first) and the mean duration of succeeded jobs.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- The start latency of the most recently started jobs.
CREATE INDEX jobs_started ON jobs (started_at) WHERE started_at IS NOT NULL;

CREATE TABLE job_events (
    job_id  uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     integer     NOT NULL,
    state   text        NOT NULL,
    at      timestamptz NOT NULL,
    attempt integer     NOT NULL,
    node    text,
    message text,
    PRIMARY KEY (job_id, seq)
);

-- One row per job: the retained tail of its log, its size in bytes, and how many bytes were
-- dropped from the front so far.
CREATE TABLE job_logs (
    job_id     uuid        PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    text       text        NOT NULL,
    bytes      bigint      NOT NULL,
    dropped    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);

CREATE TABLE idempotency_keys (
    owner_id     bigint NOT NULL,
    key          text   NOT NULL,
    request_hash bytea  NOT NULL,
    job_id       uuid   NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id);

-- Jobs ever submitted = jobs in the table + jobs deleted so far. Only deletes (pruning, a
-- user's delete: rare, in the background) touch this counter row, through a statement-level
-- trigger in the deleting transaction, so the number is exact after any rollback. Inserts,
-- claims and completions touch no shared row: unlike SQLite's trigger-kept counts, a hot
-- counter row would serialise every insert (and, per state, every claim and completion)
-- across all nodes on its row lock until commit.
CREATE TABLE counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO counters (name, value) VALUES ('jobs_deleted', 0);

CREATE FUNCTION kiln_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters SET value = value + (SELECT count(*) FROM gone)
    WHERE name = 'jobs_deleted';
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_counted_on_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_deleted();

-- Counts per state (index-only scans) for `max_queued` and `/metrics`.
CREATE INDEX jobs_state ON jobs (state);
