//! Client-side job operations: submit (with idempotency and the queue cap), get, the
//! changes a client asks for (cancel, manual retry, state reports of `external` jobs),
//! delete; and [`record`], which appends the event row of every state change.
//!
//! A change locks the job row (`FOR UPDATE`), lets [`kiln_domain::change`] decide what the
//! event does to it, writes the record back with [`save`] and [`record`]s the change, all
//! in one transaction. The worker's hot paths (claim, completion) live in `claim` and
//! `lease` as single targeted statements.

use deadpool_postgres::{GenericClient, Transaction};
use kiln_domain::change::{Change, Note};
use kiln_domain::{Failure, Job, JobId, JobState, NewJob, RawJson, Step, UserId};
use tokio_postgres::types::Json;

use super::notify::Signals;
use super::row::{self, int, job_columns, json, query_one, query_opt};
use crate::cache::{Cached, JobCache};
use crate::error::{Result, StoreError};
use crate::model::{FeedEvent, InsertOptions, Inserted, JobStatus, stored_job};
use crate::signal::Outbox;

/// The advisory lock key that serialises inserts checking `max_queued` (`kilnqcap`).
const MAX_QUEUED_LOCK: i64 = 0x6b69_6c6e_7163_6170;

/// The first key of the per-owner quota locks (`kiln` in ASCII).
const OWNER_LOCK_CLASS: i32 = 0x6b69_6c6e;

/// What [`insert`] found when another transaction holds the same idempotency key.
// Short-lived and returned once per insert: boxing the common case would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Insert {
    /// Done (to commit).
    Done(Inserted),
    /// The key was taken by a concurrent insert that committed first: roll back and look
    /// the key up again.
    KeyRaced,
}

/// Stores a new job with its `submitted` event, or finds the job its idempotency key made.
///
/// Runs in a transaction when `opts` has an idempotency key or a cap (the caller's choice);
/// a plain submission is a single statement and needs none.
pub(super) async fn insert(
    db: &impl GenericClient,
    signals: &mut Signals,
    new: NewJob,
    opts: &InsertOptions,
) -> Result<Insert> {
    if let Some(found) = existing(db, new.owner, opts).await? {
        return Ok(Insert::Done(found));
    }
    if let Some(limit) = opts.max_queued {
        ensure_room(db, limit).await?;
    }
    if let Some(limit) = opts.owner_max_active {
        ensure_owner_room(db, new.owner, limit).await?;
    }
    let job = stored_job(new)?;
    // The job, its first event and its count in one statement.
    row::execute(
        db,
        concat!(
            "WITH job AS (
                 INSERT INTO jobs (id, owner_id, type, queue, name, state, priority, payload,
                                   max_attempts, created_at, run_at, updated_at, event_seq,
                                   trace_id, parent_span_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, 1, $12, $13)
                 RETURNING id, state, created_at
             ), events AS (
                 INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
                 SELECT id, 1, state, created_at, 0, NULL, 'submitted' FROM job
             )",
            super::counts::counted_inserts!()
        ),
        &[
            &job.id.0,
            &job.owner.0,
            &job.job_type.as_str(),
            &job.queue.as_str(),
            &job.name,
            &job.state.as_str(),
            &job.priority,
            &job.payload,
            &int(job.max_attempts),
            &job.created_at,
            &job.run_at,
            &job.trace_id,
            &job.parent_span_id,
        ],
    )
    .await?;
    signals.changed(FeedEvent::of(&job, 1));
    if let Some(key) = &opts.idempotency {
        // A concurrent insert with the same key waits here for the first to commit, then
        // inserts nothing: the caller rolls back and finds the winner's job.
        let claimed = row::execute(
            db,
            "INSERT INTO idempotency_keys (owner_id, key, request_hash, job_id)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&job.owner.0, &key.key, &key.request_hash, &job.id.0],
        )
        .await?;
        if claimed == 0 {
            return Ok(Insert::KeyRaced);
        }
    }
    Ok(Insert::Done(Inserted::Created(job)))
}

/// `QueueFull` when `limit` non-terminal jobs exist (read from the per-state counts,
/// [`super::counts`]). Capped inserts take turns (until their
/// commit) on an advisory lock, so two of them on different nodes cannot both see room for
/// one more job; uncapped inserts, claims and completions never take this lock.
async fn ensure_room(tx: &impl GenericClient, limit: u64) -> Result<()> {
    row::execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&MAX_QUEUED_LOCK]).await?;
    let active: i64 = row::get(
        &query_one(
            tx,
            "SELECT coalesce(sum(n), 0)::int8 FROM job_counts
             WHERE state IN ('scheduled', 'queued', 'running', 'failed')",
            &[],
        )
        .await?,
        0,
    )?;
    crate::note_room(u64::try_from(active).unwrap_or(0), limit);
    if u64::try_from(active).unwrap_or(0) >= limit {
        return Err(StoreError::QueueFull { limit });
    }
    Ok(())
}

