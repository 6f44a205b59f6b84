-- Kiln's PostgreSQL schema, version 6: the W3C trace id of the request that submitted a
-- job, carried into the log lines of its attempts. A nullable column without a default:
-- no table rewrite.
ALTER TABLE jobs ADD COLUMN trace_id text;
