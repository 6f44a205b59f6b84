//! `POST /jobs/{id}/cancel` (SPEC §1): a running job gets a cancel request, and the
//! response waits up to `cancel_wait` for the worker to stop it.

use kiln_domain::{Job, JobId, JobState, Step, UserId};
use kiln_store::{Report, Signal};
use tokio::sync::broadcast::error::RecvError;

use crate::problem::ApiError;
use crate::state::AppState;

/// Cancels the job; returns it and whether it is still stopping (cancel requested, not yet
/// terminal after the wait).
pub async fn cancel(
    state: &AppState,
    owner: Option<UserId>,
    id: JobId,
) -> Result<(Job, bool), ApiError> {
    // Subscribe before the write so the worker's "cancelled" signal cannot be missed.
    let mut signals = state.store().subscribe();
    let (job, step) = state.store().job_cancel(owner, id, state.now()).await?;
    if step != Step::CancelRequested {
        return Ok((job, false));
    }
    if !is_executed(state, &job) {
        // No Kiln attempt to interrupt (an `external` job): it stops at once, as if its
        // owner had reported `cancelled`.
        let report = Report {
            state: JobState::Cancelled,
            result: None,
            error: None,
        };
        let job = state
            .store()
            .job_report(owner, id, report, state.now())
            .await?;
        return Ok((job, false));
    }
    let wait = state.config().cancel_wait;
    let _ = tokio::time::timeout(wait, async {
        loop {
            match signals.recv().await {
                Ok(Signal::Changed(e)) if e.job_id == id && e.state.is_terminal() => {
                    return;
                }
                // Missed signals: look at the job itself.
                Err(RecvError::Lagged(_)) => {
                    let job = state.store().job_get(owner, id).await;
                    if job.is_ok_and(|j| j.state.is_terminal()) {
                        return;
                    }
                }
                Ok(_) => {}
                // The store is gone: nothing more will change; stop waiting.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    let job = state.store().job_get(owner, id).await?;
    let stopping = !job.state.is_terminal();
    Ok((job, stopping))
}

fn is_executed(state: &AppState, job: &Job) -> bool {
    state
        .catalogue()
        .get_by_name(&job.job_type)
        .map_or(true, |spec| spec.job_type.is_executed())
}
