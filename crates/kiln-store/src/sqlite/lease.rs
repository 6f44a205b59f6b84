//! Fenced writes of a running attempt (completion, progress, lease renewal) and the lookup
//! of leases to rescue.
//!
//! Every fenced statement matches `id AND state = 'running' AND attempts = <attempt> AND
//! node = <node>`: a worker whose lease was rescued (and the job claimed again, so
//! `attempts` moved on) matches nothing and gets `LeaseLost`, so it can never overwrite the
//! newer attempt.

use kiln_domain::{Event, Failure, Job, JobState, Lease, Step, Timestamp, transition};
use rusqlite::{Connection, OptionalExtension};

use super::row::{self, id_bytes, ms, to_json};
use super::writer::Tx;
use super::{claim, event, jobs};
use crate::error::{Result, StoreError};
use crate::model::{ClaimRequest, LeaseFilter, Outcome, Renewal};

/// The fence every attempt's write matches (parameters ?1 id, ?2 attempt, ?3 node).
macro_rules! fenced {
    () => {
        " WHERE id = ?1 AND state = 'running' AND attempts = ?2 AND node = ?3"
    };
}

/// Ends the attempt held by `lease` with `outcome`, at `now`.
pub(super) fn complete(
    tx: &mut Tx<'_>,
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
    let Step::To(state) = transition(JobState::Running, event)? else {
        return Err(StoreError::LeaseLost);
    };
    // A retryable failure of an attempt whose job has a cancel request pending ends the job
    // as `cancelled` (the attempt stopped; Event::Abort), not `failed`: otherwise the
    // retry would run the job again and the claim would clear the request, silently
    // dropping the owner's cancel (SPEC §1: a running job asked to cancel becomes
    // `cancelled`). Decided in the same fenced UPDATE, from the row's own flag.
    let Step::To(aborted) = transition(JobState::Running, Event::Abort)? else {
        return Err(StoreError::LeaseLost);
    };
    let fence = (id_bytes(lease.job_id), lease.attempt, lease.node.as_str());
    let (now_ms, to) = (ms(now), state.as_str());
    let changed = match &outcome {
        Outcome::Succeeded(result) => tx
            .db
            .prepare_cached(concat!(
                "UPDATE jobs SET state = ?4, result = ?5, progress = 1.0, finished_at = ?6,
                     updated_at = ?6, node = NULL, lease_expires_at = NULL",
                fenced!()
            ))?
            .execute((fence.0, fence.1, fence.2, to, to_json(result)?, now_ms)),
        Outcome::Failed { failure, retry_at } => tx
            .db
            .prepare_cached(concat!(
                "UPDATE jobs SET
                     state = CASE WHEN ?7 IS NOT NULL AND cancel_requested THEN ?8 ELSE ?4 END,
                     error = ?5,
                     run_at = CASE WHEN cancel_requested THEN run_at
                                   ELSE coalesce(?7, run_at) END,
                     finished_at = CASE WHEN ?7 IS NULL OR cancel_requested THEN ?6 END,
                     updated_at = ?6, node = NULL, lease_expires_at = NULL",
                fenced!()
            ))?
            .execute((
                fence.0,
                fence.1,
                fence.2,
                to,
                to_json(failure)?,
                now_ms,
                retry_at.map(ms),
                aborted.as_str(),
            )),
        Outcome::Cancelled => tx
            .db
            .prepare_cached(concat!(
                "UPDATE jobs SET state = ?4, finished_at = ?5, updated_at = ?5,
                     node = NULL, lease_expires_at = NULL",
                fenced!()
            ))?
            .execute((fence.0, fence.1, fence.2, to, now_ms)),
    }?;
    if changed == 0 {
        return Err(StoreError::LeaseLost);
    }
    // Read back rather than `RETURNING`: SQLite runs RETURNING as a trigger that stages rows
    // in a temporary table under a statement journal, twice the cost of this lookup.
    let job = jobs::get(tx.db, None, lease.job_id)?;
    tx.counts.moved(JobState::Running, job.state);
    let message = match &outcome {
        Outcome::Succeeded(_) => "succeeded".to_owned(),
        Outcome::Failed { failure, .. } if job.state == aborted => {
            format!("cancelled after {}", failure_message(failure))
        }
        Outcome::Failed { failure, .. } => failure_message(failure),
        Outcome::Cancelled => "cancelled".to_owned(),
    };
    event::record(tx, &job, Some(&lease.node), &message)?;
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
    let completed = match complete(tx, lease, outcome, now) {
        Err(e) if !matches!(e, StoreError::LeaseLost) => return Err(e),
        completed => completed,
    };
    let claimed = match next {
        Some(req) => claim::claim(tx, req)?,
        None => Vec::new(),
    };
    Ok((completed, claimed))
}

/// The event message of a failure: `<code>: <message>`.
fn failure_message(failure: &Failure) -> String {
    format!("{}: {}", failure.code, failure.message)
}

/// Records the attempt's progress (clamped to 0.0–1.0; NaN counts as 0).
pub(super) fn progress(tx: &Tx<'_>, lease: &Lease, progress: f32, now: Timestamp) -> Result<()> {
    let progress = if progress.is_nan() {
        0.0
    } else {
        progress.clamp(0.0, 1.0)
    };
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
            progress,
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
        LeaseFilter::ExpiredAt(at) => db
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
