-- Kiln's SQLite schema, version 7: operators pause and resume queues.
--
-- A paused queue still accepts jobs, but no claim takes them until it is resumed. A queue
-- has a row here once an operator has paused or resumed it; no row means running.
CREATE TABLE queue_controls (
    name       TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL CHECK (paused IN (0, 1)),
    changed_at INTEGER NOT NULL,
    changed_by TEXT    NOT NULL
) WITHOUT ROWID;
