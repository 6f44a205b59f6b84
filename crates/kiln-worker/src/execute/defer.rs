//! How an attempt's run ended ([`Attempted`]), and the end that stores no outcome: the
//! kernel handed its job back for later ([`defer`]).

use std::time::Duration;

use kiln_domain::{Job, Lease};
use kiln_kernels::Artifacts;
use kiln_store::{Outcome, StoreError};

use crate::Shared;

/// How an attempt's run ended, before its outcome is stored.
pub(super) enum Attempted {
    /// With this outcome, to store.
    Ended(Outcome),
    /// The kernel handed the job back for later ([`kiln_kernels::KernelError::Deferred`]); that is
    /// stored already (or the lease will lapse and the job be rescued).
    Deferred,
    /// The lease was lost: the attempt must not write anything.
    Lost,
}

impl From<Option<Outcome>> for Attempted {
    fn from(outcome: Option<Outcome>) -> Self {
        outcome.map_or(Attempted::Lost, Attempted::Ended)
    }
}

/// Hands the job back to run again `after` from now, its attempt not spent, and drops what
/// the attempt wrote. A store that refuses (it is out, or the lease was lost) leaves the job
/// to the lease: it lapses and the job is rescued like any other.
pub(super) async fn defer(
    shared: &Shared,
    job: &Job,
    lease: &Lease,
    artifacts: &Artifacts,
    after: Duration,
    why: &str,
) -> Attempted {
    if let Err(e) = artifacts.reset() {
        tracing::debug!(error = %e, "a deferred attempt's scratch files were not removed");
    }
    let now = shared.clock.now();
    let until = kiln_domain::clock::later(now, after);
    match shared.store.job_defer(lease, until, why, now).await {
        Ok(done) => {
            tracing::info!(state = %done.state, run_at = %done.run_at, reason = why, "job deferred");
            let line = format!(
                "attempt {} deferred until {}: {why}\n",
                lease.attempt, done.run_at
            );
            if let Err(e) = shared.store.log_append(job.id, &line, now).await {
                tracing::debug!(error = %e, "deferral line not logged");
            }
            Attempted::Deferred
        }
        Err(StoreError::LeaseLost) => Attempted::Lost,
        Err(e) => {
            tracing::warn!(error = %e, "the deferral was not stored; the lease will lapse and the job be rescued");
            Attempted::Deferred
        }
    }
}
