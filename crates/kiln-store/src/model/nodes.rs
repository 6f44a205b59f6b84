//! The registry of nodes: each running `kiln serve`/`kiln worker` process registers its
//! node id as it starts and proves it is alive by heartbeats; operators list the registry.

use std::time::Duration;

use kiln_domain::Timestamp;

/// A node as it registers itself ([`crate::Store::node_register`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStart {
    /// The node id its leases carry (`KILN_NODE_ID`).
    pub id: String,
    /// This process's own random id: a heartbeat or a clean stop touches the registration
    /// only while it is still this process's.
    pub instance: uuid::Uuid,
    /// The machine's host name.
    pub host: String,
    /// The process id on that machine.
    pub pid: u32,
    /// Kiln's version.
    pub version: String,
    /// `serve` (API and worker) or `worker`.
    pub role: String,
    /// Its worker slots (`MAX_CONCURRENCY`).
    pub slots: u32,
    /// Where it keeps uploads and artifacts (`postgres`, a URL, or `local:<dir>`): every
    /// live node must name the same store, or a file uploaded through one would be missing
    /// on another.
    pub objects: String,
    /// How long the registration lasts without a heartbeat: the node's lease, so a node
    /// counts as gone exactly when its jobs may be rescued.
    pub ttl: Duration,
    /// Take the id over even from a live registration: the caller knows its holder is
    /// dead (a SQLite node holds the database file's lock, so no other process is using
    /// it, whatever the last heartbeat says).
    pub take_over: bool,
}

/// A registered node, as [`crate::Store::node_list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Kiln's version.
    pub version: String,
    /// `serve` or `worker`.
    pub role: String,
    /// Worker slots.
    pub slots: u32,
    /// Attempts it runs now (running jobs under its leases).
    pub running: u32,
    /// Its object store.
    pub objects: String,
    /// When it registered.
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// Whether that heartbeat is recent enough (within its lease; on PostgreSQL by the
    /// database server's clock). A node that stopped cleanly has left the registry; one
    /// that died stays listed, not live, for a day.
    pub live: bool,
}

/// The refusal of a node whose object store differs from live node `other`'s.
pub(crate) fn other_store(other: &str, theirs: &str, node: &NodeStart) -> crate::StoreError {
    crate::StoreError::conflict(format!(
        "live node `{other}` keeps uploads and artifacts in `{theirs}`, this node in `{}`: \
         every node must share one object store (KILN_OBJECT_STORE), or a file uploaded \
         through one node is missing on another",
        node.objects
    ))
}

/// The holder of a node id, as [`crate::Store::node_register`] describes it.
pub(crate) fn holder(pid: i64, host: &str, seconds_ago: f64) -> String {
    format!("process {pid} on `{host}`, last heartbeat {seconds_ago:.1} s ago")
}

/// How long a dead node stays listed.
pub const NODE_KEPT: Duration = Duration::from_secs(24 * 3600);
