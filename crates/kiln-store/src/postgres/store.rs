//! [`Store`] for [`PgStore`]: each method takes a pooled connection and either runs one
//! statement (reads, and writes that are a single statement) or opens a transaction, hands
//! it to the function that does the work, and commits with [`PgStore::commit`] (which
//! sends the signals). Nothing else happens here, except splitting long maintenance work
//! (promotion, pruning) into chunks so each is one short transaction.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_domain::{
    Job, JobId, JobState, Lease, NewJob, RawJson, Step, Timestamp, User, UserId, change,
};
use tokio::sync::broadcast;

use super::jobs::Insert;
use super::notify::Signals;
use super::{PgStore, claim, counts, feed, jobs, lease, log, nodes, queues, retention, users};
use crate::Store;
use crate::cache::Cached;
use crate::error::{BoxError, Result, StoreError};
use crate::model::*;
use crate::signal::Outbox;

/// Runs `$body` in a transaction on a pooled connection, with `$tx` bound to the
/// transaction and `$sig` to the signals buffer, then commits and publishes.
macro_rules! in_tx {
    ($store:expr, |$tx:ident, $sig:ident| $body:expr) => {{
        let mut client = $store.client().await?;
        let $tx = client.transaction().await?;
        let mut signals = Signals::default();
        let out = {
            let $sig = &mut signals;
            $body.await?
        };
        $store.commit($tx, signals).await?;
        Ok::<_, StoreError>(out)
    }};
}

#[async_trait]
impl Store for PgStore {
    async fn user_insert(&self, user: NewUser, now: Timestamp) -> Result<User> {
        users::insert(&self.client().await?, user, now).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        users::by_name(&self.client().await?, username).await
    }

    async fn user_get(&self, id: UserId) -> Result<User> {
        users::get(&self.client().await?, id).await
    }

    async fn user_list(&self) -> Result<Vec<User>> {
        users::list(&self.client().await?).await
    }

    async fn user_limits(&self, user: UserId) -> Result<UserLimits> {
        users::limits(&self.client().await?, user).await
    }

    async fn user_limits_set(&self, user: UserId, limits: UserLimits) -> Result<UserLimits> {
        let limits = users::limits_set(&self.client().await?, user, limits).await?;
        self.user_changed(user);
        Ok(limits)
    }

    async fn user_by_identity(&self, identity: &ExternalIdentity) -> Result<Option<User>> {
        users::by_identity(&self.client().await?, identity).await
    }

    async fn user_insert_linked(
        &self,
        user: NewUser,
        identity: ExternalIdentity,
        now: Timestamp,
    ) -> Result<User> {
        users::insert_linked(&self.client().await?, user, &identity, now).await
    }

    async fn user_update(&self, id: UserId, patch: UserPatch) -> Result<User> {
        let user = users::update(&self.client().await?, id, patch).await?;
        self.user_changed(id);
        Ok(user)
    }

    async fn user_count(&self) -> Result<u64> {
        users::count(&self.client().await?).await
    }

    async fn token_insert(&self, token: NewToken, now: Timestamp) -> Result<TokenInfo> {
        users::token_insert(&self.client().await?, token, now).await
    }

    async fn token_lookup(&self, hash: &[u8], now: Timestamp) -> Result<Option<(User, TokenInfo)>> {
        users::token_lookup(&self.client().await?, hash, now).await
    }

    async fn token_list(&self, user: UserId, kind: TokenKind) -> Result<Vec<TokenInfo>> {
        users::token_list(&self.client().await?, user, kind).await
    }

    async fn token_delete(&self, user: UserId, id: i64) -> Result<()> {
        users::token_delete(&self.client().await?, user, id).await?;
        self.user_changed(user);
        Ok(())
    }

    async fn token_prune(&self, now: Timestamp) -> Result<u64> {
        users::token_prune(&self.client().await?, now).await
    }

    async fn token_delete_hash(&self, hash: &[u8]) -> Result<()> {
        if let Some(user) = users::token_delete_hash(&self.client().await?, hash).await? {
            self.user_changed(user);
        }
        Ok(())
    }

