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
use kiln_domain::change::{Completion, clamp_progress};
use kiln_domain::{Job, JobId, Lease, Timestamp};
use tokio_postgres::types::ToSql;

use super::notify::Signals;
use super::row::{self, int, job_columns, json, query, query_opt, ts};
use crate::error::{Result, StoreError};
use crate::model::{FeedEvent, LeaseFilter, Outcome, Renewal};
use crate::signal::Outbox;

/// The fence every attempt's write matches (parameters $1 id, $2 attempt, $3 node).
macro_rules! fenced {
    () => {
        " WHERE id = $1 AND state = 'running' AND attempts = $2 AND node = $3"
    };
}

/// A completion in one statement (so one round trip, in its own implicit transaction).
/// The fenced `UPDATE` (`$1` id, `$2` attempt, `$3` node) writes the ending a
/// [`Completion`] decided for the row's own `cancel_requested` flag: `$4`/`$5` the state,
/// `$6`/`$7` the next `run_at`, `$8`/`$9` `finished_at` (settled/cancel pending); `$10` the
/// result, `$11` the error, `$12` the progress (a null keeps the column); `$13` the time.
/// Then the event row from the updated row (its bumped `event_seq`, the lease's node,
/// `$14`/`$15` the message), then the job and its event number.
const COMPLETE: &str = concat!(
    "WITH done AS (UPDATE jobs SET
         state = CASE WHEN cancel_requested THEN $5::text ELSE $4::text END,
         run_at = coalesce(CASE WHEN cancel_requested THEN $7::timestamptz
                                ELSE $6::timestamptz END, run_at),
         finished_at = CASE WHEN cancel_requested THEN $9::timestamptz
                            ELSE $8::timestamptz END,
         result = coalesce($10::json, result), error = coalesce($11::jsonb, error),
         progress = coalesce($12::real, progress), updated_at = $13,
         node = NULL, lease_expires_at = NULL, event_seq = event_seq + 1",
    fenced!(),
    " RETURNING *), event AS (
        INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
        SELECT id, event_seq, state, updated_at, attempts, $3,
               CASE WHEN cancel_requested THEN $15::text ELSE $14::text END
        FROM done)
     SELECT ",
    job_columns!(),
    ", event_seq FROM done"
);

/// Ends the attempt held by `lease` with `outcome`, at `now`.
pub(super) async fn complete(
    db: &impl GenericClient,
    signals: &mut Signals,
    lease: &Lease,
    outcome: Outcome,
    now: Timestamp,
) -> Result<Job> {
    let done = Completion::decide(outcome, now)?;
    let [settled, pending] = [&done.settled, &done.cancel_pending];
    let states = [settled.state.as_str(), pending.state.as_str()];
    let params: [&(dyn ToSql + Sync); 15] = [
        &lease.job_id.0,
        &int(lease.attempt),
        &lease.node,
        &states[0],
        &states[1],
        &settled.run_at,
        &pending.run_at,
        &settled.finished_at,
        &pending.finished_at,
        &done.result,
        &done.error.as_ref().map(json),
        &done.progress,
        &done.at,
        &settled.message,
        &pending.message,
    ];
    let found = query_opt(db, COMPLETE, &params)
        .await?
        .ok_or(StoreError::LeaseLost)?;
    let job = row::job(&found)?;
    signals.changed(FeedEvent::of(&job, row::seq(&found, row::EVENT_SEQ)?));
    Ok(job)
}

/// Records the attempt's progress (see [`clamp_progress`]).
pub(super) async fn progress(
    db: &impl GenericClient,
    lease: &Lease,
    progress: f32,
    now: Timestamp,
) -> Result<()> {
    let changed = row::execute(
        db,
        concat!("UPDATE jobs SET progress = $4, updated_at = $5", fenced!()),
        &[
            &lease.job_id.0,
            &int(lease.attempt),
            &lease.node,
            &clamp_progress(progress),
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
