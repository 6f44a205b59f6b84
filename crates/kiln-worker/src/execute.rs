//! One attempt: runs the kernel under its timeout and stop switch, flushes progress and log
//! lines while it runs, and stores the outcome fenced by the attempt's lease.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use kiln_domain::job::{MAX_INLINE_RESULT, RESULT_ARTIFACT, spilled_result};
use kiln_domain::{Failure, Job, JobState, Lease};
use kiln_kernels::{Artifacts, Inputs, JobContext, KernelError, LogSink, Progress};
use kiln_metrics::{Metrics, Outcome as MetricOutcome};
use kiln_store::{ClaimRequest, Outcome, StoreError};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinError;
use tokio::time::{Instant, interval_at, sleep_until};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{Shared, Stop, StopReason, artifact};

mod defer;
use defer::{Attempted, defer};

/// How long a kernel may take to honour its cancel token before its task is aborted
/// (plus the kernel's own [`kiln_kernels::Kernel::stop_grace`]).
const ABORT_AFTER: Duration = Duration::from_secs(2);
/// The longest pause between two tries at storing an outcome while the store is out.
const COMPLETE_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Far enough ahead to mean "never" for a timer that must exist in a `select!`.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// A slot: runs claimed jobs, one at a time, until none is waiting; then frees the slot.
/// Each job's outcome is stored before its next (and the same write claims that next job)
/// or, when the node claims ahead, by a task of its own while the slot goes on.
pub(crate) async fn run(shared: Arc<Shared>, executors: TaskTracker) {
    shared.metrics.slot_busy(1);
    let mut next = shared.take_ready();
    while let Some((job, stop)) = next {
        next = match turn(&shared, &job, &stop, &executors).await {
            Some(next) => Some(next),
            None => shared.take_ready(),
        };
        if shared.config.claim_ahead > 0 {
            // The jobs claimed ahead ran lower: the dispatcher tops them up.
            shared.slot_freed.notify_one();
        }
    }
    shared.busy.fetch_sub(1, Ordering::AcqRel);
    shared.metrics.slot_busy(-1);
    shared.slot_freed.notify_one();
}

/// The span every line logged for an attempt carries (the kernel's, the store's warnings):
/// the job's fields, and with an exporter, a span of the submitting request's trace.
fn job_span(shared: &Shared, job: &Job) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        job_type = %job.job_type,
        attempt = job.attempts,
        node = %shared.config.node_id,
        trace_id = job.trace_id.as_deref(),
        otel.name = tracing::field::Empty,
    );
    if let Some(tracer) = kiln_metrics::trace::tracer() {
        if let (Some(trace_id), Some(parent)) = (&job.trace_id, &job.parent_span_id) {
            tracer.adopt(&span, trace_id, parent);
        }
        span.record("otel.name", format!("{} attempt", job.job_type));
    }
    span
}

/// One job on a slot: its attempt, then its outcome stored, here or (claiming ahead) by a
/// task of `executors`; returns the next job when the completion claimed one. Afterwards
/// the job is no longer held here (unless its outcome is still being stored).
async fn turn(
    shared: &Arc<Shared>,
    job: &Job,
    stop: &Stop,
    executors: &TaskTracker,
) -> Option<(Job, Stop)> {
    let span = job_span(shared, job);
    let attempt = AssertUnwindSafe(one_attempt(shared, job, stop).instrument(span.clone()));
    let ended = match attempt.catch_unwind().await {
        Ok(ended) => ended,
        Err(panic) => {
            after_panic(shared, job, panic).await;
            None
        }
    };
    let Some((lease, outcome, took)) = ended else {
        shared.running().remove(&job.id);
        return None;
    };
    if shared.config.claim_ahead == 0 {
        let next = store_outcome(shared, job, lease, outcome, took, true, span).await;
        if next.is_none() {
            shared.running().remove(&job.id);
        }
        return next;
    }
    let (shared, job, tracker) = (Arc::clone(shared), job.clone(), executors.clone());
    executors.spawn(async move {
        // The same write claims a job in this one's place, to wait in line for a slot.
        let next = store_outcome(&shared, &job, lease, outcome, took, true, span).await;
        shared.running().remove(&job.id);
        if let Some((next, stop)) = next {
            shared
                .ready()
                .push_back((next, stop, std::time::Instant::now()));
            shared.fill_slots(&tracker);
        }
        shared.slot_freed.notify_one();
    });
    None
}

