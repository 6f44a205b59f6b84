//! Kiln's domain: pure types and rules, no I/O.
//!
//! # Layout
//! - [`job`]: the job record, its identifiers and the validated parts of a submission.
//! - [`state`]: [`JobState`], [`Event`] and [`transition()`], the only judge of legality.
//! - [`change`]: what cancel, retry, a report and the end of an attempt do to a stored job,
//!   decided here once so every storage backend only reads and writes rows.
//! - [`retry`]: per-type retry policy and full-jitter exponential backoff.
//! - [`failure`]: [`Failure`], an error classified retryable or permanent.
//! - [`job_type`]: the catalogue of predefined job types, their schemas and policies.
//! - [`lease`]: the fencing token that guards an attempt's completion.
//! - [`user`]: users and roles.
//! - [`clock`]: the injectable clock.
//!
//! Nothing here touches tokio, a database or HTTP; every other crate asks this one.
#![warn(missing_docs)]

pub mod change;
pub mod clock;
pub mod failure;
pub mod job;
pub mod job_type;
pub mod lease;
pub mod retry;
pub mod state;
pub mod user;

pub use change::{Completion, Outcome, Report};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use failure::Failure;
pub use job::{Job, JobId, NewJob, Priority, QueueName, RawJson};
pub use job_type::{JobType, JobTypeSpec, Policy};
pub use lease::Lease;
pub use retry::Backoff;
pub use state::{Event, IllegalTransition, JobState, Step, transition};
pub use user::{Role, User, UserId};

/// A field of an input that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// Dotted path of the offending field (`payload.ms`, `priority`).
    pub field: String,
    /// What is wrong with it, in words a user understands.
    pub reason: String,
}

impl Invalid {
    /// An invalid-field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
