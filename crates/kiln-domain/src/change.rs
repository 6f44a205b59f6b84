//! What each event does to a stored job, decided once for every backend: cancel, manual
//! retry, the release of an attempt claimed ahead, an `external` job's state report, and
//! the end of an attempt.
//!
//! Each function takes the job as the store read it, asks [`transition()`] whether the
//! event is legal, and changes the record in place; what it returns tells the store which
//! event row to append in the same transaction. The store only reads and writes rows: it
//! decides nothing here. The end of an attempt is the exception in shape, not in owner:
//! [`Completion`] decides both possible writes up front, because the fenced write reads
//! the job's `cancel_requested` flag itself (one statement on the hot path).

use serde_json::Value;

use crate::clock::truncate_ms;
use crate::state::report as report_event;
use crate::{
    Event, Failure, IllegalTransition, Job, JobState, JobType, Step, Timestamp, transition,
};

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// With this result.
    Succeeded(Value),
    /// With this failure; `retry_at` is when the next attempt is due (`failed`), or `None`
    /// when the job is `dead`.
    Failed {
        /// What went wrong: stored as the job's `error`, and as `code: message` in the
        /// event row.
        failure: Failure,
        /// Next attempt, if any.
        retry_at: Option<Timestamp>,
    },
    /// Interrupted by a cancel request.
    Cancelled,
}

/// An `external` job's state report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The state the owner reports; legal only when one state-machine event leads exactly
    /// there from the job's current state.
    pub state: JobState,
    /// Result (with `succeeded`).
    pub result: Option<Value>,
    /// The failure (with `failed`/`dead`); `None` keeps the job's previous error.
    pub error: Option<Failure>,
}

/// The event row a change appends; its state, time and attempt are the job's after the
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The node involved, if any.
    pub node: Option<String>,
    /// What happened (`cancelled`, `retry requested`, …).
    pub message: String,
}

impl Note {
    fn new(node: Option<String>, message: &str) -> Self {
        Self {
            node,
            message: message.to_owned(),
        }
    }
}

/// What a client-side event did to the job it was applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The state the job had when it was read.
    pub from: JobState,
    /// What the state machine made of the event.
    pub step: Step,
    /// The event row to append with the changed job; `None` when nothing changed and
    /// nothing is to be written.
    pub note: Option<Note>,
}

impl Change {
    /// The same change, its event naming who made it (`cancelled by oscar`): an operator
    /// acting on another user's job.
    pub fn by(mut self, who: &str) -> Self {
        if let Some(note) = &mut self.note {
            note.message = format!("{} by {who}", note.message);
        }
        self
    }
}

/// A report the store refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    /// Only `external` jobs are driven by their owner's reports.
    #[error("only external jobs accept state reports")]
    NotExternal,
    /// The state machine refused the move.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The job has started [`MAX_REPORTED_ATTEMPTS`] attempts: its history stays bounded.
    #[error("the job has started {MAX_REPORTED_ATTEMPTS} attempts, the most an external job may")]
    TooManyAttempts,
}

/// The most attempts an `external` job's owner may start by reporting `running`: a loop of
/// reports (running, failed, queued, running, …) cannot grow the job's history for ever.
pub const MAX_REPORTED_ATTEMPTS: u32 = 1000;

/// Moves `job` to `state` at `now`, keeping `finished_at` set exactly on terminal states
/// and the lease fields only while running.
fn enter(job: &mut Job, state: JobState, now: Timestamp) {
    let now = truncate_ms(now);
    job.state = state;
    job.updated_at = now;
    job.finished_at = state.is_terminal().then_some(now);
    if state != JobState::Running {
        job.node = None;
        job.lease_expires_at = None;
    }
}

/// [`Event::Cancel`]: a waiting job is `cancelled` at once; a running one gets
/// `cancel_requested` (its attempt must be interrupted), except an `external` job, which
/// no Kiln attempt runs, so nobody would ever finish the cancel: it stops at once, as if
/// its owner had reported `cancelled`. A terminal job, and a repeated request, change
/// nothing.
pub fn cancel(job: &mut Job, now: Timestamp) -> Result<Change, IllegalTransition> {
    let from = job.state;
    let step = match transition(from, Event::Cancel)? {
        Step::CancelRequested if !job.job_type.is_executed() => transition(from, Event::Abort)?,
        step => step,
    };
    let note = match step {
        Step::To(state) => {
            enter(job, state, now);
            Some(Note::new(None, "cancelled"))
        }
        Step::CancelRequested if !job.cancel_requested => {
            job.cancel_requested = true;
            job.updated_at = truncate_ms(now);
            Some(Note::new(job.node.clone(), "cancel requested"))
        }
        Step::CancelRequested | Step::Unchanged => None,
    };
    Ok(Change { from, step, note })
}

