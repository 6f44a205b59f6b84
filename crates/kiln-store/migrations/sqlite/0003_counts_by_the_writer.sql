-- Kiln's SQLite schema, version 3: the job counts are kept by the writer, not by triggers.
--
-- The writer adds up the count changes of each batch of commands and applies them in the
-- batch's transaction (see `counts.rs`): a few statements per batch instead of two trigger
-- UPDATEs per job change and a statement journal around every job insert and update.
-- The counts are recomputed here once, so they start exact whatever came before.
DROP TRIGGER IF EXISTS jobs_counted_on_insert;
DROP TRIGGER IF EXISTS jobs_counted_on_delete;
DROP TRIGGER IF EXISTS jobs_counted_on_state;
UPDATE job_counts SET n = (SELECT count(*) FROM jobs WHERE jobs.state = job_counts.state);
