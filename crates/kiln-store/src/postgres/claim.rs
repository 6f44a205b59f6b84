//! Handing out work: promotion of due `scheduled`/`failed` jobs to `queued`, the claim, and
//! the next instant something falls due.
//!
//! Both promotion and the claim are one statement each: a CTE picks rows with
//! `FOR UPDATE SKIP LOCKED` (so concurrent claimers on any number of nodes skip each other's
//! rows instead of waiting), an `UPDATE … RETURNING` moves them and bumps `event_seq`, and an
//! `INSERT` appends their events from the returned rows. A claim runs promotion first in the
//! same transaction, so a due job is claimable the moment it is due.

use deadpool_postgres::{GenericClient, Transaction};
use kiln_domain::{Event, Job, JobId, JobState, Step, Timestamp, UserId, transition};

use super::notify::Signals;
use super::row::{self, EVENT_SEQ, job_columns, query, ts};
use crate::error::{Result, StoreError};
use crate::model::{ClaimRequest, FeedEvent};
use crate::signal::Outbox;

/// Set for the rest of a claim's transaction: no sort, no bitmap scan. The claim must walk
/// the claim index (`jobs_claim`, in claim order) and stop after `LIMIT` rows; it costs the
/// same whatever waits. But the planner picks by its statistics, and with stale ones (a
/// table that grew since the last `ANALYZE`, a backlog piling up faster than autovacuum
/// looks) or in the generic plan of the prepared statement it estimated a handful of
/// queued rows and chose to fetch and sort every queued job: 13–23 ms per claim with
/// 17,000 waiting, 175 ms with 100,000 (`BENCHMARKS.md`). Sequential scans stay allowed:
/// disabling them makes every estimate enormous, which switches on JIT compilation.
/// (The claimed rows are put in order here, not by an `ORDER BY` that would now cost as a
/// disabled sort; JIT stays off in case any estimate grows that large.)
const CLAIM_PLAN: &str =
    "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off";

/// Most jobs promoted per transaction, so a burst of jobs all due at once is spread over
/// several short transactions instead of one long one.
pub(super) const PROMOTE_CHUNK: i64 = 1000;

/// The state `event` leads to from every state in `from` (the SQL moves them all at once,
/// so the state machine must agree on one target).
fn target(from: &[JobState], event: Event) -> Result<JobState> {
    let mut to = None;
    for &state in from {
        let Step::To(next) = transition(state, event)? else {
            return Err(StoreError::conflict(
                "the state machine refused a bulk move",
            ));
        };
        if to.is_some_and(|t| t != next) {
            return Err(StoreError::conflict("the state machine split a bulk move"));
        }
        to = Some(next);
    }
    to.ok_or_else(|| StoreError::conflict("an empty bulk move"))
}

/// Moves up to `max` due `scheduled`/`failed` jobs (not locked by another transaction) to
/// `queued`, earliest `run_at` first, each with a `due` event and counted; returns how
/// many.
pub(super) async fn promote_due(
    tx: &Transaction<'_>,
    signals: &mut Signals,
    now: Timestamp,
    max: i64,
) -> Result<u64> {
    let queued = target(&[JobState::Scheduled, JobState::Failed], Event::Due)?;
    let rows = query(
        tx,
        concat!(
            "WITH due AS (
                 SELECT id, state FROM jobs
                 WHERE state IN ('scheduled', 'failed') AND run_at <= $1
                 ORDER BY run_at LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), moved AS (
                 UPDATE jobs j SET state = $3, updated_at = $1, event_seq = j.event_seq + 1
                 FROM due WHERE j.id = due.id
                 RETURNING j.id, j.owner_id, j.attempts, j.event_seq, j.type, j.queue,
                           due.state AS was
             ), events AS (
                 INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
                 SELECT id, event_seq, $3, $1, attempts, NULL, 'due' FROM moved
             ), counted AS (
                 INSERT INTO job_counts (state, shard, n)
                 SELECT state, ",
            super::counts::shard!(),
            ", sum(n) FROM (
                     SELECT was AS state, -1 AS n FROM moved
                     UNION ALL SELECT $3, 1 FROM moved
                 ) c GROUP BY state ORDER BY state
                 ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n
             )
             SELECT id, owner_id, type, queue, event_seq, attempts FROM moved"
        ),
        &[&ts(now), &max, &queued.as_str()],
    )
    .await?;
    for r in &rows {
        signals.changed(FeedEvent {
            job_id: JobId(row::get(r, 0)?),
            owner: UserId(row::get(r, 1)?),
            job_type: row::parsed(r, 2)?,
            queue: row::parsed(r, 3)?,
            seq: row::seq(r, 4)?,
            state: queued,
            attempt: row::count(r, 5)?,
            at: ts(now),
        });
    }
    Ok(rows.len() as u64)
}

