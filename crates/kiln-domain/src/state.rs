//! The job state machine: [`JobState`], [`Event`] and [`transition()`].
//!
//! `transition` is a pure function and the only judge of which moves are legal; the store
//! and the API ask it before they write anything. The diagram lives in
//! `docs/state-machine.md` and a test checks that it lists exactly these moves.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Lowercase in JSON and in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted; `run_at` is in the future. Leaves on `Due` (→ queued) or `Cancel`.
    Scheduled,
    /// Ready, waiting for a worker slot. Leaves on `Claim` (→ running) or `Cancel`.
    Queued,
    /// An attempt is executing on some node under a lease.
    Running,
    /// The last attempt failed with a retryable error; another is due at `run_at`.
    Failed,
    /// Finished with a result. Terminal.
    Succeeded,
    /// Failed for good: permanent error, retries exhausted, or timed out on the last attempt.
    /// Terminal, but a manual retry queues it again with a fresh attempt budget.
    Dead,
    /// Cancelled at its owner's request (`POST /jobs/{id}/cancel`). Terminal.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Failed,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// `succeeded`, `dead` and `cancelled` are terminal: only a manual retry leaves `dead`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    /// The lowercase name used in JSON, SQL and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Failed => "failed",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// `run_at` has come for a scheduled or failed job.
    Due,
    /// A worker took the job and started an attempt.
    Claim,
    /// The attempt finished with a result.
    Succeed,
    /// The attempt failed (or its lease was lost). `retry` is true when the error is retryable
    /// and attempts remain: the job becomes `failed`, otherwise `dead`.
    Fail {
        /// Retryable error and attempts remain.
        retry: bool,
    },
    /// Cancel requested by the job's owner: immediate unless the job is running (then
    /// [`Step::CancelRequested`]); nothing happens to a terminal job.
    Cancel,
    /// A running attempt stopped because a cancel was requested.
    Abort,
    /// Manual retry of a failed or dead job: queued again with a fresh attempt budget
    /// (`max_attempts` grows; `attempts`, the fencing token, never goes back).
    Retry,
    /// A node gives back a job it claimed ahead of a free slot and never started (it is
    /// stopping, or the job waited too long behind others): queued again, the attempt not
    /// spent (`max_attempts` grows with `attempts`).
    Release,
    /// A running attempt could not do its work for a reason outside the job (an upstream
    /// service's circuit breaker is open): the job is `scheduled` again for later, the
    /// attempt not spent (`max_attempts` grows with `attempts`, as with a release).
    Defer,
}

impl Event {
    /// One of each kind of event (both values of `Fail::retry`), for exhaustive tests.
    pub const ALL: [Event; 10] = [
        Event::Due,
        Event::Claim,
        Event::Succeed,
        Event::Fail { retry: true },
        Event::Fail { retry: false },
        Event::Cancel,
        Event::Abort,
        Event::Retry,
        Event::Release,
        Event::Defer,
    ];

    /// A short snake_case name for messages and problem details.
    pub fn name(self) -> &'static str {
        match self {
            Event::Due => "due",
            Event::Claim => "claim",
            Event::Succeed => "succeed",
            Event::Fail { .. } => "fail",
            Event::Cancel => "cancel",
            Event::Abort => "abort",
            Event::Retry => "retry",
            Event::Release => "release",
            Event::Defer => "defer",
        }
    }
}

/// What a legal event does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The job moves to this state (an event row is written).
    To(JobState),
    /// Nothing changes (cancel of a terminal job).
    Unchanged,
    /// The job keeps running with `cancel_requested` set; its attempt must be interrupted and
    /// then reports [`Event::Abort`].
    CancelRequested,
}

/// An event that is not legal in the job's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a job that is {from}", event.name())]
pub struct IllegalTransition {
    /// The job's state when the event was refused.
    pub from: JobState,
    /// The rejected event.
    pub event: Event,
}

/// The job state machine (`docs/state-machine.md`; `docs/design.md`, "Lifecycle"): what
/// `event` does to a job in state `from`.
pub fn transition(from: JobState, event: Event) -> Result<Step, IllegalTransition> {
    use JobState::*;
    let step = match (from, event) {
        (Scheduled | Failed, Event::Due) => Step::To(Queued),
        (Queued, Event::Claim) => Step::To(Running),
        (Running, Event::Succeed) => Step::To(Succeeded),
        (Running, Event::Fail { retry: true }) => Step::To(Failed),
        (Running, Event::Fail { retry: false }) => Step::To(Dead),
        (Scheduled | Queued | Failed, Event::Cancel) => Step::To(Cancelled),
        (Running, Event::Cancel) => Step::CancelRequested,
        (Succeeded | Dead | Cancelled, Event::Cancel) => Step::Unchanged,
        (Running, Event::Abort) => Step::To(Cancelled),
        (Failed | Dead, Event::Retry) => Step::To(Queued),
        (Running, Event::Release) => Step::To(Queued),
        (Running, Event::Defer) => Step::To(Scheduled),
        _ => return Err(IllegalTransition { from, event }),
    };
    Ok(step)
}

/// The state a new job starts in: `scheduled` if `run_at` is in the future, else `queued`.
pub fn initial_state(run_at: crate::Timestamp, now: crate::Timestamp) -> JobState {
    if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    }
}

/// The event behind an `external` job's state report (`PATCH /jobs/{id} {state}`), checked
/// by [`transition()`]: the report is legal only if the event leads exactly to `to`.
pub fn report(from: JobState, to: JobState) -> Result<Event, IllegalTransition> {
    let event = match to {
        JobState::Running => Event::Claim,
        JobState::Succeeded => Event::Succeed,
        JobState::Failed => Event::Fail { retry: true },
        JobState::Dead => Event::Fail { retry: false },
        // An external job has no attempt in Kiln to interrupt: a running one stops at once.
        JobState::Cancelled if from == JobState::Running => Event::Abort,
        JobState::Cancelled => Event::Cancel,
        JobState::Queued => Event::Retry,
        JobState::Scheduled => Event::Due,
    };
    match transition(from, event) {
        Ok(Step::To(state)) if state == to => Ok(event),
        _ => Err(IllegalTransition { from, event }),
    }
}

#[cfg(test)]
mod tests;
