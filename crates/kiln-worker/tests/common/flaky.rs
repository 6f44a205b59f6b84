//! A store for the worker's tests: a real store behind it, with faults a test turns on
//! (an outage of completions, a panic on the completion path, slow claims).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kiln_domain::{Job, JobId, Lease, NewJob, RawJson, Step, Timestamp, UserId};
use kiln_store::{
    ClaimRequest, ExternalIdentity, FeedCursor, FeedEvent, InsertOptions, Inserted, JobEvent,
    JobStatus, LeaseFilter, ListQuery, LogRead, NewToken, NewUser, Outcome, Page, Renewal, Report,
    Result, Signal, Stats, Store, StoreError, TokenInfo, TokenKind, UserLimits, UserPatch,
    UserRecord,
};
use tokio::sync::broadcast;

/// A store that is down for completions: while `fail_completions` is above zero, each
/// [`Store::job_complete_and_claim`] or [`Store::job_complete`] uses up one failure and
/// returns a transient error without reaching `inner`. Every other call, and every
/// completion after the outage, goes to `inner`.
pub struct Flaky {
    inner: Arc<dyn Store>,
    pub fail_completions: AtomicU32,
    /// While above zero, each [`Store::job_complete_and_claim`] panics (a bug in the
    /// worker's path) instead of answering.
    pub panic_completions: AtomicU32,
    /// Calls of [`Store::job_complete_and_claim`], failed or not.
    pub complete_and_claim_calls: AtomicU32,
    /// How long each [`Store::job_claim`] waits before it reaches `inner`.
    pub claim_delay: Duration,
}

impl Flaky {
    pub fn new(inner: Arc<dyn Store>, fail_completions: u32) -> Self {
        Self {
            inner,
            fail_completions: AtomicU32::new(fail_completions),
            panic_completions: AtomicU32::new(0),
            complete_and_claim_calls: AtomicU32::new(0),
            claim_delay: Duration::ZERO,
        }
    }

