//! Client-side job operations: submit (with idempotency and the queue cap), get, the
//! changes a client asks for (cancel, manual retry, state reports of `external` jobs), and
//! delete.
//!
//! A change reads the job, lets [`kiln_domain::change`] decide what the event does to it,
//! writes the record back with [`save`] and [`event::record`]s the change, all in one
//! writer command. The worker's hot paths (claim, completion) live in `claim` and `lease`
//! as single targeted statements.

use kiln_domain::change::Change;
use kiln_domain::{Job, JobId, JobState, NewJob, Step, UserId};
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use super::event;
use super::row::{self, id_bytes, job_columns, ms, opt_ms, to_json};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::model::{InsertOptions, Inserted, JobStatus, stored_job};
use crate::signal::Outbox;

/// States that still count against `max_queued`.
const ACTIVE_COUNT: &str = "SELECT coalesce(sum(n), 0) FROM job_counts
     WHERE state IN ('scheduled', 'queued', 'running', 'failed')";

/// An owner's non-terminal jobs (`finished_at` is set exactly on terminal ones), counted up
/// to `?2` (index `jobs_owner_active`).
pub(super) const OWNER_ACTIVE_COUNT: &str = "SELECT count(*) FROM (
     SELECT 1 FROM jobs INDEXED BY jobs_owner_active
     WHERE owner_id = ?1 AND finished_at IS NULL
     LIMIT ?2)";

/// Stores a new job with its `submitted` event, or finds the job its idempotency key made.
pub(super) fn insert(tx: &mut Tx<'_>, new: NewJob, opts: InsertOptions) -> Result<Inserted> {
    let db = tx.db;
    if let Some(key) = &opts.idempotency {
        let earlier = db
            .prepare_cached(
                "SELECT request_hash, job_id FROM idempotency_keys
                 WHERE owner_id = ?1 AND key = ?2",
            )?
            .query_row((new.owner.0, &key.key), |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, [u8; 16]>(1)?))
            })
            .optional()?;
        if let Some((hash, job_id)) = earlier {
            if hash != key.request_hash {
                return Err(StoreError::conflict(
                    "idempotency key reused with a different request",
                ));
            }
            let id = JobId(Uuid::from_bytes(job_id));
            return Ok(Inserted::Existing(get(db, None, id)?));
        }
    }
    if let Some(limit) = opts.max_queued {
        let counted: i64 = db
            .prepare_cached(ACTIVE_COUNT)?
            .query_row([], |r| r.get(0))?;
        let active = counted + tx.unapplied().active();
        crate::note_room(u64::try_from(active).unwrap_or(0), limit);
        if u64::try_from(active).unwrap_or(0) >= limit {
            return Err(StoreError::QueueFull { limit });
        }
    }
    if let Some(limit) = opts.owner_max_active {
        // Within the writer's batch: earlier inserts of this batch are counted too.
        let active: i64 = db.prepare_cached(OWNER_ACTIVE_COUNT)?.query_row(
            (new.owner.0, i64::try_from(limit).unwrap_or(i64::MAX)),
            |r| r.get(0),
        )?;
        if u64::try_from(active).unwrap_or(0) >= limit {
            return Err(StoreError::ActiveQuota { limit });
        }
    }
    let job = stored_job(new)?;
    db.prepare_cached(
        "INSERT INTO jobs (id, owner_id, type, queue, name, state, priority, payload,
                           max_attempts, created_at, run_at, updated_at, trace_id,
                           parent_span_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?12, ?13)",
    )?
    .execute((
        id_bytes(job.id),
        job.owner.0,
        job.job_type.as_str(),
        job.queue.as_str(),
        &job.name,
        job.state.as_str(),
        job.priority,
        to_json(&job.payload)?,
        job.max_attempts,
        ms(job.created_at),
        ms(job.run_at),
        &job.trace_id,
        &job.parent_span_id,
    ))?;
    tx.counts.inserted(job.state);
    event::record_first(tx, &job, "submitted")?;
    if let Some(key) = &opts.idempotency {
        db.prepare_cached(
            "INSERT INTO idempotency_keys (owner_id, key, request_hash, job_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute((job.owner.0, &key.key, &key.request_hash, id_bytes(job.id)))?;
    }
    Ok(Inserted::Created(job))
}

