-- Kiln's SQLite schema, version 5: one index fewer on the claim path.
--
-- `jobs_started` served only the start-latency sample of the job statistics, yet every
-- claim added an entry to it (one more page in each commit). The sample now reads the most
-- recently finished jobs through `jobs_finished`, which completions update anyway.
DROP INDEX IF EXISTS jobs_started;
