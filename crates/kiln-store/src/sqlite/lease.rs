//! Fenced writes of a running attempt (completion, progress, lease renewal) and the lookup
//! of leases to rescue.
//!
//! Every fenced statement matches `id AND state = 'running' AND attempts = <attempt> AND
//! node = <node>`: a worker whose lease was rescued (and the job claimed again, so
//! `attempts` moved on) matches nothing and gets `LeaseLost`, so it can never overwrite the
//! newer attempt.

use kiln_domain::change::{Completion, clamp_progress};
use kiln_domain::{Job, JobState, Lease, Timestamp};
use rusqlite::{Connection, OptionalExtension};

use super::row::{self, id_bytes, ms, opt_ms, to_json};
use super::writer::Tx;
use super::{claim, event, jobs};
use crate::error::{Result, StoreError};
use crate::lost_lease_is_an_answer;
use crate::model::{ClaimRequest, LeaseFilter, Outcome, Renewal};

/// The fence every attempt's write matches (parameters ?1 id, ?2 attempt, ?3 node).
macro_rules! fenced {
    () => {
        " WHERE id = ?1 AND state = 'running' AND attempts = ?2 AND node = ?3"
    };
}

/// Ends an attempt as a [`Completion`] decided, picking the ending by the row's own
/// `cancel_requested` flag: ?4/?5 the state, ?6/?7 the next `run_at`, ?8/?9 `finished_at`
/// (settled/cancel pending); ?10 the result, ?11 the error, ?12 the progress (a null keeps
/// the column); ?13 the time.
const COMPLETE: &str = concat!(
    "UPDATE jobs SET
         state = CASE WHEN cancel_requested THEN ?5 ELSE ?4 END,
         run_at = coalesce(CASE WHEN cancel_requested THEN ?7 ELSE ?6 END, run_at),
         finished_at = CASE WHEN cancel_requested THEN ?9 ELSE ?8 END,
         result = coalesce(?10, result), error = coalesce(?11, error),
         progress = coalesce(?12, progress),
         updated_at = ?13, node = NULL, lease_expires_at = NULL",
    fenced!()
);

/// Ends the attempt held by `lease` with `outcome`, at `now`.
pub(super) fn complete(
    tx: &mut Tx<'_>,
    lease: &Lease,
    outcome: Outcome,
    now: Timestamp,
) -> Result<Job> {
    let done = Completion::decide(outcome, now)?;
    let (settled, pending) = (&done.settled, &done.cancel_pending);
    let changed = tx.db.prepare_cached(COMPLETE)?.execute((
        id_bytes(lease.job_id),
        lease.attempt,
        lease.node.as_str(),
        settled.state.as_str(),
        pending.state.as_str(),
        opt_ms(settled.run_at),
        opt_ms(pending.run_at),
        opt_ms(settled.finished_at),
        opt_ms(pending.finished_at),
        done.result.as_ref().map(to_json).transpose()?,
        done.error.as_ref().map(to_json).transpose()?,
        done.progress,
        ms(done.at),
    ))?;
    if changed == 0 {
        return Err(StoreError::LeaseLost);
    }
    // Read back rather than `RETURNING`: SQLite runs RETURNING as a trigger that stages rows
    // in a temporary table under a statement journal, twice the cost of this lookup.
    let job = jobs::get(tx.db, None, lease.job_id)?;
    tx.counts.moved(JobState::Running, job.state);
    let message = &done.ending(job.cancel_requested).message;
    event::record(tx, &job, Some(&lease.node), message)?;
    Ok(job)
}

/// [`complete`], then (with `next`) [`claim::claim`], in one writer command. A lost lease
/// has written nothing and the claim goes ahead; any other error (a SQLite one) fails the
/// whole command, and the writer then commits nothing of its batch (the command runs
/// without a savepoint), so the caller may simply try again.
pub(super) fn complete_and_claim(
    tx: &mut Tx<'_>,
    lease: &Lease,
    outcome: Outcome,
    now: Timestamp,
    next: Option<&ClaimRequest>,
) -> Result<(Result<Job>, Vec<Job>)> {
    let completed = lost_lease_is_an_answer(complete(tx, lease, outcome, now))?;
    let claimed = match next {
        Some(req) => claim::claim(tx, req)?,
        None => Vec::new(),
    };
    Ok((completed, claimed))
}

/// Records the attempt's progress (see [`clamp_progress`]).
pub(super) fn progress(tx: &Tx<'_>, lease: &Lease, progress: f32, now: Timestamp) -> Result<()> {
    let changed = tx
        .db
        .prepare_cached(concat!(
            "UPDATE jobs SET progress = ?4, updated_at = ?5",
            fenced!()
        ))?
        .execute((
            id_bytes(lease.job_id),
            lease.attempt,
            lease.node.as_str(),
            clamp_progress(progress),
            ms(now),
        ))?;
    if changed == 0 {
        return Err(StoreError::LeaseLost);
    }
    Ok(())
}

/// Extends each held lease to `until`; reports the lost ones and the pending cancels.
pub(super) fn renew(tx: &Tx<'_>, leases: &[Lease], until: Timestamp) -> Result<Renewal> {
    let mut stmt = tx.db.prepare_cached(concat!(
        "UPDATE jobs SET lease_expires_at = ?4",
        fenced!(),
        " RETURNING cancel_requested"
    ))?;
    let mut renewal = Renewal::default();
    for lease in leases {
        let cancel: Option<bool> = stmt
            .query_row(
                (
                    id_bytes(lease.job_id),
                    lease.attempt,
                    lease.node.as_str(),
                    ms(until),
                ),
                |r| r.get(0),
            )
            .optional()?;
        match cancel {
            None => renewal.lost.push(lease.job_id),
            Some(true) => renewal.cancel_requested.push(lease.job_id),
            Some(false) => {}
        }
    }
    Ok(renewal)
}

/// Leases of running jobs matching `filter`.
pub(super) fn find(db: &Connection, filter: &LeaseFilter) -> Result<Vec<Lease>> {
    let map = |r: &rusqlite::Row<'_>| {
        Ok(Lease {
            job_id: row::job_id(r, 0)?,
            attempt: r.get(1)?,
            node: r.get(2)?,
        })
    };
    let leases = match filter {
        LeaseFilter::Expired(at) => db
            .prepare_cached(
                "SELECT id, attempts, node FROM jobs
                 WHERE state = 'running' AND lease_expires_at < ?1 AND node IS NOT NULL
                 ORDER BY lease_expires_at",
            )?
            .query_map([ms(*at)], map)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        LeaseFilter::Node(node) => db
            .prepare_cached(
                "SELECT id, attempts, node FROM jobs INDEXED BY jobs_lease
                 WHERE state = 'running' AND node = ?1",
            )?
            .query_map([node], map)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(leases)
}