    /// Uses up one failure of the outage, if any is left.
    pub fn outage(&self) -> Result<()> {
        let failing = self
            .fail_completions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            Err(StoreError::Transient("the database is unavailable".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn user_insert(&self, user: NewUser, now: Timestamp) -> Result<kiln_domain::User> {
        self.inner.user_insert(user, now).await
    }
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        self.inner.user_by_name(username).await
    }
    async fn user_get(&self, id: UserId) -> Result<kiln_domain::User> {
        self.inner.user_get(id).await
    }
    async fn user_list(&self) -> Result<Vec<kiln_domain::User>> {
        self.inner.user_list().await
    }
    async fn user_update(&self, id: UserId, patch: UserPatch) -> Result<kiln_domain::User> {
        self.inner.user_update(id, patch).await
    }
    async fn user_count(&self) -> Result<u64> {
        self.inner.user_count().await
    }
    async fn user_limits(&self, user: UserId) -> Result<UserLimits> {
        self.inner.user_limits(user).await
    }
    async fn user_limits_set(&self, user: UserId, limits: UserLimits) -> Result<UserLimits> {
        self.inner.user_limits_set(user, limits).await
    }
    async fn user_by_identity(
        &self,
        identity: &ExternalIdentity,
    ) -> Result<Option<kiln_domain::User>> {
        self.inner.user_by_identity(identity).await
    }
    async fn user_insert_linked(
        &self,
        user: NewUser,
        identity: ExternalIdentity,
        now: Timestamp,
    ) -> Result<kiln_domain::User> {
        self.inner.user_insert_linked(user, identity, now).await
    }

    async fn token_insert(&self, token: NewToken, now: Timestamp) -> Result<TokenInfo> {
        self.inner.token_insert(token, now).await
    }
    async fn token_lookup(
        &self,
        hash: &[u8],
        now: Timestamp,
    ) -> Result<Option<(kiln_domain::User, TokenInfo)>> {
        self.inner.token_lookup(hash, now).await
    }
    async fn token_list(&self, user: UserId, kind: TokenKind) -> Result<Vec<TokenInfo>> {
        self.inner.token_list(user, kind).await
    }
    async fn token_delete(&self, user: UserId, id: i64) -> Result<()> {
        self.inner.token_delete(user, id).await
    }
    async fn token_delete_hash(&self, hash: &[u8]) -> Result<()> {
        self.inner.token_delete_hash(hash).await
    }

    async fn token_prune(&self, now: Timestamp) -> Result<u64> {
        self.inner.token_prune(now).await
    }

    async fn job_insert(&self, job: NewJob, opts: InsertOptions) -> Result<Inserted> {
        self.inner.job_insert(job, opts).await
    }
    async fn job_get(&self, owner: Option<UserId>, id: JobId) -> Result<Job> {
        self.inner.job_get(owner, id).await
    }
    async fn job_read(&self, owner: Option<UserId>, id: JobId) -> Result<Job<RawJson>> {
        self.inner.job_read(owner, id).await
    }
    async fn job_status(
        &self,
        owner: Option<UserId>,
        id: JobId,
        inline_max: u32,
    ) -> Result<JobStatus> {
        self.inner.job_status(owner, id, inline_max).await
    }
    async fn job_list(&self, query: &ListQuery) -> Result<Page> {
        self.inner.job_list(query).await
    }
    async fn job_cancel(
        &self,
        owner: Option<UserId>,
        id: JobId,
        now: Timestamp,
    ) -> Result<(Job, Step)> {
        self.inner.job_cancel(owner, id, now).await
    }
    async fn job_retry(
        &self,
        owner: Option<UserId>,
        id: JobId,
        budget: u32,
        now: Timestamp,
    ) -> Result<Job> {
        self.inner.job_retry(owner, id, budget, now).await
    }
    async fn job_report(
        &self,
        owner: Option<UserId>,
        id: JobId,
        report: Report,
        now: Timestamp,
    ) -> Result<Job> {
        self.inner.job_report(owner, id, report, now).await
    }
    async fn job_delete(&self, owner: Option<UserId>, id: JobId) -> Result<()> {
        self.inner.job_delete(owner, id).await
    }
    async fn job_artifacts_set(&self, owner: Option<UserId>, id: JobId, bytes: u64) -> Result<()> {
        self.inner.job_artifacts_set(owner, id, bytes).await
    }
    async fn owner_artifact_bytes(&self, owner: UserId) -> Result<u64> {
        self.inner.owner_artifact_bytes(owner).await
    }
    async fn owner_counts(&self, owner: UserId) -> Result<Vec<(kiln_domain::JobState, u64)>> {
        self.inner.owner_counts(owner).await
    }
    async fn event_list(&self, owner: Option<UserId>, id: JobId) -> Result<Vec<JobEvent>> {
        self.inner.event_list(owner, id).await
    }
    async fn event_feed(
        &self,
        owner: Option<UserId>,
        after: &FeedCursor,
        limit: u32,
    ) -> Result<Vec<FeedEvent>> {
        self.inner.event_feed(owner, after, limit).await
    }
    // Has a default body (built on `log_read`): delegated so `inner`'s own version runs.
    async fn log_get(&self, owner: Option<UserId>, id: JobId) -> Result<String> {
        self.inner.log_get(owner, id).await
    }
    async fn log_read(&self, owner: Option<UserId>, id: JobId, from: u64) -> Result<LogRead> {
        self.inner.log_read(owner, id, from).await
    }

    async fn job_claim(&self, req: &ClaimRequest) -> Result<Vec<Job>> {
        tokio::time::sleep(self.claim_delay).await;
        self.inner.job_claim(req).await
    }
    async fn job_complete(&self, lease: &Lease, outcome: Outcome, now: Timestamp) -> Result<Job> {
        self.outage()?;
        self.inner.job_complete(lease, outcome, now).await
    }
    // Has a default body (`job_complete` then `job_claim`): overridden so the outage counts
    // once per call and a working call reaches `inner`'s own version (SQLite's single
    // writer command), not this wrapper's `job_complete`.
    async fn job_complete_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
        next: Option<&ClaimRequest>,
    ) -> Result<(Result<Job>, Vec<Job>)> {
        self.complete_and_claim_calls.fetch_add(1, Ordering::SeqCst);
        if self
            .panic_completions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("a bug on the completion path");
        }
        self.outage()?;
        self.inner
            .job_complete_and_claim(lease, outcome, now, next)
            .await
    }
    async fn job_progress(&self, lease: &Lease, progress: f32, now: Timestamp) -> Result<()> {
        self.inner.job_progress(lease, progress, now).await
    }
    async fn log_append(&self, id: JobId, text: &str, now: Timestamp) -> Result<u64> {
        self.inner.log_append(id, text, now).await
    }
    async fn lease_renew(
        &self,
        leases: &[Lease],
        now: Timestamp,
        lease: Duration,
    ) -> Result<Renewal> {
        self.inner.lease_renew(leases, now, lease).await
    }
    async fn lease_find(&self, filter: LeaseFilter) -> Result<Vec<Lease>> {
        self.inner.lease_find(filter).await
    }
    async fn node_register(
        &self,
        node: &kiln_store::NodeStart,
        now: Timestamp,
    ) -> Result<Option<String>> {
        self.inner.node_register(node, now).await
    }
    async fn node_heartbeat(&self, id: &str, instance: uuid::Uuid, now: Timestamp) -> Result<bool> {
        self.inner.node_heartbeat(id, instance, now).await
    }
    async fn node_deregister(&self, id: &str, instance: uuid::Uuid) -> Result<()> {
        self.inner.node_deregister(id, instance).await
    }
    async fn node_list(&self, now: Timestamp) -> Result<Vec<kiln_store::NodeInfo>> {
        self.inner.node_list(now).await
    }

