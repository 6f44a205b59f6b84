//! The rows and requests the [`crate::Store`] trait speaks in.

use std::sync::Arc;

use kiln_domain::{
    Failure, Job, JobId, JobState, JobType, NewJob, QueueName, RawJson, Timestamp, UserId,
};

pub use kiln_domain::change::{Outcome, Report};
pub use nodes::*;
pub use users::*;

pub(crate) mod nodes;
mod users;

/// A token bucket kept in the store ([`crate::Store::rate_take`]): full at `capacity`,
/// refilled at `per_second` up to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RateBucket {
    /// Its name, shared by every node that takes from it.
    pub name: String,
    /// The most it holds (the burst).
    pub capacity: f64,
    /// Refill per second.
    pub per_second: f64,
}

impl RateBucket {
    /// How long until `cost` is in a bucket at `level`.
    pub fn wait(&self, level: f64, cost: f64) -> std::time::Duration {
        let missing = (cost.min(self.capacity) - level).max(0.0);
        std::time::Duration::from_secs_f64(
            (missing / self.per_second.max(f64::MIN_POSITIVE)).min(86_400.0),
        )
    }
}

/// [`kiln_domain::change::release`] of the attempt `lease` holds, for every backend:
/// `LeaseLost` unless the job still runs under that lease.
pub(crate) fn release(
    job: &mut Job,
    lease: &kiln_domain::Lease,
    now: Timestamp,
) -> crate::Result<kiln_domain::change::Change> {
    held(job, lease)?;
    Ok(kiln_domain::change::release(job, now)?)
}

/// [`kiln_domain::change::defer`] of the attempt `lease` holds, for every backend:
/// `LeaseLost` unless the job still runs under that lease.
pub(crate) fn defer(
    job: &mut Job,
    lease: &kiln_domain::Lease,
    until: Timestamp,
    why: &str,
    now: Timestamp,
) -> crate::Result<kiln_domain::change::Change> {
    held(job, lease)?;
    Ok(kiln_domain::change::defer(job, until, why, now)?)
}

fn held(job: &Job, lease: &kiln_domain::Lease) -> crate::Result<()> {
    let held = job.state == JobState::Running
        && job.attempts == lease.attempt
        && job.node.as_deref() == Some(lease.node.as_str());
    if held {
        Ok(())
    } else {
        Err(crate::StoreError::LeaseLost)
    }
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
    /// Refuse with `ActiveQuota` when the job's owner has this many non-terminal jobs.
    pub owner_max_active: Option<u64>,
}

/// The record `new` becomes when stored; `Conflict` unless it starts `scheduled` or
/// `queued` (a job built by hand rather than parsed could say otherwise).
pub(crate) fn stored_job(new: NewJob) -> crate::Result<Job> {
    if !matches!(new.state, JobState::Scheduled | JobState::Queued) {
        return Err(crate::StoreError::conflict(
            "a new job must be scheduled or queued",
        ));
    }
    Ok(new.into_job())
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
    /// The last item's id, which orders items with equal keys.
    pub id: JobId,
}

impl Cursor {
    /// An opaque URL-safe string (`<key>.<uuid-hex>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.key, self.id.0.simple())
    }

    /// The position that resumes after `job` in `sort` order.
    pub fn after<J>(sort: Sort, job: &Job<J>) -> Self {
        let key = match sort {
            Sort::CreatedAsc | Sort::CreatedDesc => job.created_at.timestamp_millis(),
            Sort::PriorityAsc | Sort::PriorityDesc => i64::from(job.priority),
        };
        Self { key, id: job.id }
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
    /// Sort order. A [`Cursor`] holds the key of one sort, so it only resumes a list in
    /// the order it was made for.
    pub sort: Sort,
    /// Page size, 1..=100.
    pub limit: u32,
    /// Start after this position.
    pub cursor: Option<Cursor>,
}

/// The light view of one job that status polling reads ([`crate::Store::job_status`]).
#[derive(Debug, Clone)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Its current state.
    pub state: JobState,
    /// 0.0–1.0, as the running attempt last reported it.
    pub progress: f32,
    /// The last change to any column, progress included.
    pub updated_at: Timestamp,
    /// The last attempt's error, if any.
    pub error: Option<Failure>,
    /// The result as stored, when there is one and it is no larger than the size asked for.
    pub result: Option<RawJson>,
    /// Whether the job has a result at all (inlined in `result` or too large for it).
    pub has_result: bool,
}

