//! [`Store`] for [`SqliteStore`]: each method picks the writer (any write) or a reader and
//! hands it the function that does the work. Nothing else happens here, except splitting
//! long maintenance work (promotion, pruning) into chunks so each is one short command.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_domain::{
    Job, JobId, JobState, Lease, NewJob, RawJson, Step, Timestamp, User, UserId, change,
};
use tokio::sync::broadcast;

use super::{SqliteStore, claim, event, jobs, lease, list, log, nodes, queues, retention, users};
use crate::Store;
use crate::cache::Cached;
use crate::error::{Result, StoreError};
use crate::model::*;
use crate::signal::Outbox;

#[async_trait]
impl Store for SqliteStore {
    async fn user_insert(&self, user: NewUser, now: Timestamp) -> Result<User> {
        self.write(move |tx| users::insert(tx, user, now)).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let username = username.to_owned();
        self.read(move |db| users::by_name(db, &username)).await
    }

    async fn user_get(&self, id: UserId) -> Result<User> {
        self.read(move |db| users::get(db, id)).await
    }

    async fn user_list(&self) -> Result<Vec<User>> {
        self.read(users::list).await
    }

    async fn user_update(&self, id: UserId, patch: UserPatch) -> Result<User> {
        self.write(move |tx| {
            let user = users::update(tx, id, patch)?;
            tx.push(Signal::UserChanged(id));
            Ok(user)
        })
        .await
    }

    async fn user_count(&self) -> Result<u64> {
        self.read(users::count).await
    }

    async fn user_limits(&self, user: UserId) -> Result<UserLimits> {
        self.read(move |db| users::limits(db, user)).await
    }

    async fn user_limits_set(&self, user: UserId, limits: UserLimits) -> Result<UserLimits> {
        self.write(move |tx| {
            let limits = users::limits_set(tx, user, limits)?;
            tx.push(Signal::UserChanged(user));
            Ok(limits)
        })
        .await
    }

    async fn user_by_identity(&self, identity: &ExternalIdentity) -> Result<Option<User>> {
        let identity = identity.clone();
        self.read(move |db| users::by_identity(db, &identity)).await
    }

    async fn user_insert_linked(
        &self,
        user: NewUser,
        identity: ExternalIdentity,
        now: Timestamp,
    ) -> Result<User> {
        self.write(move |tx| users::insert_linked(tx, user, &identity, now))
            .await
    }

    async fn token_insert(&self, token: NewToken, now: Timestamp) -> Result<TokenInfo> {
        self.write(move |tx| users::token_insert(tx, token, now))
            .await
    }

    async fn token_lookup(&self, hash: &[u8], now: Timestamp) -> Result<Option<(User, TokenInfo)>> {
        let hash = hash.to_vec();
        self.read(move |db| users::token_lookup(db, &hash, now))
            .await
    }

    async fn token_list(&self, user: UserId, kind: TokenKind) -> Result<Vec<TokenInfo>> {
        self.read(move |db| users::token_list(db, user, kind)).await
    }

    async fn token_delete(&self, user: UserId, id: i64) -> Result<()> {
        self.write(move |tx| {
            users::token_delete(tx, user, id)?;
            tx.push(Signal::UserChanged(user));
            Ok(())
        })
        .await
    }

    async fn token_prune(&self, now: Timestamp) -> Result<u64> {
        self.write(move |tx| users::token_prune(tx, now)).await
    }

    async fn token_delete_hash(&self, hash: &[u8]) -> Result<()> {
        let hash = hash.to_vec();
        self.write(move |tx| {
            if let Some(user) = users::token_delete_hash(tx, &hash)? {
                tx.push(Signal::UserChanged(user));
            }
            Ok(())
        })
        .await
    }

    async fn job_insert(&self, job: NewJob, opts: InsertOptions) -> Result<Inserted> {
        self.write_unguarded(move |tx| jobs::insert(tx, job, opts))
            .await
    }

    async fn job_get(&self, owner: Option<UserId>, id: JobId) -> Result<Job> {
        self.read(move |db| jobs::get(db, owner, id)).await
    }

    async fn job_read(&self, owner: Option<UserId>, id: JobId) -> Result<Job<RawJson>> {
        if let Some(hit) = self.cached(owner, id)? {
            return Ok(Job::clone(&hit.job));
        }
        let epoch = self.cache.epoch();
        let job = self.read(move |db| jobs::get(db, owner, id)).await?;
        self.cache.offer(epoch, 0, &job);
        Ok(job)
    }

    async fn job_status(
        &self,
        owner: Option<UserId>,
        id: JobId,
        inline_max: u32,
    ) -> Result<JobStatus> {
        if let Some(hit) = self.cached(owner, id)? {
            return Ok(hit.status(inline_max));
        }
        let epoch = self.cache.epoch();
        let status = self
            .read(move |db| jobs::status(db, owner, id, inline_max))
            .await?;
        if status.state.is_terminal() {
            // Finished: read it whole once, so the next polls are served from the cache.
            let job = self
                .read(move |db| jobs::get::<RawJson>(db, owner, id))
                .await?;
            if let Some(kept) = self.cache.offer(epoch, 0, &job) {
                return Ok(kept.status(inline_max));
            }
        }
        Ok(status)
    }