    async fn job_insert(&self, job: NewJob, opts: InsertOptions) -> Result<Inserted> {
        let owner = job.owner;
        if opts.idempotency.is_none()
            && opts.max_queued.is_none()
            && opts.owner_max_active.is_none()
        {
            // A plain submission joins the next multi-row insert.
            return self.inserter.insert(job).await.map(Inserted::Created);
        }
        let mut client = self.client().await?;
        let mut signals = Signals::default();
        {
            let tx = client.transaction().await?;
            if let Insert::Done(inserted) = jobs::insert(&tx, &mut signals, job, &opts).await? {
                self.commit(tx, signals).await?;
                return Ok(inserted);
            }
            // Dropping the transaction rolls it back.
        }
        // A concurrent request with the same key committed first: answer as if it had
        // come first (its job, or a conflict if its body differed).
        jobs::existing(&client, owner, &opts).await?.ok_or_else(|| {
            StoreError::Transient(BoxError::from(
                "an idempotency key vanished while its insert raced",
            ))
        })
    }

    async fn job_get(&self, owner: Option<UserId>, id: JobId) -> Result<Job> {
        jobs::get(&self.client().await?, owner, id).await
    }

    async fn job_read(&self, owner: Option<UserId>, id: JobId) -> Result<Job<RawJson>> {
        if let Some(hit) = self.cached(owner, id).await? {
            return Ok(Job::clone(&hit.job));
        }
        let client = self.client().await?;
        Ok(jobs::read_whole(&client, &self.cache, owner, id).await?.0)
    }

    async fn job_status(
        &self,
        owner: Option<UserId>,
        id: JobId,
        inline_max: u32,
    ) -> Result<JobStatus> {
        if let Some(hit) = self.cached(owner, id).await? {
            return Ok(hit.status(inline_max));
        }
        let client = self.client().await?;
        jobs::status_uncached(&client, &self.cache, owner, id, inline_max).await
    }

    async fn job_list(&self, query: &ListQuery) -> Result<Page> {
        // Generic plans are right for every list: the states asked for are written into
        // the statement (`keyset::build`), so a rare state's partial index is still used.
        self.lister.list(query.clone()).await
    }

    async fn job_cancel(
        &self,
        owner: Option<UserId>,
        id: JobId,
        now: Timestamp,
    ) -> Result<(Job, Step)> {
        let cancel = |job: &mut Job| Ok(change::cancel(job, now)?);
        in_tx!(self, |tx, sig| jobs::change(&tx, sig, owner, id, cancel))
    }

    async fn job_retry(
        &self,
        owner: Option<UserId>,
        id: JobId,
        budget: u32,
        now: Timestamp,
    ) -> Result<Job> {
        let retry = |job: &mut Job| Ok(change::retry(job, budget, now)?);
        let (job, _) = in_tx!(self, |tx, sig| jobs::change(&tx, sig, owner, id, retry))?;
        Ok(job)
    }

    async fn job_report(
        &self,
        owner: Option<UserId>,
        id: JobId,
        report: Report,
        now: Timestamp,
    ) -> Result<Job> {
        let report = |job: &mut Job| Ok(change::report(job, report, now)?);
        let (job, _) = in_tx!(self, |tx, sig| jobs::change(&tx, sig, owner, id, report))?;
        Ok(job)
    }

    async fn job_cancel_by(&self, by: &str, id: JobId, now: Timestamp) -> Result<(Job, Step)> {
        let cancel = |job: &mut Job| Ok(change::cancel(job, now)?.by(by));
        in_tx!(self, |tx, sig| jobs::change(&tx, sig, None, id, cancel))
    }

    async fn job_retry_by(&self, by: &str, id: JobId, budget: u32, now: Timestamp) -> Result<Job> {
        let retry = |job: &mut Job| Ok(change::retry(job, budget, now)?.by(by));
        let (job, _) = in_tx!(self, |tx, sig| jobs::change(&tx, sig, None, id, retry))?;
        Ok(job)
    }

