-- Kiln's PostgreSQL schema, version 5: operators pause and resume queues.
--
-- A paused queue still accepts jobs, but no claim takes them until it is resumed (every
-- node's claim reads this table in its own statement). A queue has a row here once an
-- operator has paused or resumed it; no row means running.
CREATE TABLE queue_controls (
    name       text        PRIMARY KEY,
    paused     boolean     NOT NULL,
    changed_at timestamptz NOT NULL,
    changed_by text        NOT NULL
);
