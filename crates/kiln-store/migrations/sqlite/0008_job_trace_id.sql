-- Kiln's SQLite schema, version 8: the W3C trace id of the request that submitted a job,
-- carried into the log lines of its attempts.
ALTER TABLE jobs ADD COLUMN trace_id TEXT;