    async fn job_release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        let release = |job: &mut Job| crate::model::release(job, lease, now);
        let id = lease.job_id;
        let (job, _) = in_tx!(self, |tx, sig| jobs::change(&tx, sig, None, id, release))?;
        Ok(job)
    }

    async fn job_defer(
        &self,
        lease: &Lease,
        until: Timestamp,
        why: &str,
        now: Timestamp,
    ) -> Result<Job> {
        let defer = |job: &mut Job| crate::model::defer(job, lease, until, why, now);
        let id = lease.job_id;
        let (job, _) = in_tx!(self, |tx, sig| jobs::change(&tx, sig, None, id, defer))?;
        Ok(job)
    }

    async fn job_delete(&self, owner: Option<UserId>, id: JobId) -> Result<()> {
        in_tx!(self, |tx, _sig| jobs::delete(&tx, owner, id))
    }

    async fn job_artifacts_set(&self, owner: Option<UserId>, id: JobId, bytes: u64) -> Result<()> {
        jobs::artifacts_set(&self.client().await?, owner, id, bytes).await
    }

    async fn owner_artifact_bytes(&self, owner: UserId) -> Result<u64> {
        jobs::owner_artifact_bytes(&self.client().await?, owner).await
    }

    async fn owner_counts(&self, owner: UserId) -> Result<Vec<(JobState, u64)>> {
        jobs::owner_counts(&self.client().await?, owner).await
    }

    async fn event_list(&self, owner: Option<UserId>, id: JobId) -> Result<Vec<JobEvent>> {
        self.events
            .get(owner, id)
            .await?
            .ok_or(StoreError::NotFound)
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
        feed::feed(&self.client().await?, owner, after, limit).await
    }

    async fn log_read(&self, owner: Option<UserId>, id: JobId, from: u64) -> Result<LogRead> {
        let (state, kept) = self
            .logs
            .get(owner, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(kept.read(from, state))
    }

    async fn job_claim(&self, req: &ClaimRequest) -> Result<Vec<Job>> {
        if req.limit == 0 || req.types.is_empty() {
            return Ok(Vec::new());
        }
        in_tx!(self, |tx, sig| claim::claim(&tx, sig, req))
    }

    async fn job_complete(&self, lease: &Lease, outcome: Outcome, now: Timestamp) -> Result<Job> {
        self.completer.complete(lease, outcome, now, None).await?.0
    }

    async fn job_complete_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
        next: Option<&ClaimRequest>,
    ) -> Result<(Result<Job>, Vec<Job>)> {
        self.completer.complete(lease, outcome, now, next).await
    }

    async fn job_progress(&self, lease: &Lease, progress: f32, now: Timestamp) -> Result<()> {
        lease::progress(&self.client().await?, lease, progress, now).await
    }

    async fn log_append(&self, id: JobId, text: &str, now: Timestamp) -> Result<u64> {
        let limit = self.log_limit;
        let end = in_tx!(self, |tx, sig| async {
            let end = log::append(&tx, id, text, now, limit).await?;
            if !text.is_empty() {
                sig.push(Signal::LogAppended {
                    id,
                    end,
                    text: Some(Arc::from(text)),
                });
            }
            Ok::<_, StoreError>(end)
        })?;
        Ok(end)
    }

    async fn lease_renew(
        &self,
        leases: &[Lease],
        _now: Timestamp,
        lease: std::time::Duration,
    ) -> Result<Renewal> {
        if leases.is_empty() {
            return Ok(Renewal::default());
        }
        // Each job looked up by its primary key in the array's (id) order, whatever the
        // table's size: a hash join on a small table would lock rows in the heap's order
        // and could deadlock with a batched completion, which locks them in id order.
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            .await?;
        let renewal = lease::renew(&tx, leases, lease).await?;
        tx.commit().await?;
        Ok(renewal)
    }

    async fn lease_find(&self, filter: LeaseFilter) -> Result<Vec<Lease>> {
        lease::find(&self.client().await?, &filter).await
    }

    async fn node_register(&self, node: &NodeStart, _now: Timestamp) -> Result<Option<String>> {
        nodes::register(&mut self.client().await?, node).await
    }

    async fn node_heartbeat(
        &self,
        id: &str,
        instance: uuid::Uuid,
        _now: Timestamp,
    ) -> Result<bool> {
        nodes::heartbeat(&self.client().await?, id, instance).await
    }

    async fn node_deregister(&self, id: &str, instance: uuid::Uuid) -> Result<()> {
        nodes::deregister(&self.client().await?, id, instance).await
    }

    async fn node_list(&self, _now: Timestamp) -> Result<Vec<NodeInfo>> {
        nodes::list(&self.client().await?).await
    }

    async fn rate_take(
        &self,
        bucket: &RateBucket,
        cost: f64,
        _now: Timestamp,
    ) -> Result<Option<std::time::Duration>> {
        nodes::rate_take(&self.client().await?, bucket, cost).await
    }

    async fn answer_get(&self, key: &str, _now: Timestamp) -> Result<Option<serde_json::Value>> {
        nodes::answer_get(&self.client().await?, key).await
    }

    async fn answer_put(
        &self,
        key: &str,
        answer: &serde_json::Value,
        _now: Timestamp,
    ) -> Result<()> {
        nodes::answer_put(&self.client().await?, key, answer).await
    }

    async fn job_promote_due(&self, now: Timestamp) -> Result<u64> {
        let mut total = 0;
        loop {
            let n: u64 = in_tx!(self, |tx, sig| claim::promote_due(
                &tx,
                sig,
                now,
                claim::PROMOTE_CHUNK
            ))?;
            total += n;
            if n < claim::PROMOTE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn job_next_due(&self) -> Result<Option<Timestamp>> {
        claim::next_due(&self.client().await?).await
    }

    async fn job_prune(&self, finished_before: Timestamp, keep_max: Option<u64>) -> Result<Pruned> {
        let client = self.client().await?;
        // Pruning runs every minute or so on each node: the time to tidy the counts too.
        counts::fold(&client).await?;
        let mut total = Pruned::default();
        loop {
            let chunk = retention::prune_chunk(&client, finished_before, keep_max).await?;
            let n = chunk.count;
            total.count += n;
            total.with_artifacts.extend(chunk.with_artifacts);
            if n < retention::PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn job_stats(&self) -> Result<Stats> {
        retention::stats(&self.client().await?, &self.times).await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>> {
        retention::queue_depths(&self.client().await?).await
    }

    async fn queue_controls(&self) -> Result<Vec<QueueControl>> {
        queues::controls(&self.client().await?).await
    }

    async fn queue_set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        now: Timestamp,
    ) -> Result<QueueControl> {
        let control = queues::set_paused(&self.client().await?, name, paused, by, now).await?;
        if !paused {
            let mut signals = Signals::default();
            signals.push(Signal::JobAvailable);
            self.published(signals);
        }
        Ok(control)
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        // Both pools, the lookups' included.
        let (main, lookups) = (self.pool.status(), self.lookups.status());
        Some(PoolStatus {
            idle: main.available + lookups.available,
            busy: (main.size + lookups.size).saturating_sub(main.available + lookups.available),
            waiting: main.waiting + lookups.waiting,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }
}

impl PgStore {
    /// The cached finished job `id` if the row's `event_seq` is still the cached one (asked
    /// through the coalescing [`super::batch::Batcher`]); `NotFound` if the job is gone or
    /// `owner` may not see it; `None` when not cached or changed since.
    async fn cached(&self, owner: Option<UserId>, id: JobId) -> Result<Option<Cached>> {
        let Some(hit) = self.cache.get(id) else {
            return Ok(None);
        };
        match self.versions.get(owner, id).await? {
            None => Err(StoreError::NotFound),
            Some(version) => Ok((version == hit.version).then_some(hit)),
        }
    }
}