/// Promotes due work, then claims up to `req.limit` queued jobs for `req.node`, at most
/// `req.per_owner` of one owner. With that bound it looks twice `req.limit` deep in the
/// claim order: the rows past an owner's bound are locked with the others (the claim index
/// is walked once) but left queued, and free again at the commit.
pub(super) async fn claim(
    tx: &Transaction<'_>,
    signals: &mut Signals,
    req: &ClaimRequest,
) -> Result<Vec<Job>> {
    promote_due(tx, signals, req.now, PROMOTE_CHUNK).await?;
    let running = target(&[JobState::Queued], Event::Claim)?;
    let message = format!("claimed by {}", req.node);
    // The claim index, in its order, whatever the statistics say (see CLAIM_PLAN).
    tx.batch_execute(CLAIM_PLAN).await?;
    let rows = query(
        tx,
        concat!(
            "WITH picked AS MATERIALIZED (
                 SELECT id, owner_id, priority, run_at FROM jobs
                 WHERE state = 'queued' AND type = ANY($1) AND queue <> ALL($2)
                   AND queue NOT IN (SELECT name FROM queue_controls WHERE paused)
                   AND owner_id <> ALL($9)
                 ORDER BY priority DESC, run_at, id
                 LIMIT $12
                 FOR UPDATE SKIP LOCKED
             ), allowed AS (
                 SELECT id FROM (
                     SELECT id, owner_id, priority, run_at, row_number() OVER (
                         PARTITION BY owner_id ORDER BY priority DESC, run_at, id) AS nth
                     FROM picked
                 ) ranked
                 WHERE nth <= $10 OR owner_id = ANY($11)
                 ORDER BY priority DESC, run_at, id
                 LIMIT $3
             ), taken AS (
                 UPDATE jobs j SET state = $7, attempts = j.attempts + 1, started_at = $4,
                     node = $5, lease_expires_at = now() + $6::float8 * interval '1 millisecond', cancel_requested = false, progress = 0,
                     updated_at = $4, event_seq = j.event_seq + 1
                 FROM allowed WHERE j.id = allowed.id
                 RETURNING j.*
             ), events AS (
                 INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
                 SELECT id, event_seq, state, updated_at, attempts, node, $8 FROM taken
             ), counted AS (
                 INSERT INTO job_counts (state, shard, n)
                 SELECT v.state, ",
            super::counts::shard!(),
            ", v.n
                 FROM (SELECT count(*) AS c FROM taken) t,
                      LATERAL (VALUES ('queued', -t.c), ($7, t.c)) AS v(state, n)
                 WHERE t.c > 0 ORDER BY v.state
                 ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n
             )
             SELECT ",
            job_columns!(),
            ", event_seq FROM taken"
        ),
        &[
            &req.types,
            &req.exclude_queues,
            &i64::from(req.limit),
            &ts(req.now),
            &req.node,
            &super::lease::millis(req.lease),
            &running.as_str(),
            &message,
            &req.exclude_owners.iter().map(|o| o.0).collect::<Vec<i64>>(),
            &i64::from(req.per_owner.unwrap_or(u32::MAX)),
            &req.per_owner_exempt.iter().map(|o| o.0).collect::<Vec<i64>>(),
            // With a bound per owner, rows past it are skipped: look twice as deep.
            &(i64::from(req.limit) * if req.per_owner.is_some() { 2 } else { 1 }),
        ],
    )
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        let job = row::job(r)?;
        signals.changed(FeedEvent::of(&job, row::seq(r, EVENT_SEQ)?));
        claimed.push(job);
    }
    // Claim order: the highest priority, then the earliest due, then the oldest id.
    claimed.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.0.cmp(&b.id.0))
    });
    Ok(claimed)
}

/// The earliest `run_at` of a `scheduled` or `failed` job.
pub(super) async fn next_due(db: &impl GenericClient) -> Result<Option<Timestamp>> {
    let r = row::query_one(
        db,
        "SELECT min(run_at) FROM jobs WHERE state IN ('scheduled', 'failed')",
        &[],
    )
    .await?;
    row::get(&r, 0)
}