    async fn job_list(&self, query: &ListQuery) -> Result<Page> {
        let query = query.clone();
        let cache = Arc::clone(&self.cache);
        let epoch = cache.epoch();
        self.read(move |db| list::list(db, &query, &cache, epoch))
            .await
    }

    async fn job_cancel(
        &self,
        owner: Option<UserId>,
        id: JobId,
        now: Timestamp,
    ) -> Result<(Job, Step)> {
        self.write(move |tx| jobs::change(tx, owner, id, |job| Ok(change::cancel(job, now)?)))
            .await
    }

    async fn job_retry(
        &self,
        owner: Option<UserId>,
        id: JobId,
        budget: u32,
        now: Timestamp,
    ) -> Result<Job> {
        let retry = move |job: &mut Job| Ok(change::retry(job, budget, now)?);
        let (job, _) = self
            .write(move |tx| jobs::change(tx, owner, id, retry))
            .await?;
        Ok(job)
    }

    async fn job_cancel_by(&self, by: &str, id: JobId, now: Timestamp) -> Result<(Job, Step)> {
        let by = by.to_owned();
        let cancel = move |job: &mut Job| Ok(change::cancel(job, now)?.by(&by));
        self.write(move |tx| jobs::change(tx, None, id, cancel))
            .await
    }

    async fn job_retry_by(&self, by: &str, id: JobId, budget: u32, now: Timestamp) -> Result<Job> {
        let by = by.to_owned();
        let retry = move |job: &mut Job| Ok(change::retry(job, budget, now)?.by(&by));
        let (job, _) = self
            .write(move |tx| jobs::change(tx, None, id, retry))
            .await?;
        Ok(job)
    }

