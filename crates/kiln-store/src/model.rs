//! The rows and requests the [`crate::Store`] trait speaks in.

use kiln_domain::{Failure, Job, JobId, JobState, Role, Timestamp, User, UserId};
use serde_json::Value;

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique login name (already validated).
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// A user with their password hash, for login only.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The user.
    pub user: User,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// New argon2id hash.
    pub password_hash: Option<String>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Issued by `POST /auth/login`; short-lived.
    Session,
    /// A long-lived API token for machines.
    Api,
}

impl TokenKind {
    /// Name in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Api => "api",
        }
    }
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Owner.
    pub user: UserId,
    /// SHA-256 of the secret (the secret itself is never stored).
    pub hash: Vec<u8>,
    /// Kind.
    pub kind: TokenKind,
    /// A label the user chose (API tokens) or `login`.
    pub name: String,
    /// Expiry; `None` never expires.
    pub expires_at: Option<Timestamp>,
}

/// A stored token's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// Id.
    pub id: i64,
    /// Owner.
    pub user: UserId,
    /// Kind.
    pub kind: TokenKind,
    /// Label.
    pub name: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
}

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The key (scoped to the owner).
    pub key: String,
    /// SHA-256 of the request body (type, payload and options).
    pub request_hash: Vec<u8>,
}

/// Options of [`crate::Store::job_insert`].
#[derive(Debug, Clone, Default)]
pub struct InsertOptions {
    /// Deduplicate by this key.
    pub idempotency: Option<Idempotency>,
    /// Refuse with `QueueFull` when this many non-terminal jobs exist.
    pub max_queued: Option<u64>,
}

/// What [`crate::Store::job_insert`] did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new job.
    Created(Job),
    /// The job an earlier request with the same idempotency key created.
    Existing(Job),
}

impl Inserted {
    /// The job either way.
    pub fn job(&self) -> &Job {
        match self {
            Inserted::Created(job) | Inserted::Existing(job) => job,
        }
    }
}

/// Sort order of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Oldest first.
    CreatedAsc,
    /// Newest first (default).
    #[default]
    CreatedDesc,
    /// Lowest priority first.
    PriorityAsc,
    /// Highest priority first.
    PriorityDesc,
}

impl Sort {
    /// The list's keyset: the sorted column, its SQL direction, and the comparison that
    /// selects rows after a cursor (ties broken by id in the same direction).
    pub fn keyset(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Sort::CreatedAsc => ("created_at", "ASC", ">"),
            Sort::CreatedDesc => ("created_at", "DESC", "<"),
            Sort::PriorityAsc => ("priority", "ASC", ">"),
            Sort::PriorityDesc => ("priority", "DESC", "<"),
        }
    }
}

/// Keyset position: the sort key and id of the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` in ms, or the priority, depending on the sort.
    pub key: i64,
    /// Tie-breaker.
    pub id: JobId,
}

impl Cursor {
    /// An opaque URL-safe string (`<key>.<uuid-hex>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.key, self.id.0.simple())
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Self> {
        let (key, id) = s.split_once('.')?;
        Some(Self {
            key: key.parse().ok()?,
            id: JobId(uuid::Uuid::try_parse(id).ok()?),
        })
    }
}

/// Filters, order and page of [`crate::Store::job_list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this owner's jobs (`None`: everyone's, for operators).
    pub owner: Option<UserId>,
    /// Any of these states (empty: all).
    pub states: Vec<JobState>,
    /// Exact type.
    pub job_type: Option<String>,
    /// Exact queue.
    pub queue: Option<String>,
    /// Exact name.
    pub name: Option<String>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
    /// Order.
    pub sort: Sort,
    /// Page size, 1..=100.
    pub limit: u32,
    /// Start after this position.
    pub cursor: Option<Cursor>,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct Page {
    /// The jobs.
    pub items: Vec<Job>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<Cursor>,
}

/// One state change in a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// Order within the job, from 1.
    pub seq: i64,
    /// The state entered (or, for a cancel request, still `running`).
    pub state: JobState,
    /// When.
    pub at: Timestamp,
    /// The attempt number at that time.
    pub attempt: u32,
    /// The node involved, if any.
    pub node: Option<String>,
    /// What happened (`submitted`, `claimed`, `timeout: …`, `cancel requested`).
    pub message: Option<String>,
}

/// What a worker asks of [`crate::Store::job_claim`].
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming node.
    pub node: String,
    /// Types this node executes.
    pub types: Vec<String>,
    /// Queues not to claim from (paused, or at their concurrency limit).
    pub exclude_queues: Vec<String>,
    /// Most jobs to claim.
    pub limit: u32,
    /// Claim time.
    pub now: Timestamp,
    /// Lease expiry of the claimed jobs.
    pub lease_until: Timestamp,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// With this result.
    Succeeded(Value),
    /// With this failure; `retry_at` is when the next attempt is due (`failed`), or `None`
    /// when the job is `dead`.
    Failed {
        /// Why.
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
    /// The new state.
    pub state: JobState,
    /// Result (with `succeeded`).
    pub result: Option<Value>,
    /// Error (with `failed`/`dead`).
    pub error: Option<Failure>,
}

/// What [`crate::Store::lease_renew`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Renewal {
    /// Leases that are no longer held (the job was rescued or finished elsewhere).
    pub lost: Vec<JobId>,
    /// Held leases whose job has a cancel request pending.
    pub cancel_requested: Vec<JobId>,
}

/// Which leases [`crate::Store::lease_find`] returns.
#[derive(Debug, Clone)]
pub enum LeaseFilter {
    /// Running jobs whose lease expired before this instant.
    ExpiredAt(Timestamp),
    /// Running jobs leased by this node (its previous incarnation, at start-up).
    Node(String),
}

/// Counts and timings for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Jobs ever inserted (including pruned ones).
    pub total_submitted: u64,
    /// Current count per state.
    pub by_state: Vec<(JobState, u64)>,
    /// Mean `finished_at − started_at` of the 1,000 most recently finished succeeded jobs, ms.
    pub avg_duration_ms: f64,
    /// p95 of `started_at − created_at` over the most recent started jobs, ms.
    pub p95_start_latency_ms: f64,
}

/// Published after a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// New or newly due work may be claimable.
    JobAvailable,
    /// A running job's owner asked to cancel it.
    CancelRequested(JobId),
    /// A job changed state.
    Changed {
        /// Job.
        id: JobId,
        /// Its owner.
        owner: UserId,
        /// Its new state.
        state: JobState,
    },
}
