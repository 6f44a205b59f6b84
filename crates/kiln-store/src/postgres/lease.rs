//! Fenced writes of a running attempt (completion, progress, lease renewal) and the lookup
//! of leases to rescue.
//!
//! Every fenced statement matches `id AND state = 'running' AND attempts = <attempt> AND
//! node = <node>`: a worker whose lease was rescued (and the job claimed again, so
//! `attempts` moved on) matches nothing and gets `LeaseLost`, so it can never overwrite the
//! newer attempt. The `UPDATE` takes the row lock and re-checks the fence on the newest row
//! version, so two racing completions cannot both match.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kiln_domain::{Event, Failure, Job, JobId, JobState, Lease, Step, Timestamp, transition};
use tokio_postgres::types::ToSql;

use super::notify::Signals;
use super::row::{self, int, job_columns, json, query, query_opt, ts};
use crate::error::{Result, StoreError};
use crate::model::{FeedEvent, LeaseFilter, Outcome, Renewal};

/// The fence every attempt's write matches (parameters $1 id, $2 attempt, $3 node).
macro_rules! fenced {
    () => {
        " WHERE id = $1 AND state = 'running' AND attempts = $2 AND node = $3"
    };
}

/// A completion in one statement (so one round trip, in its own implicit transaction):
/// the fenced `UPDATE` (`$1` id, `$2` attempt, `$3` node) setting `$sets`, then the event
/// row from the updated row (its bumped `event_seq`, the lease's node, `$message`), then
/// the job and its event number.
macro_rules! completion {
    ($sets:literal, $message:literal) => {
        concat!(
            "WITH done AS (UPDATE jobs SET ",
            $sets,
            ", node = NULL, lease_expires_at = NULL, event_seq = event_seq + 1",
            fenced!(),
            " RETURNING *), event AS (
                INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
                SELECT id, event_seq, state, updated_at, attempts, $3, ",
            $message,
            " FROM done) SELECT ",
            job_columns!(),
            ", event_seq FROM done"
        )
    };
}

/// Success: the result, progress 1, terminal.
const SUCCEED: &str = completion!(
    "state = $4, result = $5, progress = 1, finished_at = $6, updated_at = $6",
    "'succeeded'"
);

/// Failure: `failed` with the next attempt due at `$7`, or `dead` when `$7` is null. A
/// retryable failure of a job with a cancel request pending ends it `$8` (cancelled)
/// instead: otherwise the retry would run it again and the claim would clear the request,
/// silently dropping the owner's cancel. Decided from the row's own flag, in the same
/// fenced UPDATE (as the SQLite backend does). `$9` is the failure's event message.
const FAIL: &str = completion!(
    "state = CASE WHEN $7::timestamptz IS NOT NULL AND cancel_requested
                  THEN $8 ELSE $4 END,
     error = $5,
     run_at = CASE WHEN cancel_requested THEN run_at ELSE coalesce($7, run_at) END,
     finished_at = CASE WHEN $7::timestamptz IS NULL OR cancel_requested
                        THEN $6::timestamptz END,
     updated_at = $6",
    "CASE WHEN state = $8 THEN 'cancelled after ' || $9::text ELSE $9::text END"
);

/// Stopped by a cancel request: terminal.
const ABORT: &str = completion!(
    "state = $4, finished_at = $5, updated_at = $5",
    "'cancelled'"
);

/// Ends the attempt held by `lease` with `outcome`, at `now`.
pub(super) async fn complete(
    db: &impl GenericClient,
    signals: &mut Signals,
    lease: &Lease,
    outcome: Outcome,
    now: Timestamp,
) -> Result<Job> {
    let event = match &outcome {
        Outcome::Succeeded(_) => Event::Succeed,
        Outcome::Failed { retry_at, .. } => Event::Fail {
            retry: retry_at.is_some(),
        },
        Outcome::Cancelled => Event::Abort,
    };
    let (Step::To(state), Step::To(aborted)) = (
        transition(JobState::Running, event)?,
        transition(JobState::Running, Event::Abort)?,
    ) else {
        return Err(StoreError::LeaseLost);
    };
    let found = end_attempt(db, lease, &outcome, [state, aborted], ts(now))
        .await?
        .ok_or(StoreError::LeaseLost)?;
    let job = row::job(&found)?;
    signals.changed(FeedEvent::of(&job, row::seq(&found, row::EVENT_SEQ)?));
    Ok(job)
}