    async fn job_release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        let lease = lease.clone();
        let id = lease.job_id;
        let release = move |job: &mut Job| crate::model::release(job, &lease, now);
        let (job, _) = self
            .write(move |tx| jobs::change(tx, None, id, release))
            .await?;
        Ok(job)
    }

    async fn job_defer(
        &self,
        lease: &Lease,
        until: Timestamp,
        why: &str,
        now: Timestamp,
    ) -> Result<Job> {
        let lease = lease.clone();
        let id = lease.job_id;
        let why = why.to_owned();
        let defer = move |job: &mut Job| crate::model::defer(job, &lease, until, &why, now);
        let (job, _) = self
            .write(move |tx| jobs::change(tx, None, id, defer))
            .await?;
        Ok(job)
    }

    async fn job_report(
        &self,
        owner: Option<UserId>,
        id: JobId,
        report: Report,
        now: Timestamp,
    ) -> Result<Job> {
        let report = move |job: &mut Job| Ok(change::report(job, report, now)?);
        let (job, _) = self
            .write(move |tx| jobs::change(tx, owner, id, report))
            .await?;
        Ok(job)
    }

    async fn job_delete(&self, owner: Option<UserId>, id: JobId) -> Result<()> {
        self.write(move |tx| jobs::delete(tx, owner, id)).await
    }

    async fn job_artifacts_set(&self, owner: Option<UserId>, id: JobId, bytes: u64) -> Result<()> {
        self.write(move |tx| jobs::artifacts_set(tx, owner, id, bytes))
            .await
    }

    async fn owner_counts(&self, owner: UserId) -> Result<Vec<(JobState, u64)>> {
        self.read(move |db| jobs::owner_counts(db, owner)).await
    }

    async fn owner_artifact_bytes(&self, owner: UserId) -> Result<u64> {
        self.read(move |db| jobs::owner_artifact_bytes(db, owner))
            .await
    }

    async fn event_list(&self, owner: Option<UserId>, id: JobId) -> Result<Vec<JobEvent>> {
        self.read(move |db| event::list(db, owner, id)).await
    }

    async fn event_feed(
        &self,
        owner: Option<UserId>,
        after: &FeedCursor,
        limit: u32,
    ) -> Result<Vec<FeedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = *after;
        self.read(move |db| event::feed(db, owner, &after, limit))
            .await
    }

    async fn log_read(&self, owner: Option<UserId>, id: JobId, from: u64) -> Result<LogRead> {
        self.read(move |db| log::read(db, owner, id, from)).await
    }

    async fn job_claim(&self, req: &ClaimRequest) -> Result<Vec<Job>> {
        let req = req.clone();
        self.write_unguarded(move |tx| claim::claim(tx, &req)).await
    }

    async fn job_complete(&self, lease: &Lease, outcome: Outcome, now: Timestamp) -> Result<Job> {
        let lease = lease.clone();
        self.write_unguarded(move |tx| lease::complete(tx, &lease, outcome, now))
            .await
    }

    async fn job_complete_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
        next: Option<&ClaimRequest>,
    ) -> Result<(Result<Job>, Vec<Job>)> {
        let (lease, next) = (lease.clone(), next.cloned());
        self.write_unguarded(move |tx| {
            lease::complete_and_claim(tx, &lease, outcome, now, next.as_ref())
        })
        .await
    }

    async fn job_progress(&self, lease: &Lease, progress: f32, now: Timestamp) -> Result<()> {
        let lease = lease.clone();
        self.write_unguarded(move |tx| lease::progress(tx, &lease, progress, now))
            .await
    }

    async fn log_append(&self, id: JobId, text: &str, now: Timestamp) -> Result<u64> {
        let text: Arc<str> = Arc::from(text);
        self.write_unguarded(move |tx| {
            let end = log::append(tx, id, &text, now)?;
            if !text.is_empty() {
                tx.signal(Signal::LogAppended {
                    id,
                    end,
                    text: Some(text),
                });
            }
            Ok(end)
        })
        .await
    }

    async fn lease_renew(
        &self,
        leases: &[Lease],
        now: Timestamp,
        lease: std::time::Duration,
    ) -> Result<Renewal> {
        if leases.is_empty() {
            return Ok(Renewal::default());
        }
        let leases = leases.to_vec();
        let until = kiln_domain::clock::later(now, lease);
        self.write_unguarded(move |tx| lease::renew(tx, &leases, until))
            .await
    }

    async fn lease_find(&self, filter: LeaseFilter) -> Result<Vec<Lease>> {
        self.read(move |db| lease::find(db, &filter)).await
    }

    async fn node_register(&self, node: &NodeStart, now: Timestamp) -> Result<Option<String>> {
        let node = node.clone();
        self.write(move |tx| nodes::register(tx, &node, now)).await
    }

    async fn node_heartbeat(&self, id: &str, instance: uuid::Uuid, now: Timestamp) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |tx| nodes::heartbeat(tx, &id, instance, now))
            .await
    }

    async fn node_deregister(&self, id: &str, instance: uuid::Uuid) -> Result<()> {
        let id = id.to_owned();
        self.write(move |tx| nodes::deregister(tx, &id, instance))
            .await
    }

    async fn rate_take(
        &self,
        bucket: &RateBucket,
        cost: f64,
        now: Timestamp,
    ) -> Result<Option<std::time::Duration>> {
        let bucket = bucket.clone();
        self.write(move |tx| nodes::rate_take(tx, &bucket, cost, now))
            .await
    }

    async fn answer_get(&self, key: &str, now: Timestamp) -> Result<Option<serde_json::Value>> {
        let key = key.to_owned();
        self.write(move |tx| nodes::answer_get(tx, &key, now)).await
    }

    async fn answer_put(
        &self,
        key: &str,
        answer: &serde_json::Value,
        now: Timestamp,
    ) -> Result<()> {
        let (key, answer) = (key.to_owned(), answer.to_string());
        self.write(move |tx| nodes::answer_put(tx, &key, &answer, now))
            .await
    }

    async fn node_list(&self, now: Timestamp) -> Result<Vec<NodeInfo>> {
        self.read(move |db| nodes::list(db, now)).await
    }

    async fn job_promote_due(&self, now: Timestamp) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = self
                .write(move |tx| claim::promote_due(tx, now, claim::PROMOTE_CHUNK))
                .await?;
            total += n;
            if n < claim::PROMOTE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn job_next_due(&self) -> Result<Option<Timestamp>> {
        self.read(claim::next_due).await
    }

    async fn job_prune(&self, finished_before: Timestamp, keep_max: Option<u64>) -> Result<Pruned> {
        let mut total = Pruned::default();
        loop {
            let chunk = self
                .write(move |tx| retention::prune_chunk(tx, finished_before, keep_max))
                .await?;
            let n = chunk.count;
            total.count += n;
            total.with_artifacts.extend(chunk.with_artifacts);
            if n < retention::PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn job_stats(&self) -> Result<Stats> {
        self.read(retention::stats).await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>> {
        self.read(retention::queue_depths).await
    }

    async fn queue_controls(&self) -> Result<Vec<QueueControl>> {
        self.read(queues::controls).await
    }

    async fn queue_set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        now: Timestamp,
    ) -> Result<QueueControl> {
        let (name, by) = (name.to_owned(), by.to_owned());
        self.write(move |tx| queues::set_paused(tx, &name, paused, &by, now))
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }
}

impl SqliteStore {
    /// The cached finished job `id`, if `owner` may see it; `NotFound` if it is cached and
    /// another user's (the database would answer the same).
    fn cached(&self, owner: Option<UserId>, id: JobId) -> Result<Option<Cached>> {
        match self.cache.get(id) {
            Some(hit) if owner.is_some_and(|o| o != hit.job.owner) => Err(StoreError::NotFound),
            hit => Ok(hit),
        }
    }
}