/// [`Event::Retry`] of a `failed` or `dead` job: `queued` now with a fresh budget of
/// `budget` attempts (the type's policy `max_attempts`). `attempts` never goes back (it is
/// the fencing token), so the budget is counted from it: `max_attempts` becomes
/// `attempts + budget`, and the job may start exactly `budget` more attempts. A queued job
/// always runs once, so a budget of 0 counts as 1.
pub fn retry(job: &mut Job, budget: u32, now: Timestamp) -> Result<Change, IllegalTransition> {
    let from = job.state;
    let step = transition(from, Event::Retry)?;
    let Step::To(state) = step else {
        return Err(IllegalTransition {
            from,
            event: Event::Retry,
        });
    };
    enter(job, state, now);
    job.run_at = truncate_ms(now);
    job.max_attempts = job.attempts.saturating_add(budget.max(1));
    job.cancel_requested = false;
    job.progress = 0.0;
    Ok(Change {
        from,
        step,
        note: Some(Note::new(None, "retry requested")),
    })
}

/// [`Event::Release`]: a node gives back an attempt it claimed ahead of a free slot and
/// never started. The job is `queued` again with its `run_at`, so it keeps its place; the
/// attempt is not spent: `attempts` never goes back (it is the fencing token), so
/// `max_attempts` grows by one instead. A job whose owner asked to cancel it meanwhile is
/// `cancelled` at once (nothing runs to interrupt).
pub fn release(job: &mut Job, now: Timestamp) -> Result<Change, IllegalTransition> {
    let from = job.state;
    let node = job.node.clone();
    let (event, message) = if job.cancel_requested {
        (Event::Abort, "cancelled before it started")
    } else {
        (Event::Release, "released before it started")
    };
    let step = transition(from, event)?;
    let Step::To(state) = step else {
        return Err(IllegalTransition { from, event });
    };
    enter(job, state, now);
    if state == JobState::Queued {
        job.max_attempts = job.max_attempts.saturating_add(1);
        job.started_at = None;
        job.progress = 0.0;
    }
    Ok(Change {
        from,
        step,
        note: Some(Note::new(node, message)),
    })
}

/// [`Event::Defer`]: the running attempt hands its job back to run again at `until`
/// (`scheduled`), because something outside the job stops it for now (`why` says what,
/// in the event row). Like a release, the attempt is not spent; a job whose owner asked
/// to cancel it meanwhile is `cancelled` instead.
pub fn defer(
    job: &mut Job,
    until: Timestamp,
    why: &str,
    now: Timestamp,
) -> Result<Change, IllegalTransition> {
    let from = job.state;
    let node = job.node.clone();
    let event = if job.cancel_requested {
        Event::Abort
    } else {
        Event::Defer
    };
    let step = transition(from, event)?;
    let Step::To(state) = step else {
        return Err(IllegalTransition { from, event });
    };
    enter(job, state, now);
    let message = if state == JobState::Scheduled {
        job.max_attempts = job.max_attempts.saturating_add(1);
        job.started_at = None;
        job.progress = 0.0;
        job.run_at = truncate_ms(until.max(now));
        format!("deferred: {why}")
    } else {
        format!("cancelled while deferred: {why}")
    };
    Ok(Change {
        from,
        step,
        note: Some(Note { node, message }),
    })
}

/// An `external` job's owner reports its state: legal when [`crate::state::report`] finds
/// the event that leads exactly there.
pub fn report(job: &mut Job, report: Report, now: Timestamp) -> Result<Change, ReportRefused> {
    if job.job_type != JobType::External {
        return Err(ReportRefused::NotExternal);
    }
    let from = job.state;
    report_event(from, report.state)?;
    if report.state == JobState::Running && job.attempts >= MAX_REPORTED_ATTEMPTS {
        return Err(ReportRefused::TooManyAttempts);
    }
    enter(job, report.state, now);
    match report.state {
        JobState::Running => {
            job.attempts = job.attempts.saturating_add(1);
            job.started_at = Some(truncate_ms(now));
            job.progress = 0.0;
            job.cancel_requested = false;
        }
        JobState::Succeeded => {
            job.result = report.result;
            job.progress = 1.0;
        }
        JobState::Failed | JobState::Dead => job.error = report.error.or(job.error.take()),
        JobState::Queued => job.run_at = truncate_ms(now),
        JobState::Scheduled | JobState::Cancelled => {}
    }
    Ok(Change {
        from,
        step: Step::To(report.state),
        note: Some(Note::new(None, "reported by owner")),
    })
}

