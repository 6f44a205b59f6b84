-- Kiln's PostgreSQL schema, version 17: no foreign keys, and one index less, on the rows
-- every submission and every state change writes. `job_events.job_id -> jobs` checked (and
-- share-locked) the job row once per event, three events per job, and `jobs.owner_id ->
-- users` looked the owner up once per submission: a third of the time of a batched insert
-- and a quarter of a batched claim or completion. Kiln writes an event only in the
-- statement that writes or changes its job, and never deletes a user, so the checks
-- guarded against nothing it does. The cascade they gave (a job's events deleted with it)
-- is now the delete trigger's, once per `DELETE` for all the jobs it removed.
ALTER TABLE job_events DROP CONSTRAINT IF EXISTS job_events_job_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_owner_id_fkey;

CREATE OR REPLACE FUNCTION kiln_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_events WHERE job_id IN (SELECT id FROM gone);
    UPDATE counters SET value = value + (SELECT count(*) FROM gone)
    WHERE name = 'jobs_deleted';
    INSERT INTO job_counts (state, shard, n)
    SELECT state, (pg_backend_pid() % 32000)::int2, -count(*) FROM gone
    GROUP BY state ORDER BY state
    ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;

-- `jobs_state` served counts by state before `job_counts` held them all (version 16); each
-- job's every row version still paid an entry in it. A node that connects now recounts
-- waiting and running jobs from their partial indexes; the finished counts are kept as they
-- change since version 8.
DROP INDEX IF EXISTS jobs_state;
