//! The dispatcher: claims work while slots are free (and a few jobs ahead of them, see
//! [`crate::pace`]), starts slots for it, and sleeps on the store's signals.
//!
//! After a claim round that took all it asked for it claims again at once; otherwise it
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

use crate::{Shared, StopReason};

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
                    Ok(Signal::CancelRequested(id)) => cancel(&shared, id).await,
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

/// Stops the attempt of job `id` if this node runs it; one claimed ahead and waiting for a
/// slot is taken out of line and given back, which ends it `cancelled` without running it.
async fn cancel(shared: &Shared, id: JobId) {
    let waiting = {
        let mut ready = shared.ready();
        let at = ready.iter().position(|(job, ..)| job.id == id);
        at.and_then(|at| ready.remove(at))
    };
    if let Some((job, ..)) = waiting {
        tracing::info!(job_id = %id, "cancel requested: the job had not started");
        crate::release(shared, vec![job]).await;
        return;
    }
    if let Some(running) = shared.running().get(&id) {
        tracing::info!(job_id = %id, "cancel requested: stopping the running attempt");
        running.stop.stop(StopReason::Cancel);
    }
}

/// Gives back the jobs claimed ahead that waited too long for a slot; returns when the
/// oldest of the rest will have.
async fn release_stale(shared: &Shared) -> Option<Instant> {
    let wait = shared.config.claim_ahead_wait;
    let (stale, next) = {
        let mut ready = shared.ready();
        let mut stale = Vec::new();
        while let Some((_, _, at)) = ready.front() {
            if at.elapsed() < wait {
                break;
            }
            stale.extend(ready.pop_front().map(|(job, ..)| job));
        }
        (
            stale,
            ready
                .front()
                .map(|(_, _, at)| Instant::from_std(*at + wait)),
        )
    };
    if !stale.is_empty() {
        tracing::info!(
            jobs = stale.len(),
            "giving back jobs that waited too long for a slot"
        );
        // The slots are busy with longer jobs than the pace knew of: the next claims take
        // none ahead instead of taking these again.
        shared.pace().stalled(wait);
        crate::release(shared, stale).await;
    }
    next
}

/// Claims as many jobs as there are free slots, plus what [`crate::pace`] says to hold
/// ahead (within per-queue limits and the fair share), and starts them.
async fn claim_round(shared: &Arc<Shared>, executors: &TaskTracker) -> Next {
    let config = &shared.config;
    shared.fill_slots(executors);
    let mut poll = Instant::now() + config.poll_interval;
    if config.claim_ahead > 0
        && let Some(at) = release_stale(shared).await
    {
        poll = poll.min(at);
    }
    let (limit, exclude_queues) = {
        let running = shared.running();
        let free = config.max_concurrency.saturating_sub(shared.busy());
        let ahead = shared
            .pace()
            .ahead(config.max_concurrency, config.claim_ahead);
        let ready = shared.ready().len();
        // Claimed ahead: top up only once half are gone, so each claim takes many.
        let mut limit = if ready > 0 && ready > ahead / 2 {
            0
        } else {
            (free + ahead).saturating_sub(ready)
        };
        // Outcomes still being stored count as held: when the store falls behind, claims
        // wait for it instead of piling up finished jobs.
        let held = running.len();
        limit = limit.min((config.max_concurrency + ahead).saturating_sub(held));
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
    // Claiming ahead, one claim takes many jobs: the share bounds each owner's part of it
    // (not the whole), so the jobs of owners it does not count come in bulk.
    let (limit, per_owner) = if config.claim_ahead > 0 && share.limit < limit {
        (limit, Some(u32::try_from(share.limit).unwrap_or(u32::MAX)))
    } else {
        (limit.min(share.limit), None)
    };
    if limit == 0 || per_owner == Some(0) {
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
        per_owner,
        per_owner_exempt: share.uncapped,
    };
    let asked = std::time::Instant::now();
    let claimed = match shared.store.job_claim(&request).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "claim failed");
            return Next::WaitUntil(Instant::now() + ERROR_PAUSE);
        }
    };
    shared.pace().claimed(asked.elapsed());
    let filled = claimed.len() >= limit;
    for job in claimed {
        shared.claimed(job);
    }
    shared.fill_slots(executors);
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
