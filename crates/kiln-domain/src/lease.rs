//! [`Lease`]: the fencing token of one attempt.
//!
//! A claim increments the job's `attempts` and records the claiming node. Every write an
//! attempt makes afterwards (progress, logs, completion, renewal) names its lease, and the
//! store accepts it only while the job is still `running` with that same attempt number and
//! node. A stale worker whose lease was rescued can therefore never overwrite a newer attempt.

use serde::{Deserialize, Serialize};

use crate::JobId;

/// The identity of one running attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The leased job.
    pub job_id: JobId,
    /// The attempt number (1-based), the fencing token.
    pub attempt: u32,
    /// The node that holds the lease.
    pub node: String,
}