/// A page of jobs, their payloads and results as stored text (lists only pass them on).
#[derive(Debug, Clone)]
pub struct Page {
    /// At most the query's `limit` jobs, in its sort order.
    pub items: Vec<Job<RawJson>>,
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
    /// The job's `updated_at` after the change (millisecond precision).
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
    /// The claiming node's name; the claimed jobs record it as their `node`.
    pub node: String,
    /// Types this node executes.
    pub types: Vec<String>,
    /// Queues not to claim from: the worker names those at their per-node concurrency limit
    /// (and, for the claim that follows a completion, every queue that has a limit).
    pub exclude_queues: Vec<String>,
    /// Owners whose jobs not to claim: the worker names the clients that hold their share of
    /// its slots.
    pub exclude_owners: Vec<UserId>,
    /// Most jobs to claim.
    pub limit: u32,
    /// Claim time: jobs due by then may be claimed, and it becomes the claimed jobs'
    /// `started_at`.
    pub now: Timestamp,
    /// How long the claimed jobs' leases last: from `now` on SQLite (one process owns the
    /// file, so its clock is the only one), from the database server's clock on PostgreSQL
    /// (nodes' clocks may differ; a lease is never judged by one of them).
    pub lease: std::time::Duration,
    /// At most this many jobs of one owner in this claim (`None`: any number), except the
    /// owners in [`ClaimRequest::per_owner_exempt`]: a node's fair share of its slots, held
    /// in a claim that takes many jobs at once. A backend may look only a bounded way past
    /// `limit` in the claim order (PostgreSQL: twice as deep), so such a claim can take
    /// fewer than `limit` while more jobs wait.
    pub per_owner: Option<u32>,
    /// Owners [`ClaimRequest::per_owner`] does not hold back (those the share does not
    /// count: operators and admins).
    pub per_owner_exempt: Vec<UserId>,
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
    /// Running jobs whose lease has expired: before `now` on SQLite, before the database
    /// server's own `now()` on PostgreSQL (`now` is not used there: see
    /// [`ClaimRequest::lease`]).
    Expired(Timestamp),
    /// Running jobs leased by this node (its previous incarnation, at start-up).
    Node(String),
}

/// What one prune deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Jobs deleted.
    pub count: u64,
    /// Those of them whose result listed artifacts (`result.artifacts`): the artifacts to
    /// delete with them, so the sweep never has to list the whole object store.
    pub with_artifacts: Vec<JobId>,
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
    /// p95 of `started_at − created_at` over the 1,000 most recently finished jobs that
    /// started, ms.
    pub p95_start_latency_ms: f64,
}

/// Jobs of one queue in one state ([`crate::Store::queue_depths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// A waiting or running state.
    pub state: JobState,
    /// How many.
    pub n: u64,
}

/// Whether an operator paused a queue ([`crate::Store::queue_controls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueControl {
    /// The queue.
    pub name: String,
    /// Paused: it accepts jobs, but none is claimed.
    pub paused: bool,
    /// When it was last paused or resumed.
    pub changed_at: Timestamp,
    /// By whom (a username).
    pub changed_by: String,
}

/// A backend's connection pool ([`crate::Store::pool_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Connections open and not in use.
    pub idle: usize,
    /// Connections in use.
    pub busy: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// The statement behind [`crate::Store::queue_depths`], the same on both backends: one
/// `GROUP BY` per partial index (`jobs_claim`, `jobs_due`, `jobs_lease`), each of which
/// holds only jobs in its states.
pub(crate) const QUEUE_DEPTHS: &str = "
    SELECT queue, 'queued', count(*) FROM jobs WHERE state = 'queued' GROUP BY queue
    UNION ALL
    SELECT queue, state, count(*) FROM jobs WHERE state IN ('scheduled', 'failed')
    GROUP BY queue, state
    UNION ALL
    SELECT queue, 'running', count(*) FROM jobs WHERE state = 'running' GROUP BY queue";

/// What [`crate::Store::log_read`] found: a job's log from an offset, and the job's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRead {
    /// The log from the offset asked for to its end, with a
    /// `[… N bytes skipped …]` line where bytes between the kept head and tail are missing.
    pub text: String,
    /// The end offset of the log: every byte ever appended. Read from here next time.
    pub end: u64,
    /// The job's state when the text was read (terminal: no more text will come).
    pub state: JobState,
}

/// One state change of a job, with what a live feed of events shows of the job. Published
/// as [`Signal::Changed`] and read back by [`crate::Store::event_feed`].
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// The job.
    pub job_id: JobId,
    /// Its owner: a live feed shows a client only their own jobs' events.
    pub owner: UserId,
    /// Its type, for feeds filtered by type.
    pub job_type: JobType,
    /// Its queue, for feeds filtered by queue.
    pub queue: QueueName,
    /// The event's sequence number within the job, from 1.
    pub seq: i64,
    /// The state entered (or, for a cancel request, still `running`).
    pub state: JobState,
    /// The attempt number at that time.
    pub attempt: u32,
    /// The job's `updated_at` after the change (millisecond precision); the feed is ordered
    /// by it first.
    pub at: Timestamp,
}

impl FeedEvent {
    /// The event of `job` as it is now (its state, `updated_at` and attempt), numbered `seq`:
    /// what a backend stores and publishes for each state change.
    pub(crate) fn of(job: &Job, seq: i64) -> Self {
        Self {
            job_id: job.id,
            owner: job.owner,
            job_type: job.job_type,
            queue: job.queue.clone(),
            seq,
            state: job.state,
            attempt: job.attempts,
            at: kiln_domain::clock::truncate_ms(job.updated_at),
        }
    }

