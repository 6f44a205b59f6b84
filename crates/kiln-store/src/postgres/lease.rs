//! Fenced writes of a running attempt (progress, lease renewal; completions are in
//! [`super::complete`]) and the lookup of leases to rescue.
//!
//! Every fenced statement matches `id AND state = 'running' AND attempts = <attempt> AND
//! node = <node>`: a worker whose lease was rescued (and the job claimed again, so
//! `attempts` moved on) matches nothing and gets `LeaseLost`, so it can never overwrite the
//! newer attempt. The `UPDATE` takes the row lock and re-checks the fence on the newest row
//! version, so two racing completions cannot both match.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kiln_domain::change::clamp_progress;
use kiln_domain::{JobId, JobState, Lease, Timestamp};

use super::row::{self, int, query, ts};
use crate::error::{Result, StoreError};
use crate::model::{LeaseFilter, Renewal};

/// The fence every attempt's write matches (parameters $1 id, $2 attempt, $3 node).
macro_rules! fenced {
    () => {
        " WHERE id = $1 AND state = 'running' AND attempts = $2 AND node = $3"
    };
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

/// Extends each held lease by `lease` from the database's clock, in one statement; reports
/// the lost ones and the pending cancels.
pub(super) async fn renew(
    db: &impl GenericClient,
    leases: &[Lease],
    lease: std::time::Duration,
) -> Result<Renewal> {
    // Only the node holding a lease renews it, so renewals of one job do not race; were two
    // statements to deadlock anyway, PostgreSQL aborts one and the caller sees `Transient`.
    // In job id order, as the batched completion takes them (`super::complete`), so the
    // two lock shared rows in one order.
    let mut sorted: Vec<&Lease> = leases.iter().collect();
    sorted.sort_unstable_by_key(|l| l.job_id.0);
    let ids: Vec<uuid::Uuid> = sorted.iter().map(|l| l.job_id.0).collect();
    let attempts: Vec<i32> = sorted.iter().map(|l| int(l.attempt)).collect();
    let nodes: Vec<&str> = sorted.iter().map(|l| l.node.as_str()).collect();
    // `state` is compared with a column, not a literal, as in the batched completion
    // (`super::complete`): each job is looked up by its primary key.
    let running: Vec<&str> = vec![JobState::Running.as_str(); leases.len()];
    let rows = query(
        db,
        "UPDATE jobs j SET lease_expires_at = now() + $4::float8 * interval '1 millisecond'
         FROM unnest($1::uuid[], $2::integer[], $3::text[], $5::text[])
              AS l(id, attempt, node, running)
         WHERE j.id = l.id AND j.state = l.running AND j.attempts = l.attempt
           AND j.node = l.node
         RETURNING j.id, j.attempts, j.node, j.cancel_requested",
        &[&ids, &attempts, &nodes, &millis(lease), &running],
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
        // The database's clock, never the asking node's: a node whose clock runs ahead
        // must not rescue live attempts early.
        LeaseFilter::Expired(_) => {
            query(
                db,
                "SELECT id, attempts, node FROM jobs
                 WHERE state = 'running' AND lease_expires_at < now() AND node IS NOT NULL
                 ORDER BY lease_expires_at",
                &[],
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

/// A lease's length as the `double precision` milliseconds its statements multiply
/// `interval '1 millisecond'` by.
pub(super) fn millis(lease: std::time::Duration) -> f64 {
    lease.as_secs_f64() * 1000.0
}