/// `ActiveQuota` when `owner` has `limit` non-terminal jobs. The owner's capped inserts take
/// turns on an advisory lock of their own (two-key form: its own key space), so two nodes
/// cannot both see room for the owner's last job; counting reads at most `limit` entries of
/// the partial index `jobs_owner_active`.
async fn ensure_owner_room(tx: &impl GenericClient, owner: UserId, limit: u64) -> Result<()> {
    // Ids past 2^31 wrap onto another owner's lock: they only take turns more often.
    let key = owner.0 as i32;
    row::execute(
        tx,
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&OWNER_LOCK_CLASS, &key],
    )
    .await?;
    let active: i64 = row::get(
        &query_one(
            tx,
            // `finished_at` is set exactly on terminal jobs (index `jobs_owner_active`).
            "SELECT count(*) FROM (
                 SELECT 1 FROM jobs WHERE owner_id = $1 AND finished_at IS NULL
                 LIMIT $2) AS active",
            &[&owner.0, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?,
        0,
    )?;
    if u64::try_from(active).unwrap_or(0) >= limit {
        return Err(StoreError::ActiveQuota { limit });
    }
    Ok(())
}

/// The job an earlier request with this idempotency key made: `Existing` with the same
/// request hash, `Conflict` with another.
pub(super) async fn existing(
    db: &impl GenericClient,
    owner: UserId,
    opts: &InsertOptions,
) -> Result<Option<Inserted>> {
    let Some(key) = &opts.idempotency else {
        return Ok(None);
    };
    let Some(found) = query_opt(
        db,
        "SELECT request_hash, job_id FROM idempotency_keys WHERE owner_id = $1 AND key = $2",
        &[&owner.0, &key.key],
    )
    .await?
    else {
        return Ok(None);
    };
    let hash: Vec<u8> = row::get(&found, 0)?;
    if hash != key.request_hash {
        return Err(StoreError::conflict(
            "idempotency key reused with a different request",
        ));
    }
    let id = JobId(row::get(&found, 1)?);
    Ok(Some(Inserted::Existing(get(db, None, id).await?)))
}

/// One job, its payload and result as a tree or as text (`J`); `NotFound` if absent or
/// not `owner`'s.
pub(super) async fn get<J: serde::de::DeserializeOwned>(
    db: &impl GenericClient,
    owner: Option<UserId>,
    id: JobId,
) -> Result<Job<J>> {
    let found = query_opt(
        db,
        concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
        ),
        &[&id.0, &owner.map(|o| o.0)],
    )
    .await?;
    row::job(&found.ok_or(StoreError::NotFound)?)
}

/// Reads job `id` whole with its `event_seq`, offers it to `cache`, and returns both the
/// job and what the cache kept.
pub(super) async fn read_whole(
    db: &impl GenericClient,
    cache: &JobCache,
    owner: Option<UserId>,
    id: JobId,
) -> Result<(Job<RawJson>, Option<Cached>)> {
    let found = query_opt(
        db,
        concat!(
            "SELECT ",
            job_columns!(),
            ", event_seq FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)"
        ),
        &[&id.0, &owner.map(|o| o.0)],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    let job = row::job::<RawJson>(&found)?;
    let kept = cache.offer(0, row::seq(&found, row::EVENT_SEQ)?, &job);
    Ok((job, kept))
}

/// The light status of job `id`, which the cache does not hold at its current version: a
/// job found finished is read whole once, so the next polls are served from the cache.
pub(super) async fn status_uncached(
    db: &impl GenericClient,
    cache: &JobCache,
    owner: Option<UserId>,
    id: JobId,
    inline_max: u32,
) -> Result<JobStatus> {
    let found = status(db, owner, id, inline_max).await?;
    if found.state.is_terminal()
        && let (_, Some(kept)) = read_whole(db, cache, owner, id).await?
    {
        return Ok(kept.status(inline_max));
    }
    Ok(found)
}

/// The light status of one job: only the columns a poller needs, the result only when its
/// JSON text is at most `inline_max` bytes (a larger one is not sent).
async fn status(
    db: &impl GenericClient,
    owner: Option<UserId>,
    id: JobId,
    inline_max: u32,
) -> Result<JobStatus> {
    let found = query_opt(
        db,
        "SELECT state, progress, updated_at, error,
                CASE WHEN octet_length(result::text) <= $3::bigint THEN result END, result IS NOT NULL
         FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)",
        &[&id.0, &owner.map(|o| o.0), &i64::from(inline_max)],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(JobStatus {
        id,
        state: row::state(&found, 0)?,
        progress: row::get(&found, 1)?,
        updated_at: row::get(&found, 2)?,
        error: row::get::<Option<Json<Failure>>>(&found, 3)?.map(|j| j.0),
        result: row::get::<Option<Json<RawJson>>>(&found, 4)?.map(|j| j.0),
        has_result: row::get(&found, 5)?,
    })
}

/// One job, its row locked until the transaction ends; `NotFound` as [`get`].
async fn lock(tx: &Transaction<'_>, owner: Option<UserId>, id: JobId) -> Result<Job> {
    let found = query_opt(
        tx,
        concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2) FOR UPDATE"
        ),
        &[&id.0, &owner.map(|o| o.0)],
    )
    .await?;
    row::job(&found.ok_or(StoreError::NotFound)?)
}

