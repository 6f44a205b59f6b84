//! [`StoreError`]: what a store operation can fail with, independent of the backend.
//!
//! Each backend maps its driver's errors in exactly one function (`sqlite::map_err`,
//! `postgres::map_err`): unique violations become [`StoreError::Conflict`];
//! busy/locked/serialisation failures, deadlocks and lost connections
//! [`StoreError::Transient`]; anything else [`StoreError::Backend`].

use kiln_domain::IllegalTransition;
use kiln_domain::change::ReportRefused;

/// A boxed driver error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such row (or not visible to this owner).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or a precondition refused the write.
    #[error("conflict: {what}")]
    Conflict {
        /// What conflicted, for the user (`username already taken`, `job is not terminal`).
        what: String,
    },
    /// The state machine refused the event.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// A fenced write named a lease the job no longer holds.
    #[error("lease lost: the attempt no longer holds the job")]
    LeaseLost,
    /// `MAX_QUEUED` non-terminal jobs exist already.
    #[error("queue full: {limit} jobs are waiting")]
    QueueFull {
        /// The configured capacity.
        limit: u64,
    },
    /// The owner has their quota of non-terminal jobs already.
    #[error("active-job quota: {limit} jobs are waiting or running")]
    ActiveQuota {
        /// The owner's quota.
        limit: u64,
    },
    /// The database has no room: its disk is full, or it reached its configured size.
    /// Nothing of the write was kept; worth retrying once room is made.
    #[error("the database is full")]
    Full(#[source] BoxError),
    /// Worth retrying: busy database, serialisation failure, lost connection.
    #[error("transient storage error")]
    Transient(#[source] BoxError),
    /// Anything else the backend reported.
    #[error("storage error")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// A conflict described in words.
    pub fn conflict(what: impl Into<String>) -> Self {
        Self::Conflict { what: what.into() }
    }

    /// This error, a conflict now described as `what` (a backend's generic unique
    /// violation, once the caller knows what was duplicated).
    pub(crate) fn conflict_as(self, what: &str) -> Self {
        match self {
            Self::Conflict { .. } => Self::conflict(what),
            other => other,
        }
    }

    /// Whether retrying the same call may succeed (a full database may have room later).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Full(_))
    }
}

/// A backend failure described in words (a corrupt row, a stopped writer, a bad URL).
pub(crate) fn backend(what: impl Into<String>) -> StoreError {
    StoreError::Backend(BoxError::from(what.into()))
}

/// A refused report: `Conflict` for a job that is not `external`, else `Illegal`.
impl From<ReportRefused> for StoreError {
    fn from(refused: ReportRefused) -> Self {
        match refused {
            ReportRefused::NotExternal | ReportRefused::TooManyAttempts => {
                Self::conflict(refused.to_string())
            }
            ReportRefused::Illegal(illegal) => Self::Illegal(illegal),
        }
    }
}

/// `Result` with a [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