/// One job; `NotFound` if absent or not `owner`'s.
pub(super) fn get<J: serde::de::DeserializeOwned>(
    db: &Connection,
    owner: Option<UserId>,
    id: JobId,
) -> Result<Job<J>> {
    db.prepare_cached(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)"
    ))?
    .query_row((id_bytes(id), owner.map(|o| o.0)), row::job)
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// The light status of one job: only the columns a poller needs, the result only when its
/// JSON text is at most `inline_max` bytes (a larger one is neither read nor parsed).
pub(super) fn status(
    db: &Connection,
    owner: Option<UserId>,
    id: JobId,
    inline_max: u32,
) -> Result<JobStatus> {
    db.prepare_cached(
        "SELECT state, progress, updated_at, error,
                CASE WHEN octet_length(result) <= ?3 THEN result END, result IS NOT NULL
         FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)",
    )?
    .query_row((id_bytes(id), owner.map(|o| o.0), inline_max), |r| {
        Ok(JobStatus {
            id,
            state: row::state(r, 0)?,
            progress: r.get(1)?,
            updated_at: row::time(r, 2)?,
            error: row::opt_json(r, 3)?,
            result: row::opt_json(r, 4)?,
            has_result: r.get(5)?,
        })
    })
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// `NotFound` unless the job exists and `owner` may see it.
pub(super) fn ensure_visible(db: &Connection, owner: Option<UserId>, id: JobId) -> Result<()> {
    db.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)")?
        .query_row((id_bytes(id), owner.map(|o| o.0)), |_| Ok(()))
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// Writes back every column a state change may touch; `from` is the state the job had.
fn save(tx: &mut Tx<'_>, job: &Job, from: JobState) -> Result<()> {
    tx.db
        .prepare_cached(
            "UPDATE jobs SET state = ?2, result = ?3, error = ?4, attempts = ?5,
             max_attempts = ?6, progress = ?7, cancel_requested = ?8, run_at = ?9,
             started_at = ?10, finished_at = ?11, updated_at = ?12, node = ?13,
             lease_expires_at = ?14
         WHERE id = ?1",
        )?
        .execute((
            id_bytes(job.id),
            job.state.as_str(),
            job.result.as_ref().map(to_json).transpose()?,
            job.error.as_ref().map(to_json).transpose()?,
            job.attempts,
            job.max_attempts,
            job.progress,
            job.cancel_requested,
            ms(job.run_at),
            opt_ms(job.started_at),
            opt_ms(job.finished_at),
            ms(job.updated_at),
            &job.node,
            opt_ms(job.lease_expires_at),
        ))?;
    tx.counts.moved(from, job.state);
    Ok(())
}

/// Reads the job `owner` may see, lets `decide` change it, and writes back what changed
/// with its event; the signals go out after the commit. Returns the job as written and
/// what the state machine made of the event.
pub(super) fn change(
    tx: &mut Tx<'_>,
    owner: Option<UserId>,
    id: JobId,
    decide: impl FnOnce(&mut Job) -> Result<Change>,
) -> Result<(Job, Step)> {
    let mut job = get(tx.db, owner, id)?;
    let change = decide(&mut job)?;
    if let Some(note) = &change.note {
        save(tx, &job, change.from)?;
        event::record(tx, &job, note.node.as_deref(), &note.message)?;
    }
    tx.requested(&job, &change);
    Ok((job, change.step))
}

/// Hard-deletes a terminal job; its events, log and idempotency keys go with it (cascade).
/// Records the bytes of the job's stored artifacts; `NotFound` unless it is `owner`'s.
pub(super) fn artifacts_set(
    tx: &Tx<'_>,
    owner: Option<UserId>,
    id: JobId,
    bytes: u64,
) -> Result<()> {
    let n = tx
        .db
        .prepare_cached(
            "UPDATE jobs SET artifact_bytes = ?3
             WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)",
        )?
        .execute((
            id_bytes(id),
            owner.map(|o| o.0),
            i64::try_from(bytes).unwrap_or(i64::MAX),
        ))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The bytes of artifacts `owner`'s jobs keep (index `jobs_owner_artifacts`).
pub(super) fn owner_artifact_bytes(db: &Connection, owner: UserId) -> Result<u64> {
    let sum: i64 = db
        .prepare_cached(
            "SELECT coalesce(sum(artifact_bytes), 0) FROM jobs INDEXED BY jobs_owner_artifacts
             WHERE owner_id = ?1 AND artifact_bytes > 0",
        )?
        .query_row([owner.0], |r| r.get(0))?;
    Ok(u64::try_from(sum).unwrap_or(0))
}

/// How many of `owner`'s jobs are in each state (index `jobs_owner_created`).
pub(super) fn owner_counts(db: &Connection, owner: UserId) -> Result<Vec<(JobState, u64)>> {
    let mut stmt = db.prepare_cached(
        "SELECT state, count(*) FROM jobs INDEXED BY jobs_owner_created
         WHERE owner_id = ?1 GROUP BY state",
    )?;
    let rows = stmt.query_map([owner.0], |r| {
        Ok((
            row::state(r, 0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        ))
    })?;
    let mut counts = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    counts.sort_by_key(|(state, _)| JobState::ALL.iter().position(|s| s == state));
    Ok(counts)
}

pub(super) fn delete(tx: &mut Tx<'_>, owner: Option<UserId>, id: JobId) -> Result<()> {
    let state = tx
        .db
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)")?
        .query_row((id_bytes(id), owner.map(|o| o.0)), |r| row::state(r, 0))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    if !state.is_terminal() {
        return Err(StoreError::conflict("job is not terminal"));
    }
    tx.db
        .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
        .execute([id_bytes(id)])?;
    tx.counts.deleted(state);
    tx.evict(id);
    Ok(())
}
