-- Kiln's SQLite schema, version 2: one index fewer on the hot path.
--
-- `jobs_node` served only the start-up lookup of one node's running jobs, yet every claim
-- and every completion updated it (an index entry added and removed per job, and one more
-- page in each commit). That lookup now reads the running jobs through `jobs_lease`, which
-- lists exactly the running jobs (a few per node).
DROP INDEX IF EXISTS jobs_node;
