//! Client-side job operations: submit (with idempotency and the queue cap), get, cancel,
//! manual retry, state reports of `external` jobs, delete.
//!
//! The cold paths here read the job, let [`kiln_domain::transition`] judge the event,
//! change the record in Rust and write it back with [`save`], then [`event::record`] the
//! change, all in one writer command. The worker's hot paths (claim, completion) live in
//! `claim` and `lease` as single targeted statements.

use kiln_domain::state::report as report_event;
use kiln_domain::{
    Event, IllegalTransition, Job, JobId, JobState, JobType, NewJob, Step, Timestamp, UserId,
    transition,
};
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use super::event;
use super::row::{self, id_bytes, job_columns, ms, opt_ms, to_json};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::model::{InsertOptions, Inserted, Report, Signal};

/// States that still count against `max_queued`.
const ACTIVE_COUNT: &str = "SELECT coalesce(sum(n), 0) FROM job_counts
     WHERE state IN ('scheduled', 'queued', 'running', 'failed')";

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
        if u64::try_from(active).unwrap_or(0) >= limit {
            return Err(StoreError::QueueFull { limit });
        }
    }
    if !matches!(new.state, JobState::Scheduled | JobState::Queued) {
        return Err(StoreError::conflict(
            "a new job must be scheduled or queued",
        ));
    }
    let job = new.into_job();
    db.prepare_cached(
        "INSERT INTO jobs (id, owner_id, type, queue, name, state, priority, payload,
                           max_attempts, created_at, run_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10)",
    )?
    .execute((
        id_bytes(job.id),
        job.owner.0,
        &job.job_type,
        &job.queue,
        &job.name,
        job.state.as_str(),
        job.priority,
        to_json(&job.payload)?,
        job.max_attempts,
        ms(job.created_at),
        ms(job.run_at),
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
pub(super) fn get(db: &Connection, owner: Option<UserId>, id: JobId) -> Result<Job> {
    db.prepare_cached(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)"
    ))?
    .query_row((id_bytes(id), owner.map(|o| o.0)), row::job)
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

/// Moves `job` to `state` at `now`, keeping `finished_at` set exactly on terminal states and
/// lease fields only while running.
fn enter(job: &mut Job, state: JobState, now: Timestamp) {
    job.state = state;
    job.updated_at = now;
    job.finished_at = state.is_terminal().then_some(now);
    if state != JobState::Running {
        job.node = None;
        job.lease_expires_at = None;
    }
}

/// [`Event::Cancel`]: see [`crate::Store::job_cancel`].
pub(super) fn cancel(
    tx: &mut Tx<'_>,
    owner: Option<UserId>,
    id: JobId,
    now: Timestamp,
) -> Result<(Job, Step)> {
    let mut job = get(tx.db, owner, id)?;
    let from = job.state;
    let step = transition(from, Event::Cancel)?;
    match step {
        Step::To(state) => {
            enter(&mut job, state, now);
            save(tx, &job, from)?;
            event::record(tx, &job, None, "cancelled")?;
        }
        Step::CancelRequested => {
            // A repeated request adds no event; the signal goes out again in case a node
            // missed the first one.
            if !job.cancel_requested {
                job.cancel_requested = true;
                job.updated_at = now;
                save(tx, &job, from)?;
                let node = job.node.clone();
                event::record(tx, &job, node.as_deref(), "cancel requested")?;
            }
            tx.signal(Signal::CancelRequested(id));
        }
        Step::Unchanged => {}
    }
    Ok((job, step))
}

/// [`Event::Retry`] of a failed or dead job: queued now with `extra_attempts` more attempts.
pub(super) fn retry(
    tx: &mut Tx<'_>,
    owner: Option<UserId>,
    id: JobId,
    extra_attempts: u32,
    now: Timestamp,
) -> Result<Job> {
    let mut job = get(tx.db, owner, id)?;
    let from = job.state;
    let Step::To(state) = transition(from, Event::Retry)? else {
        return Err(IllegalTransition {
            from: job.state,
            event: Event::Retry,
        }
        .into());
    };
    enter(&mut job, state, now);
    job.run_at = now;
    job.max_attempts = job.attempts.saturating_add(extra_attempts);
    job.cancel_requested = false;
    job.progress = 0.0;
    save(tx, &job, from)?;
    event::record(tx, &job, None, "retry requested")?;
    Ok(job)
}

/// An `external` job's owner reports its state.
pub(super) fn report(
    tx: &mut Tx<'_>,
    owner: Option<UserId>,
    id: JobId,
    report: Report,
    now: Timestamp,
) -> Result<Job> {
    let mut job = get(tx.db, owner, id)?;
    if job.job_type != JobType::External.as_str() {
        return Err(StoreError::conflict(
            "only external jobs accept state reports",
        ));
    }
    let from = job.state;
    report_event(from, report.state)?;
    enter(&mut job, report.state, now);
    match report.state {
        JobState::Running => {
            job.attempts = job.attempts.saturating_add(1);
            job.started_at = Some(now);
            job.progress = 0.0;
            job.cancel_requested = false;
        }
        JobState::Succeeded => {
            job.result = report.result;
            job.progress = 1.0;
        }
        JobState::Failed | JobState::Dead => {
            job.error = report.error.or(job.error);
        }
        JobState::Queued => job.run_at = now,
        JobState::Scheduled | JobState::Cancelled => {}
    }
    save(tx, &job, from)?;
    event::record(tx, &job, None, "reported by owner")?;
    Ok(job)
}

/// Hard-deletes a terminal job; its events, log and idempotency keys go with it (cascade).
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
    Ok(())
}
