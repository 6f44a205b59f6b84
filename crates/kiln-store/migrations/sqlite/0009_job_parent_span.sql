-- Kiln's SQLite schema, version 9: the span (within `trace_id`) that a job's attempts
-- continue, so a trace shows the submitting request and then each attempt under it.
ALTER TABLE jobs ADD COLUMN parent_span_id TEXT;
