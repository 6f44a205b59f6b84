-- Each client's active-job quota counts their jobs that are not finished: this index holds
-- just those, so the count reads at most the quota's number of entries, however many
-- finished jobs the owner has. `finished_at` is set exactly when a job is terminal; the
-- predicate is not a list of states, which would cost every job insert a temporary table
-- in SQLite. `finished_at` is in the key too, so the count reads the index alone.
CREATE INDEX jobs_owner_active ON jobs (owner_id, finished_at) WHERE finished_at IS NULL;
