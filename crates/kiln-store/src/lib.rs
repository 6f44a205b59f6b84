//! Kiln's storage: the [`Store`] trait every backend implements, and its SQLite and
//! PostgreSQL backends.
//!
//! # Layout
//! - [`error`]: [`StoreError`] and the one place each backend maps driver errors.
//! - [`model`]: the rows and queries the trait speaks in (users, tokens, list queries,
//!   claims, outcomes, log reads, feed events and cursors, signals).
//! - `log_text`: the rules of bounded job logs (head, tail, skipped bytes, offsets), shared
//!   by both backends.
//! - `keyset`: the list query (filters, sort orders, keyset pages), built once for both
//!   backends; `signal`: what a state change publishes.
//! - [`sqlite`]: the embedded backend (WAL, one writer thread with group commit, a pool
//!   of readers).
//! - [`postgres`]: the shared backend for many nodes (a connection pool, claims with
//!   `FOR UPDATE SKIP LOCKED`, signals across nodes with `LISTEN/NOTIFY`).
//!
//! # Rules every backend keeps
//! - A state change and its event row commit in one transaction.
//! - What an event does to a job is decided by [`kiln_domain::change`] (cancel, retry,
//!   report, the end of an attempt): a backend reads the job, asks it, and writes back.
//! - Legality comes from [`kiln_domain::transition`]; a refused event is
//!   [`StoreError::Illegal`], a write that matched no row is `NotFound`, `LeaseLost` or
//!   `Conflict`, never `Ok`.
//! - Fenced writes (progress, completion, renewal) match `(id, state = running, attempts,
//!   node)`, so a stale attempt cannot overwrite a newer one.
//! - `now` is always passed in: the store never reads a clock.
//! - Owner-scoped calls take `owner: Option<UserId>`; `Some` hides other users' jobs as
//!   `NotFound`, `None` is for operators and the worker.
//! - After each commit, the backend publishes [`Signal`]s to every subscriber (in-process
//!   here; `LISTEN/NOTIFY` across nodes for PostgreSQL).
#![warn(missing_docs)]

mod cache;
pub mod error;
mod keyset;
mod log_text;
pub mod model;
pub mod postgres;
mod signal;
pub mod sqlite;

use async_trait::async_trait;
use kiln_domain::{Job, JobId, JobState, Lease, NewJob, RawJson, Step, Timestamp, UserId};
use tokio::sync::broadcast;

pub use error::{Result, StoreError};

/// A store call slower than this is logged at WARN (with what it was), so a struggling
/// database shows in the logs before it shows as timeouts.
pub const SLOW_STORE_CALL: std::time::Duration = std::time::Duration::from_millis(500);

/// What to say about `active` waiting and running jobs against the `MAX_QUEUED` cap
/// `limit`: nothing below 90 % of it.
fn room_warning(active: u64, limit: u64) -> Option<&'static str> {
    if active >= limit {
        Some("the queue is full (MAX_QUEUED): submissions are refused with 429")
    } else if active.saturating_mul(10) >= limit.saturating_mul(9) {
        Some("the queue is near MAX_QUEUED: submissions will soon be refused with 429")
    } else {
        None
    }
}

/// Logs [`room_warning`] at WARN, at most once every 10 s (a full queue is checked on every
/// submission).
pub(crate) fn note_room(active: u64, limit: u64) {
    use std::sync::{Mutex, PoisonError};
    use std::time::{Duration, Instant};
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Some(message) = room_warning(active, limit) else {
        return;
    };
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(active, limit, "{message}");
}

/// Logs `what` at WARN when it took longer than [`SLOW_STORE_CALL`].
pub(crate) fn warn_if_slow(what: &str, took: std::time::Duration) {
    if took > SLOW_STORE_CALL {
        tracing::warn!(
            what,
            took_ms = took.as_millis() as u64,
            "slow store call (over {} ms)",
            SLOW_STORE_CALL.as_millis()
        );
    }
}
pub use model::*;

