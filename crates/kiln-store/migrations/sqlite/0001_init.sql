-- Kiln's SQLite schema, version 1.
--
-- Conventions: timestamps are INTEGER milliseconds since the Unix epoch (UTC); a job's id is
-- the 16 bytes of its UUIDv7 (so ids sort by creation time); JSON columns hold TEXT; states,
-- roles and token kinds are their lowercase names. `finished_at` is set exactly when a job is
-- terminal (succeeded, dead, cancelled), which lets one partial index serve retention.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('client', 'operator', 'admin')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       BLOB    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL CHECK (kind IN ('session', 'api')),
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX tokens_by_user ON tokens (user_id, kind, created_at);

CREATE TABLE jobs (
    id               BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    owner_id         INTEGER NOT NULL REFERENCES users (id),
    type             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    name             TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('scheduled', 'queued', 'running',
                                'failed', 'succeeded', 'dead', 'cancelled')),
    priority         INTEGER NOT NULL,
    payload          TEXT    NOT NULL,
    result           TEXT,
    error            TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    progress         REAL    NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL,
    node             TEXT,
    lease_expires_at INTEGER
);

-- The claim: queued jobs in claim order. `type` and `queue` trail so the claim can skip
-- unlisted types and excluded queues without reading the table row.
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id, type, queue)
    WHERE state = 'queued';
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
CREATE INDEX jobs_finished ON jobs (finished_at, state, started_at)
    WHERE finished_at IS NOT NULL;
-- The start latency of the most recently started jobs.
CREATE INDEX jobs_started ON jobs (started_at, created_at) WHERE started_at IS NOT NULL;

CREATE TABLE job_events (
    job_id  BLOB    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    state   TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    node    TEXT,
    message TEXT,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

-- One row per job: the retained tail of its log, its size in bytes, and how many bytes were
-- dropped from the front so far.
CREATE TABLE job_logs (
    job_id     BLOB    NOT NULL PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    text       TEXT    NOT NULL,
    bytes      INTEGER NOT NULL,
    dropped    INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

CREATE TABLE idempotency_keys (
    owner_id     INTEGER NOT NULL,
    key          TEXT    NOT NULL,
    request_hash BLOB    NOT NULL,
    job_id       BLOB    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (owner_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id);

-- Counters kept by triggers in the same transaction as the job rows they count, so they are
-- exact after any rollback: jobs per state (the `max_queued` check and `/metrics` read a few
-- rows instead of counting the table) and jobs ever submitted (survives pruning).
CREATE TABLE job_counts (
    state TEXT    NOT NULL PRIMARY KEY,
    n     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO job_counts (state, n) VALUES
    ('scheduled', 0), ('queued', 0), ('running', 0), ('failed', 0),
    ('succeeded', 0), ('dead', 0), ('cancelled', 0);

CREATE TABLE counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('total_submitted', 0);

CREATE TRIGGER jobs_counted_on_insert AFTER INSERT ON jobs
BEGIN
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
    UPDATE counters SET value = value + 1 WHERE name = 'total_submitted';
END;

CREATE TRIGGER jobs_counted_on_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
END;

CREATE TRIGGER jobs_counted_on_state AFTER UPDATE OF state ON jobs
    WHEN OLD.state <> NEW.state
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
END;