    async fn job_promote_due(&self, now: Timestamp) -> Result<u64> {
        self.inner.job_promote_due(now).await
    }
    async fn job_next_due(&self) -> Result<Option<Timestamp>> {
        self.inner.job_next_due().await
    }
    async fn job_prune(
        &self,
        finished_before: Timestamp,
        keep_max: Option<u64>,
    ) -> Result<kiln_store::Pruned> {
        self.inner.job_prune(finished_before, keep_max).await
    }
    async fn job_stats(&self) -> Result<Stats> {
        self.inner.job_stats().await
    }

    async fn queue_depths(&self) -> Result<Vec<kiln_store::QueueDepth>> {
        self.inner.queue_depths().await
    }

    async fn queue_controls(&self) -> Result<Vec<kiln_store::QueueControl>> {
        self.inner.queue_controls().await
    }

    async fn queue_set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        now: Timestamp,
    ) -> Result<kiln_store::QueueControl> {
        self.inner.queue_set_paused(name, paused, by, now).await
    }

    async fn job_cancel_by(&self, by: &str, id: JobId, now: Timestamp) -> Result<(Job, Step)> {
        self.inner.job_cancel_by(by, id, now).await
    }

    async fn job_retry_by(&self, by: &str, id: JobId, budget: u32, now: Timestamp) -> Result<Job> {
        self.inner.job_retry_by(by, id, budget, now).await
    }

    async fn job_release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        self.outage()?;
        self.inner.job_release(lease, now).await
    }
    async fn job_defer(
        &self,
        lease: &Lease,
        until: Timestamp,
        why: &str,
        now: Timestamp,
    ) -> Result<Job> {
        self.outage()?;
        self.inner.job_defer(lease, until, why, now).await
    }

    async fn rate_take(
        &self,
        bucket: &kiln_store::RateBucket,
        cost: f64,
        now: Timestamp,
    ) -> Result<Option<Duration>> {
        self.inner.rate_take(bucket, cost, now).await
    }

    async fn answer_get(&self, key: &str, now: Timestamp) -> Result<Option<serde_json::Value>> {
        self.inner.answer_get(key, now).await
    }

    async fn answer_put(
        &self,
        key: &str,
        answer: &serde_json::Value,
        now: Timestamp,
    ) -> Result<()> {
        self.inner.answer_put(key, answer, now).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.subscribe()
    }
}
