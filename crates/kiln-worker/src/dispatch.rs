//! The dispatcher: claims work while slots are free and sleeps on the store's signals.
//!
//! After a claim round that filled every free slot it claims again at once; otherwise it
//! waits for the first of: a `JobAvailable` signal (a submission, a retry), a finished
//! attempt (a slot is free), the next scheduled or retry time, or the poll interval (work
//! written by another process). Cancel signals are routed to the running attempt here too.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::JobId;
use kiln_store::{ClaimRequest, Signal};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Shared, StopReason, execute};

/// Pause after a failed claim, so a broken database is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// What the dispatcher does after a claim round.
enum Next {
    /// Claim again at once: every free slot was filled and more work may wait.
    Claim,
    /// Wait for a signal, a free slot, or this instant.
    WaitUntil(Instant),
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut signals: broadcast::Receiver<Signal>,
    stop_claiming: CancellationToken,
    stop_all: CancellationToken,
    executors: TaskTracker,
) {
    'claim: loop {
        let next = {
            let _round = shared.claiming.read().await;
            if stop_claiming.is_cancelled() {
                Next::WaitUntil(Instant::now() + Duration::from_secs(3600))
            } else {
                claim_round(&shared, &executors).await
            }
        };
        let deadline = match next {
            Next::Claim => continue,
            Next::WaitUntil(at) => at,
        };
        loop {
            tokio::select! {
                () = stop_all.cancelled() => break 'claim,
                () = stop_claiming.cancelled(), if !stop_claiming.is_cancelled() => {}
                () = shared.slot_freed.notified() => continue 'claim,
                () = sleep_until(deadline) => continue 'claim,
                signal = signals.recv() => match signal {
                    Ok(Signal::JobAvailable) => continue 'claim,
                    Ok(Signal::CancelRequested(id)) => cancel(&shared, id),
                    // Their role or slot share may have changed.
                    Ok(Signal::UserChanged(user)) => shared.roles.forget(Some(user)),
                    Ok(Signal::Changed(_) | Signal::LogAppended { .. }) => {}
                    Err(RecvError::Lagged(missed)) => {
                        // Missed signals may have included cancels: let the heartbeat
                        // read pending cancel requests from the store now.
                        tracing::debug!(missed, "signal receiver lagged");
                        shared.heartbeat_now.notify_one();
                        shared.roles.forget(None);
                        continue 'claim;
                    }
                    Err(RecvError::Closed) => break 'claim,
                },
            }
        }
    }
}

/// Stops the attempt of job `id` if this node runs it.
fn cancel(shared: &Shared, id: JobId) {
    if let Some(running) = shared.running().get(&id) {
        tracing::info!(job_id = %id, "cancel requested: stopping the running attempt");
        running.stop.stop(StopReason::Cancel);
    }
}

/// Claims as many jobs as there are free slots (within per-queue limits) and starts them.
async fn claim_round(shared: &Arc<Shared>, executors: &TaskTracker) -> Next {
    let config = &shared.config;
    let poll = Instant::now() + config.poll_interval;
    let (limit, exclude_queues) = {
        let running = shared.running();
        let free = config.max_concurrency.saturating_sub(running.len());
        let mut limit = free;
        let mut exclude = Vec::new();
        for (queue, &max) in &config.queue_limits {
            let busy = running.values().filter(|r| &r.queue == queue).count();
            if busy >= max {
                exclude.push(queue.clone());
            } else {
                // A batch may be all from this queue: never claim past its limit.
                limit = limit.min(max - busy);
            }
        }
        (limit, exclude)
    };
    let share = shared.share(None).await;
    let limit = limit.min(share.limit);
    if limit == 0 {
        // A finished attempt wakes us; the poll is only a safety net.
        return Next::WaitUntil(poll);
    }
    let now = shared.clock.now();
    let request = ClaimRequest {
        node: config.node_id.clone(),
        types: shared.types.clone(),
        exclude_queues,
        exclude_owners: share.exclude,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        now,
        lease: shared.config.lease_duration,
    };
    let claimed = match shared.store.job_claim(&request).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "claim failed");
            return Next::WaitUntil(Instant::now() + ERROR_PAUSE);
        }
    };
    let filled = claimed.len() >= limit;
    for job in claimed {
        let stop = shared.start_running(&job);
        executors.spawn(execute::run(Arc::clone(shared), job, stop));
    }
    if filled {
        return Next::Claim;
    }
    // Nothing more is ready now: sleep until the next scheduled or retry time at the latest.
    match shared.store.job_next_due().await {
        Ok(Some(at)) => {
            let wait = (at - shared.clock.now()).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                // Due but not claimable (its queue is at its limit): a slot or the poll
                // wakes us, not a busy loop.
                Next::WaitUntil(poll)
            } else {
                Next::WaitUntil(poll.min(Instant::now() + wait))
            }
        }
        Ok(None) => Next::WaitUntil(poll),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the next due time");
            Next::WaitUntil(poll)
        }
    }
}
