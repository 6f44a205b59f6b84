-- Bytes of a job's artifacts (set when they are stored), so an owner's storage quota counts
-- them; the partial index holds only jobs that have some, and sums them alone.
ALTER TABLE jobs ADD COLUMN artifact_bytes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_owner_artifacts ON jobs (owner_id, artifact_bytes) WHERE artifact_bytes > 0;
