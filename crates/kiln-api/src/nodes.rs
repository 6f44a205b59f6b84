//! The registry of nodes: `GET /api/v1/admin/nodes`.

use kiln_domain::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ts;

/// A node (a `kiln serve` or `kiln worker` process) as `GET /admin/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The node id its jobs' leases and events carry (`KILN_NODE_ID`).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Kiln's version.
    pub version: String,
    /// `serve` (API and worker) or `worker`.
    pub role: String,
    /// Its worker slots (`MAX_CONCURRENCY`).
    pub slots: u32,
    /// Attempts it runs now.
    pub running: u32,
    /// Where it keeps uploads and artifacts (`database`, an object store URL, or a local
    /// directory); every live node shares one.
    pub objects: String,
    /// When it started.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub started_at: Timestamp,
    /// Its last heartbeat (every third of `KILN_LEASE`).
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub heartbeat_at: Timestamp,
    /// Whether that heartbeat is within its lease. A node that stopped cleanly is not
    /// listed; one that died is listed, not live, for a day (its jobs are rescued once
    /// their leases expire).
    pub live: bool,
}