/// [`complete`] in the attempt's span; a panic on that path (a bug in Kiln) is stored as
/// the attempt's failure, as one in the attempt is.
async fn store_outcome(
    shared: &Shared,
    job: &Job,
    lease: Lease,
    outcome: Outcome,
    took: Duration,
    claim_next: bool,
    span: tracing::Span,
) -> Option<(Job, Stop)> {
    let complete = complete(shared, job, &lease, outcome, took, claim_next).instrument(span);
    match AssertUnwindSafe(complete).catch_unwind().await {
        Ok(next) => next,
        Err(panic) => {
            after_panic(shared, job, panic).await;
            None
        }
    }
}

/// An attempt whose executor panicked (a bug in Kiln, not in the job): its outcome is
/// unknown, so it is stored as a retryable failure, fenced by its lease (if the attempt had
/// already stored its outcome, nothing changes). The caller then frees the slot, and the
/// heartbeat stops renewing the lease.
async fn after_panic(shared: &Shared, job: &Job, panic: Box<dyn std::any::Any + Send>) {
    let why = crate::supervise::panic_message(panic);
    tracing::error!(job_id = %job.id, attempt = job.attempts, panic = %why, "the attempt's executor panicked");
    let lease = Lease {
        job_id: job.id,
        attempt: job.attempts,
        node: shared.config.node_id.clone(),
    };
    let failure = Failure::retryable(
        "worker_panic",
        "the worker failed while running the attempt; this is a bug in Kiln",
    );
    let now = shared.clock.now();
    match shared
        .store
        .job_complete(&lease, shared.failed(job, failure, now), now)
        .await
    {
        Ok(_) | Err(StoreError::LeaseLost) => {}
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "cannot store the failure; the lease will expire and the job be rescued");
        }
    }
}

/// Runs one attempt of `job`; its lease, outcome and run time, or `None` when the attempt
/// must not write its outcome (lease lost).
async fn one_attempt(
    shared: &Shared,
    job: &Job,
    stop: &Stop,
) -> Option<(Lease, Outcome, Duration)> {
    let lease = Lease {
        job_id: job.id,
        attempt: job.attempts,
        node: shared.config.node_id.clone(),
    };
    if stop.reason() == Some(StopReason::Cancel) {
        // Cancelled while it waited for a slot (claimed ahead): it never starts.
        tracing::info!("job cancelled before it started");
        return Some((lease, Outcome::Cancelled, Duration::ZERO));
    }
    tracing::info!("job started");
    let started = Instant::now();
    shared
        .metrics
        .job_started(job.job_type.as_str(), queue_wait(job));
    let outcome = match attempt(shared, job, &lease, stop).await {
        Attempted::Ended(outcome) => outcome,
        Attempted::Deferred => return None,
        Attempted::Lost => {
            shared.metrics.lease_lost();
            return None;
        }
    };
    let took = started.elapsed();
    shared.pace().ran(took);
    if let Outcome::Failed { failure, .. } = &outcome {
        // The job's log tells its owner why an attempt failed, beside the error field.
        let line = format!(
            "attempt {} failed: {}: {}\n",
            job.attempts, failure.code, failure.message
        );
        if let Err(e) = shared
            .store
            .log_append(job.id, &line, shared.clock.now())
            .await
        {
            tracing::debug!(error = %e, "failure line not logged");
        }
    }
    Some((lease, outcome, took))
}

/// How long the job waited to start: from when it was due (`run_at`, its submission or its
/// retry time) to its claim.
fn queue_wait(job: &Job) -> Duration {
    job.started_at
        .and_then(|started| (started - job.run_at).to_std().ok())
        .unwrap_or_default()
}

