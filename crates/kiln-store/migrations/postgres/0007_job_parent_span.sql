-- Kiln's PostgreSQL schema, version 7: the span (within `trace_id`) that a job's attempts
-- continue, so a trace shows the submitting request and then each attempt under it.
-- A nullable column without a default: no table rewrite.
ALTER TABLE jobs ADD COLUMN parent_span_id text;