/// A progress report as stored: clamped to 0.0–1.0, NaN counting as 0.
pub fn clamp_progress(fraction: f32) -> f32 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// The end of an attempt: what the fenced write stores, decided for both values of the
/// job's `cancel_requested` flag. Every ending also clears the lease (`node`,
/// `lease_expires_at`) and sets `updated_at` to [`Completion::at`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The write when no cancel is pending.
    pub settled: Ending,
    /// The write when the owner asked to cancel the running job meanwhile.
    pub cancel_pending: Ending,
    /// The result to store (success only); `None` keeps the column.
    pub result: Option<Value>,
    /// The failure to store; `None` keeps the column.
    pub error: Option<Failure>,
    /// The progress to store (1.0 on success); `None` keeps the column.
    pub progress: Option<f32>,
    /// When the attempt ended, at the stored precision.
    pub at: Timestamp,
}

/// The state an attempt leaves its job in, with the columns that depend on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    /// `succeeded`, `failed`, `dead` or `cancelled`.
    pub state: JobState,
    /// When the next attempt is due; `None` keeps `run_at`.
    pub run_at: Option<Timestamp>,
    /// Set exactly when `state` is terminal.
    pub finished_at: Option<Timestamp>,
    /// The event row's message: `succeeded`, `cancelled`, the failure as `code: message`,
    /// or `cancelled after code: message`.
    pub message: String,
}

impl Completion {
    /// What `outcome` does to the running job at `now`. A retryable failure of a job with
    /// a cancel request pending ends it `cancelled` (the attempt stopped: [`Event::Abort`]),
    /// not `failed`: otherwise the retry would run the job again and its claim would clear
    /// the request, silently dropping the owner's cancel (a running job asked to cancel
    /// becomes `cancelled`: `docs/design.md`, "Cancel").
    pub fn decide(outcome: Outcome, now: Timestamp) -> Result<Self, IllegalTransition> {
        let at = truncate_ms(now);
        let (event, retry_at, message) = match &outcome {
            Outcome::Succeeded(_) => (Event::Succeed, None, "succeeded".to_owned()),
            Outcome::Failed { failure, retry_at } => {
                let retry = retry_at.is_some();
                (Event::Fail { retry }, *retry_at, failure.to_string())
            }
            Outcome::Cancelled => (Event::Abort, None, "cancelled".to_owned()),
        };
        let settled = Ending::new(event, retry_at, at, message)?;
        let cancel_pending = match event {
            Event::Fail { retry: true } => {
                let message = format!("cancelled after {}", settled.message);
                Ending::new(Event::Abort, None, at, message)?
            }
            _ => settled.clone(),
        };
        let (result, error, progress) = match outcome {
            Outcome::Succeeded(value) => (Some(value), None, Some(1.0)),
            Outcome::Failed { failure, .. } => (None, Some(failure), None),
            Outcome::Cancelled => (None, None, None),
        };
        Ok(Self {
            settled,
            cancel_pending,
            result,
            error,
            progress,
            at,
        })
    }

    /// The ending of a job whose `cancel_requested` flag reads `cancel_requested`.
    pub fn ending(&self, cancel_requested: bool) -> &Ending {
        if cancel_requested {
            &self.cancel_pending
        } else {
            &self.settled
        }
    }
}

impl Ending {
    /// Where `event` takes a running job, checked by [`transition()`].
    fn new(
        event: Event,
        run_at: Option<Timestamp>,
        at: Timestamp,
        message: String,
    ) -> Result<Self, IllegalTransition> {
        let from = JobState::Running;
        let Step::To(state) = transition(from, event)? else {
            return Err(IllegalTransition { from, event });
        };
        Ok(Self {
            state,
            run_at: run_at.map(truncate_ms),
            finished_at: state.is_terminal().then_some(at),
            message,
        })
    }
}

#[cfg(test)]
mod tests;