/// Runs the kernel.
async fn attempt(shared: &Shared, job: &Job, lease: &Lease, stop: &Stop) -> Attempted {
    let Some(kernel) = shared.registry.get(job.job_type) else {
        // Claims name only the registry's types, so this is a configuration bug.
        let failure = Failure::permanent("no_kernel", "this node has no kernel for the type");
        return Attempted::Ended(shared.failed(job, failure, shared.clock.now()));
    };
    let timeout = shared.catalogue.get(job.job_type).policy.timeout();
    let abort_after = ABORT_AFTER + kernel.stop_grace();
    let (log, mut log_rx) = LogSink::channel();
    let progress = Progress::default();
    let artifacts = match artifact::prepare(shared, job).await {
        Ok(artifacts) => artifacts,
        Err(failure) => {
            return Attempted::Ended(shared.failed(job, failure, shared.clock.now()));
        }
    };
    let ctx = JobContext {
        artifacts: artifacts.clone(),
        job_id: job.id,
        attempt: job.attempts,
        payload: job.payload.clone(),
        cancel: stop.token.clone(),
        progress: progress.clone(),
        log,
        // Remote backends copy an input to the temp dir for the kernel; local ones do not.
        inputs: shared
            .config
            .objects
            .clone()
            .map(|objects| Inputs::new(objects, job.owner, std::env::temp_dir())),
    };
    let mut task = tokio::spawn(async move { kernel.run(ctx).await });
    let timeout_at = timeout.map(|t| Instant::now() + t);
    let mut abort_at: Option<Instant> = None;
    // The first flush is one period away. (Awaiting an interval's immediate first tick
    // costs a turn of Tokio's 1 ms timer wheel: ~1 ms on every job's path, which held a
    // slot running no-op jobs to ~900 jobs/s.)
    let period = shared.config.progress_flush;
    let mut flush = interval_at(Instant::now() + period, period);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushed_progress = 0.0_f32;
    let result = loop {
        tokio::select! {
            result = &mut task => break result,
            () = sleep_until(timeout_at.unwrap_or_else(never)), if timeout_at.is_some() && abort_at.is_none() => {
                stop.stop(StopReason::Timeout);
            }
            () = stop.token.cancelled(), if abort_at.is_none() => {
                abort_at = Some(Instant::now() + abort_after);
            }
            () = sleep_until(abort_at.unwrap_or_else(never)), if abort_at.is_some() => {
                tracing::warn!(job_id = %job.id, "kernel ignored its cancel token: aborting it");
                task.abort();
                abort_at = Some(never());
            }
            _ = flush.tick() => {
                flush_log(shared, job, &mut log_rx).await;
                let now = progress.get();
                if now != flushed_progress && stop.reason().is_none() {
                    flushed_progress = now;
                    match shared.store.job_progress(lease, now, shared.clock.now()).await {
                        Err(StoreError::LeaseLost) => stop.stop(StopReason::LeaseLost),
                        Err(e) => tracing::debug!(job_id = %job.id, error = %e, "progress not stored"),
                        Ok(()) => {}
                    }
                }
            }
        }
    };
    flush_log(shared, job, &mut log_rx).await;
    if let (
        None,
        Ok(Err(KernelError::Deferred {
            code,
            source,
            after,
        })),
    ) = (stop.reason(), &result)
    {
        let why = format!("{code}: {source}");
        return defer(shared, job, lease, &artifacts, *after, &why).await;
    }
    let outcome = decide(shared, job, &artifacts, stop.reason(), result, timeout);
    artifact::publish(shared, job, &artifacts, outcome, timeout_at)
        .await
        .into()
}