    /// The feed position of this event: resume after it with [`crate::Store::event_feed`].
    pub fn cursor(&self) -> FeedCursor {
        FeedCursor {
            at: self.at,
            job_id: self.job_id,
            seq: self.seq,
        }
    }
}

/// A position in the feed of job events, ordered by (`at`, `job_id`, `seq`) as the feed is.
/// As text (`Display`/`FromStr`): `{at unix ms}.{job uuid as simple hex}.{seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedCursor {
    /// The event's time (millisecond precision, as stored).
    pub at: Timestamp,
    /// Its job, which orders events with the same `at`.
    pub job_id: JobId,
    /// Its sequence number within the job.
    pub seq: i64,
}

impl FeedCursor {
    /// The position just before every event at `at` or later (no job id sorts below the nil
    /// UUID, no event number below 1).
    pub fn before(at: Timestamp) -> Self {
        Self {
            at: kiln_domain::clock::truncate_ms(at),
            job_id: JobId(uuid::Uuid::nil()),
            seq: 0,
        }
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at.timestamp_millis();
        write!(f, "{at}.{}.{}", self.job_id.0.simple(), self.seq)
    }
}

/// A string that is not a [`FeedCursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a feed cursor (expected `<unix ms>.<job id hex>.<seq>`)")]
pub struct BadFeedCursor;

impl std::str::FromStr for FeedCursor {
    type Err = BadFeedCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let (Some(at), Some(id), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadFeedCursor);
        };
        let at = at
            .parse()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis);
        let id = uuid::Uuid::try_parse(id).ok().filter(|_| id.len() == 32);
        match (at, id, seq.parse()) {
            (Some(at), Some(id), Ok(seq)) => Ok(Self {
                at,
                job_id: JobId(id),
                seq,
            }),
            _ => Err(BadFeedCursor),
        }
    }
}

/// Published after a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// New or newly due work may be claimable.
    JobAvailable,
    /// A running job's owner asked to cancel it.
    CancelRequested(JobId),
    /// A user's tokens, role, enabled flag or limits changed (a token revoked, a password
    /// or role changed, the user disabled, limits set): forget what is cached of them.
    UserChanged(UserId),
    /// A job changed state: the event just stored (shared, so every subscriber's copy is a
    /// reference count).
    Changed(Arc<FeedEvent>),
    /// Text was appended to a job's log, ending at offset `end` of its log stream. `text` is
    /// the appended text on the node that wrote it, and `None` on other nodes (NOTIFY
    /// carries only the offset: they read the text from the database if they need it).
    LogAppended {
        /// The job whose log grew.
        id: JobId,
        /// The log's end offset after the append.
        end: u64,
        /// What was appended, where known.
        text: Option<Arc<str>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> FeedCursor {
        FeedCursor {
            at: kiln_domain::clock::from_millis(1_767_225_600_123),
            job_id: JobId(uuid::Uuid::from_u128(
                0x0193_0000_0000_7000_8000_0000_0000_00ab,
            )),
            seq: 7,
        }
    }

    #[test]
    fn feed_cursors_survive_a_round_trip_through_text() {
        let text = cursor().to_string();
        assert_eq!(text, "1767225600123.019300000000700080000000000000ab.7");
        assert_eq!(text.parse::<FeedCursor>(), Ok(cursor()));
        let early = FeedCursor::before(kiln_domain::clock::from_millis(-5));
        assert_eq!(early.to_string().parse::<FeedCursor>(), Ok(early));
    }

    #[test]
    fn anything_else_is_not_a_feed_cursor() {
        let hex = cursor().job_id.0.simple().to_string();
        for bad in [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "1.2".to_owned(),
            format!("x.{hex}.1"),
            format!("1.{hex}.x"),
            format!("1.{hex}.1.2"),
            format!("1.{hex}"),
            "1.0193-0000.1".to_owned(),
            format!("1.{}.1", cursor().job_id.0),
            format!("99999999999999999999.{hex}.1"),
            format!("{}.{hex}.1", i64::MAX),
            format!("1.{hex}.99999999999999999999"),
            "1.é€.1".to_owned(),
        ] {
            assert_eq!(bad.parse::<FeedCursor>(), Err(BadFeedCursor), "{bad:?}");
        }
    }

    #[test]
    fn feed_cursors_order_by_time_then_job_then_seq() {
        let c = cursor();
        let later_job = FeedCursor {
            job_id: JobId(uuid::Uuid::from_u128(c.job_id.0.as_u128() + 1)),
            seq: 1,
            ..c
        };
        let later_time = FeedCursor {
            at: c.at + chrono::TimeDelta::milliseconds(1),
            job_id: JobId(uuid::Uuid::nil()),
            seq: 0,
        };
        assert!(FeedCursor::before(c.at) < c);
        assert!(c < FeedCursor { seq: 8, ..c });
        assert!(c < later_job && later_job < later_time);
    }
}
