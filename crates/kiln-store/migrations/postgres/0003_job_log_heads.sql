-- Kiln's PostgreSQL schema, version 3: job logs keep their head as well as their tail.
--
-- A log over the limit keeps its first lines (fixed at the first overflow) and its newest
-- ones; `text` holds the head followed by the tail, `head_bytes` says where the head ends,
-- and `dropped` counts the bytes skipped between the two. Rows written before have no head
-- (0): their text is all tail, as it always was. A column with a constant default is added
-- without rewriting the table.
ALTER TABLE job_logs ADD COLUMN head_bytes bigint NOT NULL DEFAULT 0;