/// The fenced completion: the job row, or `None` if `lease` no longer holds the job.
/// `[to, aborted]` are the states the state machine chose.
async fn end_attempt(
    db: &impl GenericClient,
    lease: &Lease,
    outcome: &Outcome,
    [to, aborted]: [JobState; 2],
    now: Timestamp,
) -> Result<Option<tokio_postgres::Row>> {
    let (id, attempt, node) = (lease.job_id.0, int(lease.attempt), lease.node.as_str());
    let to = to.as_str();
    match outcome {
        Outcome::Succeeded(result) => {
            query_opt(db, SUCCEED, &[&id, &attempt, &node, &to, result, &now]).await
        }
        Outcome::Failed { failure, retry_at } => {
            let params: [&(dyn ToSql + Sync); 9] = [
                &id,
                &attempt,
                &node,
                &to,
                &json(failure),
                &now,
                &retry_at.map(ts),
                &aborted.as_str(),
                &failure_message(failure),
            ];
            query_opt(db, FAIL, &params).await
        }
        Outcome::Cancelled => query_opt(db, ABORT, &[&id, &attempt, &node, &to, &now]).await,
    }
}

/// The event message of a failure: `<code>: <message>`.
fn failure_message(failure: &Failure) -> String {
    format!("{}: {}", failure.code, failure.message)
}

/// Records the attempt's progress (clamped to 0.0–1.0; NaN counts as 0).
pub(super) async fn progress(
    db: &impl GenericClient,
    lease: &Lease,
    progress: f32,
    now: Timestamp,
) -> Result<()> {
    let progress = if progress.is_nan() {
        0.0
    } else {
        progress.clamp(0.0, 1.0)
    };
    let changed = row::execute(
        db,
        concat!("UPDATE jobs SET progress = $4, updated_at = $5", fenced!()),
        &[
            &lease.job_id.0,
            &int(lease.attempt),
            &lease.node,
            &progress,
            &ts(now),
        ],
    )
    .await?;
    if changed == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

/// Extends each held lease to `until` in one statement; reports the lost ones and the
/// pending cancels.
pub(super) async fn renew(
    db: &impl GenericClient,
    leases: &[Lease],
    until: Timestamp,
) -> Result<Renewal> {
    // Only the node holding a lease renews it, so renewals of one job do not race; were two
    // to deadlock anyway, PostgreSQL aborts one and the caller sees `Transient`.
    let ids: Vec<uuid::Uuid> = leases.iter().map(|l| l.job_id.0).collect();
    let attempts: Vec<i32> = leases.iter().map(|l| int(l.attempt)).collect();
    let nodes: Vec<&str> = leases.iter().map(|l| l.node.as_str()).collect();
    let rows = query(
        db,
        "UPDATE jobs j SET lease_expires_at = $4
         FROM unnest($1::uuid[], $2::integer[], $3::text[]) AS l(id, attempt, node)
         WHERE j.id = l.id AND j.state = 'running' AND j.attempts = l.attempt
           AND j.node = l.node
         RETURNING j.id, j.attempts, j.node, j.cancel_requested",
        &[&ids, &attempts, &nodes, &ts(until)],
    )
    .await?;
    // Keyed by the whole lease: a stale lease of a job whose current lease is also renewed
    // here is still lost.
    let mut held = HashMap::with_capacity(rows.len());
    for r in &rows {
        let lease = Lease {
            job_id: JobId(row::get(r, 0)?),
            attempt: row::count(r, 1)?,
            node: row::get(r, 2)?,
        };
        held.insert(lease, row::get::<bool>(r, 3)?);
    }
    let mut renewal = Renewal::default();
    for lease in leases {
        match held.get(lease) {
            None => renewal.lost.push(lease.job_id),
            Some(true) => renewal.cancel_requested.push(lease.job_id),
            Some(false) => {}
        }
    }
    Ok(renewal)
}

/// Leases of running jobs matching `filter`.
pub(super) async fn find(db: &impl GenericClient, filter: &LeaseFilter) -> Result<Vec<Lease>> {
    let rows = match filter {
        LeaseFilter::ExpiredAt(at) => {
            query(
                db,
                "SELECT id, attempts, node FROM jobs
                 WHERE state = 'running' AND lease_expires_at < $1 AND node IS NOT NULL
                 ORDER BY lease_expires_at",
                &[&ts(*at)],
            )
            .await?
        }
        LeaseFilter::Node(node) => {
            query(
                db,
                "SELECT id, attempts, node FROM jobs WHERE state = 'running' AND node = $1",
                &[node],
            )
            .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(Lease {
                job_id: JobId(row::get(r, 0)?),
                attempt: row::count(r, 1)?,
                node: row::get(r, 2)?,
            })
        })
        .collect()
}
