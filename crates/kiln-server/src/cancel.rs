//! `POST /jobs/{id}/cancel` (what each state does: `docs/design.md`, "Cancel"): a running
//! job gets a cancel request, and the response waits up to `cancel_wait` for the worker to
//! stop it.

use kiln_domain::{Job, JobId, Step, UserId};
use kiln_store::Signal;
use tokio::sync::broadcast::error::RecvError;

use crate::problem::ApiError;
use crate::state::AppState;

/// Who changes a job: its owner (who can reach only their own jobs), or an operator acting
/// on anyone's job, whose name the job's event records.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// The job's owner.
    Owner(UserId),
    /// An operator or admin, by username.
    Operator(&'a str),
}

impl Actor<'_> {
    /// The owner a store call is scoped to (`None`: any job).
    pub fn scope(self) -> Option<UserId> {
        match self {
            Actor::Owner(owner) => Some(owner),
            Actor::Operator(_) => None,
        }
    }
}

/// Cancels the job; returns it and whether it is still stopping (cancel requested, not yet
/// terminal after the wait).
pub async fn cancel(
    state: &AppState,
    actor: Actor<'_>,
    id: JobId,
) -> Result<(Job, bool), ApiError> {
    let owner = actor.scope();
    // Subscribe before the write so the worker's "cancelled" signal cannot be missed.
    let mut signals = state.store().subscribe();
    let (job, step) = match actor {
        Actor::Owner(owner) => {
            state
                .store()
                .job_cancel(Some(owner), id, state.now())
                .await?
        }
        Actor::Operator(name) => state.store().job_cancel_by(name, id, state.now()).await?,
    };
    state.metrics().cancel_requested();
    // Anything but a request is done (a running `external` job, which no attempt runs, is
    // cancelled at once by the store).
    if step != Step::CancelRequested {
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
                // The store is gone, so no signal will come: sleep out the rest of
                // `cancel_wait` (a closed channel would answer at once, a busy loop), then
                // read the job as it is.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    let job = state.store().job_get(owner, id).await?;
    let stopping = !job.state.is_terminal();
    Ok((job, stopping))
}
