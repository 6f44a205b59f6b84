//! The last hour of one node, minute by minute: `GET /api/v1/admin/series`.

use kiln_domain::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ts;

/// `GET /admin/series`: what one node's worker did in each minute of the last hour, for
/// charts. Per node: each node counts the attempts its own worker started and ended (not
/// those of other nodes, nor `external` jobs' reports); kept in memory, so a restart starts
/// an empty hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesView {
    /// The node that answered and whose attempts these are (`KILN_NODE_ID`); absent when
    /// the server was started without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The 60 minutes ending with the current one, oldest first, one minute apart; a
    /// minute with no activity has zeros.
    pub minutes: Vec<MinuteView>,
}

/// One minute of [`SeriesView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinuteView {
    /// When the minute began (UTC, on the minute).
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:00.000Z")]
    pub at: Timestamp,
    /// Attempts started.
    pub started: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed and will be retried.
    pub failed: u64,
    /// Attempts that failed for good (`dead`).
    pub dead: u64,
    /// Attempts cancelled (while running, or claimed and cancelled before they started).
    pub cancelled: u64,
    /// Start latency (from when a job was due to its start) of the attempts started in the
    /// minute; `null` when none started.
    pub start_latency_ms: Option<Percentiles>,
}

/// Start-latency percentiles of one minute, in milliseconds.
///
/// Read from log-spaced buckets (0.5 ms to 60 s, each bound at most 42 % above the one
/// below): each figure is its bucket's upper bound, or the minute's longest wait when that
/// is lower, so it is never below the true percentile and less than 42 % above it (at most
/// 0.5 ms for waits under 0.5 ms). Past 60 s it is the minute's longest wait.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
}
