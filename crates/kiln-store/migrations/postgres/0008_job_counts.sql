-- Kiln's PostgreSQL schema, version 8: jobs per terminal state, kept as they change, so
-- `/metrics` and the stats never count the table. Nodes add each change to one of a few
-- rows per state (the shard, picked per transaction, so concurrent writers rarely wait on
-- the same row); a delete subtracts what it removed (the statement trigger below). Each
-- node recounts under a short lock when it connects, which also settles whatever nodes of
-- an older version changed during a rolling upgrade.
CREATE TABLE job_counts (
    state text NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (state, shard)
);

CREATE OR REPLACE FUNCTION kiln_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters SET value = value + (SELECT count(*) FROM gone)
    WHERE name = 'jobs_deleted';
    INSERT INTO job_counts (state, shard, n)
    SELECT state, 0, -count(*) FROM gone
    WHERE state IN ('succeeded', 'dead', 'cancelled')
    GROUP BY state
    ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
