//! Submissions coalesced: plain submissions (no idempotency key, no queue cap) that arrive
//! while others are being written share one statement, a multi-row `INSERT … SELECT FROM
//! unnest(…)` of the jobs and their `submitted` events, and one commit.
//!
//! Written by hand for the same reason as [`super::complete`]: a statement and a commit per
//! submission kept PostgreSQL's share of the two cores busy with per-statement overhead.
//! Batching is natural ([`super::batch::gather`]); each submission is answered only after
//! the commit that holds it, so a `202` always names a stored job. A batch refused for a
//! reason other than a transient one is written again job by job, so one bad row fails
//! alone.

use deadpool_postgres::Pool;
use kiln_domain::{Job, NewJob};

use super::batch::{Asked, Gathered};
use super::counts::counted_inserts;
use super::notify::Signals;
use super::row::{self, int};
use super::{Publisher, map_pool_err};
use crate::error::{Result, StoreError};
use crate::model::{FeedEvent, stored_job};
use crate::signal::Outbox;

/// Batches at the database at once: two, so submissions that arrive meanwhile gather into
/// larger batches (fewer commits for the same jobs) than with four; one left the
/// connections idle between batches (`BENCHMARKS.md`).
const IN_FLIGHT: usize = 2;

/// Submissions per statement at most.
const MAX_BATCH: usize = 512;

/// The jobs of one batch, their first events and their counts, in one statement: `$1`…
/// are arrays with one element per job.
const INSERT_MANY: &str = concat!(
    "WITH job AS (
         INSERT INTO jobs (id, owner_id, type, queue, name, state, priority, payload,
                           max_attempts, created_at, run_at, updated_at, event_seq,
                           trace_id, parent_span_id)
         SELECT id, owner_id, type, queue, name, state, priority, payload::json,
                max_attempts, created_at, run_at, created_at, 1, trace_id, parent_span_id
         FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::int2[], $8::text[], $9::int4[], $10::timestamptz[],
                     $11::timestamptz[], $12::text[], $13::text[])
              AS i(id, owner_id, type, queue, name, state, priority, payload, max_attempts,
                   created_at, run_at, trace_id, parent_span_id)
         RETURNING id, state, created_at
     ), events AS (
         INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         SELECT id, 1, state, created_at, 0, NULL, 'submitted' FROM job
     )",
    counted_inserts!()
);

/// The handle the store submits through; the task that writes ends with it.
pub(super) struct Inserter(Gathered<Job, Job>);

impl Inserter {
    /// Starts the task that writes, on `pool`; committed submissions are published through
    /// `publisher`.
    pub fn start(pool: Pool, publisher: Publisher) -> Self {
        Self(Gathered::start(
            "inserter",
            IN_FLIGHT,
            MAX_BATCH,
            move |batch| {
                let (pool, publisher) = (pool.clone(), publisher.clone());
                async move { answer(&pool, &publisher, batch).await }
            },
        ))
    }

    /// Stores `new` with its `submitted` event; the stored job once committed.
    pub async fn insert(&self, new: NewJob) -> Result<Job> {
        self.0.ask(stored_job(new)?).await
    }
}

/// Writes `batch` and answers each submission.
async fn answer(pool: &Pool, publisher: &Publisher, batch: Vec<Asked<Job, Job>>) {
    let (jobs, replies): (Vec<Job>, Vec<_>) =
        batch.into_iter().map(|a| (a.question, a.reply)).unzip();
    match write(pool, &jobs).await {
        Ok(()) => {
            publisher.publish(signals_of(&jobs));
            for (reply, job) in replies.into_iter().zip(jobs) {
                // The request may have gone away (a client that hung up).
                let _ = reply.send(Ok(job));
            }
        }
        Err(e) if jobs.len() > 1 && !matches!(e, StoreError::Transient(_)) => {
            // Something in the batch is refused: write each alone, so only it fails.
            for (reply, job) in replies.into_iter().zip(jobs) {
                let one = std::slice::from_ref(&job);
                let written = write(pool, one).await;
                if written.is_ok() {
                    publisher.publish(signals_of(one));
                }
                let _ = reply.send(written.map(|()| job));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(super::batch::copy_err(&e)));
            }
        }
    }
}

/// What the stored `jobs` tell this node's subscribers and the other nodes.
fn signals_of(jobs: &[Job]) -> Signals {
    let mut signals = Signals::default();
    for job in jobs {
        signals.changed(FeedEvent::of(job, 1));
    }
    signals
}

/// Inserts `jobs` and their events in one statement (its own transaction).
async fn write(pool: &Pool, jobs: &[Job]) -> Result<()> {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut parents = Vec::with_capacity(n);
    for job in jobs {
        ids.push(job.id.0);
        owners.push(job.owner.0);
        types.push(job.job_type.as_str());
        queues.push(job.queue.as_str());
        names.push(job.name.as_deref());
        states.push(job.state.as_str());
        priorities.push(job.priority);
        payloads.push(job.payload.to_string());
        max_attempts.push(int(job.max_attempts));
        created.push(job.created_at);
        run_at.push(job.run_at);
        traces.push(job.trace_id.as_deref());
        parents.push(job.parent_span_id.as_deref());
    }
    let client = pool.get().await.map_err(map_pool_err)?;
    row::execute(
        &client,
        INSERT_MANY,
        &[
            &ids,
            &owners,
            &types,
            &queues,
            &names,
            &states,
            &priorities,
            &payloads,
            &max_attempts,
            &created,
            &run_at,
            &traces,
            &parents,
        ],
    )
    .await?;
    Ok(())
}
