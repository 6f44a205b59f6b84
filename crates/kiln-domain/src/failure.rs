//! [`Failure`]: why an attempt did not succeed, classified retryable or permanent.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job error as users see it (`error {code, message, retryable}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable snake_case code: `timeout`, `lease_lost`, `invalid_input`, `kernel_error`, …
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether another attempt may succeed. Permanent failures go straight to `dead`.
    pub retryable: bool,
}

impl Failure {
    /// A failure that another attempt may cure (timeout, lost lease, transient I/O, 429/5xx).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can cure (invalid input found at run time, upstream 4xx).
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// The attempt ran past its type's timeout.
    pub fn timeout(limit_ms: u64) -> Self {
        Self::retryable("timeout", format!("attempt timed out after {limit_ms} ms"))
    }

    /// The attempt's lease expired (its node died or stalled) before it completed.
    pub fn lease_lost() -> Self {
        Self::retryable(
            "lease_lost",
            "the attempt's lease expired before it completed",
        )
    }

    /// The node shut down and interrupted the attempt.
    pub fn interrupted() -> Self {
        Self::retryable("interrupted", "the attempt was interrupted by a shutdown")
    }
}

/// `<code>: <message>`, as a job's event history shows a failure.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
