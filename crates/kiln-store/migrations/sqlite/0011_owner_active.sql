-- Each client's active-job quota counts their jobs that are not finished: this index holds
-- just those, so the count reads at most the quota's number of entries, however many
-- finished jobs the owner has.
CREATE INDEX jobs_owner_active ON jobs (owner_id)
    WHERE state IN ('scheduled', 'queued', 'running', 'failed');