/// What the attempt's result means, given why (if at all) it was asked to stop.
fn decide(
    shared: &Shared,
    job: &Job,
    artifacts: &Artifacts,
    reason: Option<StopReason>,
    result: Result<Result<Value, KernelError>, JoinError>,
    timeout: Option<Duration>,
) -> Option<Outcome> {
    let now = shared.clock.now();
    let error = match result {
        // A kernel that finished despite a stop request still produced a true result.
        Ok(Ok(value)) if reason != Some(StopReason::LeaseLost) => {
            return Some(match spill_large_result(value, artifacts) {
                Ok(value) => Outcome::Succeeded(value),
                Err(e) => shared.failed(
                    job,
                    Failure::retryable("artifact_write", format!("cannot store the result: {e}")),
                    now,
                ),
            });
        }
        Ok(Ok(_)) => None,
        Ok(Err(KernelError::RetryAfter {
            code,
            source,
            after,
        })) if reason.is_none() => {
            let failure = Failure::retryable(code, source.to_string());
            return Some(match shared.failed(job, failure, now) {
                // The retry waits for the upstream's own delay when that is longer.
                Outcome::Failed {
                    failure,
                    retry_at: Some(at),
                } => Outcome::Failed {
                    failure,
                    retry_at: Some(at.max(kiln_domain::clock::later(now, after))),
                },
                other => other,
            });
        }
        Ok(Err(e)) => Some(e.to_failure()),
        Err(join) if join.is_panic() => Some(Some(Failure::permanent(
            "kernel_panic",
            "the job's kernel panicked; this is a bug in Kiln",
        ))),
        Err(_aborted) => Some(None),
    };
    match reason {
        Some(StopReason::LeaseLost) => None,
        Some(StopReason::Cancel) => Some(Outcome::Cancelled),
        Some(StopReason::Timeout) => {
            let ms = timeout.map_or(0, |t| t.as_millis() as u64);
            Some(shared.failed(job, Failure::timeout(ms), now))
        }
        // Interrupted by a shutdown: due again at once whatever the attempt count, since
        // the job itself did nothing wrong.
        Some(StopReason::Shutdown) => Some(Outcome::Failed {
            failure: Failure::interrupted(),
            retry_at: Some(now),
        }),
        None => {
            let failure = error.flatten().unwrap_or_else(|| {
                Failure::retryable("cancelled", "the kernel stopped without being asked to")
            });
            Some(shared.failed(job, failure, now))
        }
    }
}

/// Keeps a result of at most [`MAX_INLINE_RESULT`] bytes inline. A larger one is written to
/// `result.json`, published with the attempt's other artifacts, and the job's result becomes
/// [`spilled_result`]'s summary (`docs/design.md`, "Job types").
fn spill_large_result(value: Value, artifacts: &Artifacts) -> std::io::Result<Value> {
    let text = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    if text.len() <= MAX_INLINE_RESULT {
        return Ok(value);
    }
    let (_, mut file) = artifacts.create(RESULT_ARTIFACT)?;
    std::io::Write::write_all(&mut file, &text)?;
    Ok(spilled_result(&value, text.len()))
}

/// Stores the outcome. A transient store error (a busy database, a dropped connection, an
/// outage: [`StoreError::is_transient`]) is retried with the outcome kept, pausing from 50 ms
/// up to [`COMPLETE_PAUSE_MAX`], for as long as it takes: finished work is never redone for
/// a database blip. It ends when the outcome is stored; when the store refuses it for good
/// (a lost lease: another node rescued the job meanwhile, and this late completion is
/// rightly refused; or any other permanent error); or when shutdown's grace is over.
///
/// With `claim_next`, the same store call claims the slot's next job (one write per job
/// instead of a completion plus a claim round of the dispatcher, which is what lets a busy
/// node on an embedded database run thousands of short jobs a second); it is returned
/// already recorded as running here. Queues with a concurrency limit are left to the
/// dispatcher, which claims under the count of their running jobs.
async fn complete(
    shared: &Shared,
    job: &Job,
    lease: &Lease,
    outcome: Outcome,
    took: Duration,
    claim_next: bool,
) -> Option<(Job, Stop)> {
    let mut pause = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        // Read-held until the next job is in `running`: see `Shared::claiming`.
        let claiming = shared.claiming.read().await;
        let share = shared.share(Some(job.id)).await;
        let now = shared.clock.now();
        let next = (claim_next && !shared.stop_claiming.is_cancelled()).then(|| ClaimRequest {
            node: shared.config.node_id.clone(),
            types: shared.types.clone(),
            exclude_queues: shared.config.queue_limits.keys().cloned().collect(),
            exclude_owners: share.exclude,
            limit: 1,
            now,
            lease: shared.config.lease_duration,
            per_owner: None,
            per_owner_exempt: Vec::new(),
        });
        let stored = shared
            .store
            .job_complete_and_claim(lease, outcome.clone(), now, next.as_ref())
            .await;
        let completed = match stored {
            Ok((completed, claimed)) => {
                let next = claimed.into_iter().next().map(|next| {
                    let stop = shared.running_instead(Some(job.id), &next);
                    (next, stop)
                });
                drop(claiming);
                if failures > 0 {
                    tracing::info!(job_id = %job.id, failures, "the outcome is stored after all");
                }
                log_completion(&shared.metrics, job, lease, completed, took);
                return next;
            }
            Err(e) => e,
        };
        drop(claiming);
        if !completed.is_transient() {
            // Another try would fail the same way (a bug, a broken database): the lease
            // runs out and the job is rescued, as when this node dies.
            tracing::error!(
                job_id = %job.id, error = %completed,
                "cannot store the outcome; the lease will expire and the job be rescued"
            );
            return None;
        }
        failures += 1;
        // Loud at first, then once in a while: an outage may last minutes.
        if failures <= 3 || failures.is_power_of_two() {
            tracing::warn!(
                job_id = %job.id, error = %completed, failures,
                "storing the outcome failed; keeping it and trying again"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shared.give_up.cancelled() => {
                tracing::error!(
                    job_id = %job.id, error = %completed,
                    "shutting down with an outcome the store did not take; the job will run again"
                );
                return None;
            }
        }
        pause = (pause * 2).min(COMPLETE_PAUSE_MAX);
    }
}