/// How long the model's answers are kept for retried jobs ([`Store::answer_get`]).
pub const ANSWERS_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Durable storage of users, tokens, jobs, their events and logs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- users -------------------------------------------------------------------------

    /// Creates a user; `Conflict` if the username is taken.
    async fn user_insert(&self, user: NewUser, now: Timestamp) -> Result<kiln_domain::User>;
    /// A user with their password hash, by username (for login).
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    /// A user by id.
    async fn user_get(&self, id: UserId) -> Result<kiln_domain::User>;
    /// All users, by id.
    async fn user_list(&self) -> Result<Vec<kiln_domain::User>>;
    /// Changes role, password or disabled flag; `NotFound` if no such user. A new password,
    /// a new role or disabling also deletes the user's tokens (sessions and API tokens), in the same
    /// transaction.
    async fn user_update(&self, id: UserId, patch: UserPatch) -> Result<kiln_domain::User>;
    /// How many users exist (0 on first start).
    async fn user_count(&self) -> Result<u64>;
    /// The limits an admin set for `user` (all `None` for none); `NotFound` if no such user.
    async fn user_limits(&self, user: UserId) -> Result<UserLimits>;
    /// Replaces the limits set for `user` (all `None` clears them); `NotFound` if no such
    /// user.
    async fn user_limits_set(&self, user: UserId, limits: UserLimits) -> Result<UserLimits>;
    /// The user linked to an external identity, disabled or not; `None` before first sight.
    async fn user_by_identity(
        &self,
        identity: &ExternalIdentity,
    ) -> Result<Option<kiln_domain::User>>;
    /// Creates a user linked to `identity`, both in one transaction; `Conflict` (nothing
    /// stored) if the username is taken or the identity is already linked.
    async fn user_insert_linked(
        &self,
        user: NewUser,
        identity: ExternalIdentity,
        now: Timestamp,
    ) -> Result<kiln_domain::User>;

    // ---- tokens ------------------------------------------------------------------------

    /// Stores a token (only its SHA-256 hash).
    async fn token_insert(&self, token: NewToken, now: Timestamp) -> Result<TokenInfo>;
    /// The live token with this hash and its enabled user, if any (expired → `None`).
    async fn token_lookup(
        &self,
        hash: &[u8],
        now: Timestamp,
    ) -> Result<Option<(kiln_domain::User, TokenInfo)>>;
    /// The user's tokens of `kind`, newest first.
    async fn token_list(&self, user: UserId, kind: TokenKind) -> Result<Vec<TokenInfo>>;
    /// Deletes one of the user's tokens; `NotFound` if it is not theirs.
    async fn token_delete(&self, user: UserId, id: i64) -> Result<()>;
    /// Deletes the token with this hash (logout). Deleting nothing is fine.
    async fn token_delete_hash(&self, hash: &[u8]) -> Result<()>;
    /// Deletes every token expired at `now`; returns how many.
    async fn token_prune(&self, now: Timestamp) -> Result<u64>;

    // ---- jobs: client side -------------------------------------------------------------

    /// Stores a new job and its first event. With an idempotency key already used by the same
    /// owner: the same request hash returns [`Inserted::Existing`], another hash is
    /// `Conflict`. With `max_queued`, refuses with `QueueFull` when that many non-terminal
    /// jobs exist.
    async fn job_insert(&self, job: NewJob, opts: InsertOptions) -> Result<Inserted>;
    /// One job; `NotFound` if absent or not `owner`'s.
    async fn job_get(&self, owner: Option<UserId>, id: JobId) -> Result<Job>;
    /// [`Store::job_get`] for reads that only pass the payload and result on: they stay the
    /// stored JSON text, never parsed into a tree.
    async fn job_read(&self, owner: Option<UserId>, id: JobId) -> Result<Job<RawJson>>;
    /// What a poller needs of one job, reading only those columns; the result is carried
    /// only when its JSON text is at most `inline_max` bytes. `NotFound` as
    /// [`Store::job_get`].
    async fn job_status(
        &self,
        owner: Option<UserId>,
        id: JobId,
        inline_max: u32,
    ) -> Result<JobStatus>;
    /// A page of jobs matching `query`, with a keyset cursor for the next page.
    async fn job_list(&self, query: &ListQuery) -> Result<Page>;
    /// Applies [`kiln_domain::Event::Cancel`] ([`kiln_domain::change::cancel`]): non-running
    /// jobs become `cancelled` at once; a running one gets `cancel_requested` and a
    /// [`Signal::CancelRequested`], except a running `external` job, which no attempt runs:
    /// it becomes `cancelled` at once, in the same transaction. Terminal jobs are untouched.
    /// Returns the job after the write and what happened.
    async fn job_cancel(
        &self,
        owner: Option<UserId>,
        id: JobId,
        now: Timestamp,
    ) -> Result<(Job, Step)>;
    /// Manual retry of a `failed` or `dead` job ([`kiln_domain::change::retry`]): `queued`
    /// now with a fresh attempt budget of `budget` attempts, the type's policy
    /// `max_attempts`. `attempts` never goes back (it is the fencing token), so the budget
    /// counts from it: `max_attempts` becomes `attempts + budget` and the job may start
    /// exactly `budget` more attempts (at least one: a budget of 0 counts as 1).
    async fn job_retry(
        &self,
        owner: Option<UserId>,
        id: JobId,
        budget: u32,
        now: Timestamp,
    ) -> Result<Job>;
    /// A state report for an `external` job; `Conflict` for other types, `Illegal` for an
    /// illegal move.
    async fn job_report(
        &self,
        owner: Option<UserId>,
        id: JobId,
        report: Report,
        now: Timestamp,
    ) -> Result<Job>;
    /// [`Store::job_cancel`] of anyone's job by the operator `by`, whose name the event
    /// records (`cancelled by oscar`).
    async fn job_cancel_by(&self, by: &str, id: JobId, now: Timestamp) -> Result<(Job, Step)>;
    /// [`Store::job_retry`] of anyone's job by the operator `by`, whose name the event
    /// records (`retry requested by oscar`).
    async fn job_retry_by(&self, by: &str, id: JobId, budget: u32, now: Timestamp) -> Result<Job>;
    /// Gives back the attempt `lease` holds, which its node claimed ahead of a free slot and
    /// never started: `queued` again without spending the attempt, or `cancelled` if a
    /// cancel is pending ([`kiln_domain::change::release`]). `LeaseLost` unless the job
    /// still runs under `lease`.
    async fn job_release(&self, lease: &Lease, now: Timestamp) -> Result<Job>;
    /// Hands back the attempt `lease` holds, which could not do its work for a reason
    /// outside the job (`why`, for the event row): `scheduled` for `until` without spending
    /// the attempt, or `cancelled` if a cancel is pending ([`kiln_domain::change::defer`]).
    /// `LeaseLost` unless the job still runs under `lease`.
    async fn job_defer(
        &self,
        lease: &Lease,
        until: Timestamp,
        why: &str,
        now: Timestamp,
    ) -> Result<Job>;
    /// Hard-deletes a terminal job with its events, logs and idempotency keys; `Conflict` if
    /// it is not terminal.
    async fn job_delete(&self, owner: Option<UserId>, id: JobId) -> Result<()>;
    /// Records the bytes of job `id`'s stored artifacts (they count against its owner's
    /// storage quota); `NotFound` if it is not `owner`'s (`None`: anyone's).
    async fn job_artifacts_set(&self, owner: Option<UserId>, id: JobId, bytes: u64) -> Result<()>;
    /// The bytes of artifacts `owner`'s jobs keep.
    async fn owner_artifact_bytes(&self, owner: UserId) -> Result<u64>;
    /// How many of `owner`'s jobs are in each state, in [`JobState::ALL`] order, states
    /// with none left out. Counts the owner's rows (the dashboard's summary), so it costs
    /// what they have: about a millisecond per 10,000 jobs.
    async fn owner_counts(&self, owner: UserId) -> Result<Vec<(JobState, u64)>>;
    /// The job's state history, oldest first.
    async fn event_list(&self, owner: Option<UserId>, id: JobId) -> Result<Vec<JobEvent>>;
    /// The events of `owner`'s jobs (everyone's with `None`) strictly after `after` in
    /// (`at`, `job_id`, `seq`) order, oldest first, at most `limit`: what a live feed
    /// replays on (re)connecting before it follows [`Signal::Changed`]. Events of deleted
    /// or pruned jobs are gone.
    async fn event_feed(
        &self,
        owner: Option<UserId>,
        after: &FeedCursor,
        limit: u32,
    ) -> Result<Vec<FeedEvent>>;
    /// The job's log text: [`Store::log_read`] from offset 0.
    async fn log_get(&self, owner: Option<UserId>, id: JobId) -> Result<String> {
        Ok(self.log_read(owner, id, 0).await?.text)
    }
    /// The job's log from byte offset `from` of its log stream (every byte ever appended has
    /// one) to the end, with the job's state read in the same snapshot. Logs keep their head
    /// and their tail (at most `log_limit` bytes together); where the text crosses or starts
    /// in the bytes skipped between them, a line `[… N bytes skipped …]` stands for the N
    /// skipped bytes at or after `from`. `from` at or past the end gives an empty text; a
    /// `from` inside a multi-byte character starts at the next character. `NotFound` if
    /// absent or not `owner`'s.
    async fn log_read(&self, owner: Option<UserId>, id: JobId, from: u64) -> Result<LogRead>;

    // ---- jobs: worker side -------------------------------------------------------------

    /// Claims up to `req.limit` ready jobs (`queued`, or `scheduled`/`failed` already due),
    /// highest priority first, then earliest `run_at`, then id. Each becomes `running` with
    /// `attempts + 1`, `started_at = now` and a lease for `req.node` lasting `req.lease` (see
    /// [`ClaimRequest::lease`] for whose clock).
    async fn job_claim(&self, req: &ClaimRequest) -> Result<Vec<Job>>;
    /// Fenced completion of an attempt: `LeaseLost` unless the job is still running under
    /// `lease`. A retryable failure (`retry_at: Some`) of a job with a cancel request
    /// pending ends it `cancelled`, not `failed`, so the owner's cancel is never dropped.
    async fn job_complete(&self, lease: &Lease, outcome: Outcome, now: Timestamp) -> Result<Job>;
    /// What a worker slot does between two jobs: the fenced completion of `lease` (as
    /// [`Store::job_complete`]) and then, if `next` is given, a claim (as
    /// [`Store::job_claim`]) for the freed slot. The completion's own result is reported
    /// apart from the claim: a lost lease still claims. The SQLite backend does both in one
    /// writer command, so a busy worker costs one transaction slot per job instead of two;
    /// the default is the two calls. An `Err` means neither is known to have happened.
    async fn job_complete_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
        next: Option<&ClaimRequest>,
    ) -> Result<(Result<Job>, Vec<Job>)> {
        let completed = lost_lease_is_an_answer(self.job_complete(lease, outcome, now).await)?;
        let claimed = match next {
            // The completion is stored: a failed claim must not make the caller store it
            // again, so it is reported as "nothing claimed" and the dispatcher claims.
            Some(req) => self.job_claim(req).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "claim after a completion failed");
                Vec::new()
            }),
            None => Vec::new(),
        };
        Ok((completed, claimed))
    }
    /// Fenced progress report, clamped to 0.0–1.0 ([`kiln_domain::change::clamp_progress`]).
    async fn job_progress(&self, lease: &Lease, progress: f32, now: Timestamp) -> Result<()>;
    /// Appends to a job's log and returns the log's end offset after it (every byte ever
    /// appended; `""` appends nothing and returns the current end). Past `log_limit` bytes
    /// the log keeps its head (fixed at the first overflow: the first lines within half the
    /// limit) and its newest lines, and counts the bytes skipped between them. `NotFound`
    /// if the job does not exist.
    async fn log_append(&self, id: JobId, text: &str, now: Timestamp) -> Result<u64>;
    /// Extends the given leases by `lease` from `now` (from the database's clock on
    /// PostgreSQL, as [`ClaimRequest::lease`]); reports which are lost and which have a
    /// cancel request pending (the polling fallback for cancel signals).
    async fn lease_renew(
        &self,
        leases: &[Lease],
        now: Timestamp,
        lease: std::time::Duration,
    ) -> Result<Renewal>;
    /// Leases of running jobs that match `filter` (expired ones, or one node's).
    async fn lease_find(&self, filter: LeaseFilter) -> Result<Vec<Lease>>;

    // ---- the node registry -------------------------------------------------------------

    /// Registers a starting node: `Ok(None)` when registered, `Ok(Some(holder))` (a
    /// description of the holder) if a live node (heartbeat within its ttl) holds the same
    /// id and `node.take_over` is not set. `Conflict` if a live node keeps its objects in
    /// another store than `node.objects`. A dead node's registration is taken over.
    /// Forgets nodes dead for [`NODE_KEPT`].
    async fn node_register(&self, node: &NodeStart, now: Timestamp) -> Result<Option<String>>;
    /// Records a heartbeat of the node registered as (`id`, `instance`); `false` if the
    /// registration is no longer this instance's (another took the id over after this one
    /// missed its heartbeats).
    async fn node_heartbeat(&self, id: &str, instance: uuid::Uuid, now: Timestamp) -> Result<bool>;
    /// Removes the registration of a node that stops cleanly.
    async fn node_deregister(&self, id: &str, instance: uuid::Uuid) -> Result<()>;
    /// Every registered node, by id, with the attempts each runs now.
    async fn node_list(&self, now: Timestamp) -> Result<Vec<NodeInfo>>;

    // ---- shared rate limits ------------------------------------------------------------

    /// Takes `cost` from `bucket`, refilled for the time since its last take: `None` when
    /// taken, or how long until it could be (nothing taken). A cost above the capacity
    /// takes a full bucket. PostgreSQL judges by its own clock (one bucket for every node),
    /// SQLite by `now`.
    async fn rate_take(
        &self,
        bucket: &RateBucket,
        cost: f64,
        now: Timestamp,
    ) -> Result<Option<std::time::Duration>>;
    /// The model's answer kept under `key` (what was asked: file hash, prompt, model), if
    /// any younger than [`ANSWERS_KEPT`].
    async fn answer_get(&self, key: &str, now: Timestamp) -> Result<Option<serde_json::Value>>;
    /// Keeps the model's `answer` under `key` (replacing one kept before), and forgets
    /// answers older than [`ANSWERS_KEPT`].
    async fn answer_put(&self, key: &str, answer: &serde_json::Value, now: Timestamp)
    -> Result<()>;

    // ---- maintenance -------------------------------------------------------------------

    /// Moves due `scheduled` and `failed` jobs to `queued` (with events); returns how many.
    async fn job_promote_due(&self, now: Timestamp) -> Result<u64>;
    /// The earliest `run_at` of a `scheduled` or `failed` job, to sleep until.
    async fn job_next_due(&self) -> Result<Option<Timestamp>>;
    /// Deletes terminal jobs finished before `finished_before`, and the oldest terminal
    /// jobs beyond `keep_max`; returns how many, and which of them had artifacts.
    async fn job_prune(&self, finished_before: Timestamp, keep_max: Option<u64>) -> Result<Pruned>;
    /// Counts and timings for `/metrics`.
    async fn job_stats(&self) -> Result<Stats>;
    /// Jobs waiting or running (scheduled, queued, failed, running) per queue and state;
    /// pairs with none are left out. Read from the partial indexes of those states, so it
    /// costs what is waiting or running, not the size of the table.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>>;
    /// The queues an operator has paused or resumed, by name.
    async fn queue_controls(&self) -> Result<Vec<QueueControl>>;
    /// Pauses (`paused`) or resumes queue `name`, as operator `by`: a paused queue accepts
    /// jobs but no claim on any node takes them until it is resumed. Resuming publishes
    /// [`Signal::JobAvailable`]. Returns the queue's control.
    async fn queue_set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        now: Timestamp,
    ) -> Result<QueueControl>;
    /// The connection pool now, for a backend that has one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }

    // ---- signals -----------------------------------------------------------------------

    /// Subscribes to signals published after each commit. A lagging receiver should treat
    /// `Lagged` as "something changed" and re-read.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
}

/// A completion's result as [`Store::job_complete_and_claim`] reports it: a lost lease has
/// written nothing and is an answer (the claim goes ahead); any other error fails the call.
pub(crate) fn lost_lease_is_an_answer(completed: Result<Job>) -> Result<Result<Job>> {
    match completed {
        Err(e) if !matches!(e, StoreError::LeaseLost) => Err(e),
        completed => Ok(completed),
    }
}

#[cfg(test)]
mod tests {
    use super::room_warning;

    #[test]
    fn the_queue_cap_is_warned_about_from_ninety_percent() {
        assert_eq!(room_warning(0, 100), None);
        assert_eq!(room_warning(89, 100), None);
        assert!(room_warning(90, 100).unwrap().contains("near"));
        assert!(room_warning(100, 100).unwrap().contains("full"));
        assert!(room_warning(150, 100).unwrap().contains("full"));
        assert!(room_warning(0, 0).unwrap().contains("full"));
        assert!(room_warning(u64::MAX, u64::MAX).is_some());
    }
}