/// `NotFound` unless the job exists and `owner` may see it.
pub(super) async fn ensure_visible(
    db: &impl GenericClient,
    owner: Option<UserId>,
    id: JobId,
) -> Result<()> {
    query_opt(
        db,
        "SELECT 1 FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)",
        &[&id.0, &owner.map(|o| o.0)],
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::NotFound)
}

/// Writes back every column a state change may touch; returns the new event number.
async fn save(tx: &Transaction<'_>, job: &Job) -> Result<i32> {
    let found = query_one(
        tx,
        "UPDATE jobs SET state = $2, result = $3, error = $4, attempts = $5,
             max_attempts = $6, progress = $7, cancel_requested = $8, run_at = $9,
             started_at = $10, finished_at = $11, updated_at = $12, node = $13,
             lease_expires_at = $14, event_seq = event_seq + 1
         WHERE id = $1 RETURNING event_seq",
        &[
            &job.id.0,
            &job.state.as_str(),
            &job.result,
            &job.error.as_ref().map(json),
            &int(job.attempts),
            &int(job.max_attempts),
            &job.progress,
            &job.cancel_requested,
            &job.run_at,
            &job.started_at,
            &job.finished_at,
            &job.updated_at,
            &job.node,
            &job.lease_expires_at,
        ],
    )
    .await?;
    row::get(&found, 0)
}

/// Appends event `seq` for `job` as it is now (its state, `updated_at` and attempt number),
/// and queues `Changed` (plus `JobAvailable` if it became `queued`) for after the commit.
async fn record(
    tx: &Transaction<'_>,
    signals: &mut Signals,
    job: &Job,
    seq: i32,
    note: &Note,
) -> Result<()> {
    row::execute(
        tx,
        "INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &job.id.0,
            &seq,
            &job.state.as_str(),
            &job.updated_at,
            &int(job.attempts),
            &note.node,
            &note.message,
        ],
    )
    .await?;
    signals.changed(FeedEvent::of(job, i64::from(seq)));
    Ok(())
}

/// Locks the job `owner` may see, lets `decide` change it, and writes back what changed
/// with its event; the signals go out after the commit. Returns the job as written and
/// what the state machine made of the event.
pub(super) async fn change(
    tx: &Transaction<'_>,
    signals: &mut Signals,
    owner: Option<UserId>,
    id: JobId,
    decide: impl FnOnce(&mut Job) -> Result<Change>,
) -> Result<(Job, Step)> {
    let mut job = lock(tx, owner, id).await?;
    let before = job.state;
    let change = decide(&mut job)?;
    if let Some(note) = &change.note {
        let seq = save(tx, &job).await?;
        record(tx, signals, &job, seq, note).await?;
        super::counts::moved(tx, before, job.state).await?;
    }
    signals.requested(&job, &change);
    Ok((job, change.step))
}

/// Hard-deletes a terminal job; its events, log and idempotency keys go with it (cascade).
/// Records the bytes of the job's stored artifacts; `NotFound` unless it is `owner`'s.
pub(super) async fn artifacts_set(
    db: &impl GenericClient,
    owner: Option<UserId>,
    id: JobId,
    bytes: u64,
) -> Result<()> {
    let n = row::execute(
        db,
        "UPDATE jobs SET artifact_bytes = $3
         WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)",
        &[
            &id.0,
            &owner.map(|o| o.0),
            &i64::try_from(bytes).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The bytes of artifacts `owner`'s jobs keep (index `jobs_owner_artifacts`).
pub(super) async fn owner_artifact_bytes(db: &impl GenericClient, owner: UserId) -> Result<u64> {
    let r = query_one(
        db,
        "SELECT coalesce(sum(artifact_bytes), 0)::bigint FROM jobs
         WHERE owner_id = $1 AND artifact_bytes > 0",
        &[&owner.0],
    )
    .await?;
    Ok(u64::try_from(row::get::<i64>(&r, 0)?).unwrap_or(0))
}

/// How many of `owner`'s jobs are in each state (index `jobs_owner_created`).
pub(super) async fn owner_counts(
    db: &impl GenericClient,
    owner: UserId,
) -> Result<Vec<(JobState, u64)>> {
    let rows = super::row::query(
        db,
        "SELECT state, count(*) FROM jobs WHERE owner_id = $1 GROUP BY state",
        &[&owner.0],
    )
    .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for r in &rows {
        let n = u64::try_from(row::get::<i64>(r, 1)?).unwrap_or(0);
        counts.push((row::state(r, 0)?, n));
    }
    counts.sort_by_key(|(state, _)| JobState::ALL.iter().position(|s| s == state));
    Ok(counts)
}

pub(super) async fn delete(tx: &Transaction<'_>, owner: Option<UserId>, id: JobId) -> Result<()> {
    let job = lock(tx, owner, id).await?;
    if !job.state.is_terminal() {
        return Err(StoreError::conflict("job is not terminal"));
    }
    row::execute(tx, "DELETE FROM jobs WHERE id = $1", &[&id.0]).await?;
    Ok(())
}