/// The lifecycle log line of a stored (or refused) completion.
fn log_completion(
    metrics: &Metrics,
    job: &Job,
    lease: &Lease,
    completed: Result<Job, StoreError>,
    took: Duration,
) {
    match completed {
        Ok(done) => {
            let outcome = match done.state {
                JobState::Succeeded => MetricOutcome::Succeeded,
                JobState::Cancelled => MetricOutcome::Cancelled,
                JobState::Dead => MetricOutcome::Dead,
                _ => MetricOutcome::Retried,
            };
            metrics.job_ended(job.job_type.as_str(), outcome, took);
            let duration_ms = took.as_millis() as u64;
            // The job span carries its id, type, attempt and node.
            match (&done.error, outcome) {
                (Some(error), MetricOutcome::Dead) => tracing::error!(
                    state = %done.state,
                    error_code = %error.code,
                    error = %error.message,
                    input = %input_summary(job),
                    duration_ms,
                    "job failed for good"
                ),
                (Some(error), MetricOutcome::Retried) => tracing::warn!(
                    state = %done.state,
                    error_code = %error.code,
                    error = %error.message,
                    retry_at = ?done.run_at,
                    duration_ms,
                    "job attempt failed; it will be retried"
                ),
                _ => tracing::info!(state = %done.state, duration_ms, "job attempt finished"),
            }
        }
        Err(StoreError::LeaseLost) => {
            metrics.lease_lost();
            tracing::warn!(
                attempt = lease.attempt,
                "outcome refused: the lease was lost (the job was rescued)"
            );
        }
        Err(e) => tracing::warn!(error = %e, "outcome not stored"),
    }
}

/// Bytes of a payload an ERROR line shows.
const INPUT_SUMMARY: usize = 200;

/// The start of the job's payload as JSON, cut at a character boundary: enough to tell
/// which input failed without writing a large document into the log.
fn input_summary(job: &Job) -> String {
    let text = job.payload.to_string();
    if text.len() <= INPUT_SUMMARY {
        return text;
    }
    let mut end = INPUT_SUMMARY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Appends the lines the kernel logged since the last flush, in one write.
async fn flush_log(shared: &Shared, job: &Job, rx: &mut UnboundedReceiver<String>) {
    let mut text = String::new();
    while let Ok(line) = rx.try_recv() {
        text.push_str(&line);
    }
    if text.is_empty() {
        return;
    }
    if let Err(e) = shared
        .store
        .log_append(job.id, &text, shared.clock.now())
        .await
    {
        tracing::warn!(job_id = %job.id, error = %e, "log lines not stored");
    }
}
