-- Kiln's PostgreSQL schema, version 2: one index fewer on the claim path.
--
-- `jobs_started` served only the start-latency sample of the job statistics, yet every
-- claim added an entry to it. The sample now reads the most recently finished jobs through
-- `jobs_finished`, which completions update anyway (the same sample as SQLite's).
DROP INDEX IF EXISTS jobs_started;
