//! Completions coalesced: the outcomes of attempts that end while others are being written
//! share one statement (`UPDATE … FROM unnest(…)`, fenced per job, with their events), and
//! the claims that follow them (each freed slot asks for its next job) share the same
//! transaction: one commit for many jobs instead of a transaction per completion and
//! another per claim.
//!
//! Written by hand because it is what makes PostgreSQL keep up: a round trip and a commit
//! per state change held a node to a few hundred jobs/s (`BENCHMARKS.md`). Batching is
//! natural, never timed, as in [`super::batch`]: an outcome waits only while [`IN_FLIGHT`]
//! batches are at the database, and an idle node writes each at once. Each outcome is
//! answered only after its batch commits, so a job's `succeeded` (and its result) is
//! durable before anyone is told. A batch that fails for a reason other than a transient
//! one is written again job by job, so one bad outcome cannot hold the others back.

use std::collections::HashMap;

use deadpool_postgres::{GenericClient, Pool};
use kiln_domain::change::Completion;
use kiln_domain::{Job, JobState, Lease, Timestamp};
use tokio::sync::{mpsc, oneshot};

use super::notify::Signals;
use super::row::{self, int, job_columns, query};
use super::{Publisher, claim, map_pool_err};
use crate::error::{Result, StoreError, backend};
use crate::model::{ClaimRequest, FeedEvent, Outcome};
use crate::signal::Outbox;

/// Batches at the database at once: one, so every outcome that ends while a batch is
/// being written joins the next (a node that claims ahead hands its outcomes over one by
/// one as its slots finish; with two batches in flight they went almost one per batch).
const IN_FLIGHT: usize = 1;

/// Outcomes per batch at most.
const MAX_BATCH: usize = 256;

/// What one completion answers: the completed job (or `LeaseLost`) and the jobs claimed
/// for its slot.
pub(super) type Answer = Result<(Result<Job>, Vec<Job>)>;

/// The completions of one batch, in one statement: `$1`… are arrays with one element per
/// outcome (id, attempt, node; the state, next `run_at`, `finished_at` and event message
/// when no cancel is pending and when one is; the result as JSON text, the error as JSON
/// text, the progress, the time; `$16` `running` for each).
/// The fence compares `state` with that column, not with a literal: a literal lets the
/// planner answer the join from a partial index of running jobs, and walk that index's
/// entries of every job finished since the last vacuum (thousands per batch) instead of
/// looking each job up by its primary key. The jobs it moves are
/// counted in the same statement (out of `running`, into their new state). The fence
/// (`state = 'running'`, the attempt, the node) is checked on the newest row version under its lock, so an outcome whose lease was lost
/// updates nothing and is absent from the rows returned.
const COMPLETE_MANY: &str = concat!(
    "WITH done AS (
         UPDATE jobs j SET
             state = CASE WHEN j.cancel_requested THEN i.p_state ELSE i.s_state END,
             run_at = coalesce(CASE WHEN j.cancel_requested THEN i.p_run_at
                                    ELSE i.s_run_at END, j.run_at),
             finished_at = CASE WHEN j.cancel_requested THEN i.p_finished
                                ELSE i.s_finished END,
             result = coalesce(i.result::json, j.result),
             error = coalesce(i.error::jsonb, j.error),
             progress = coalesce(i.progress, j.progress),
             updated_at = i.at, node = NULL, lease_expires_at = NULL,
             event_seq = j.event_seq + 1
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                     $9::timestamptz[], $10::text[], $11::text[], $12::float4[],
                     $13::timestamptz[], $14::text[], $15::text[], $16::text[])
              AS i(id, attempt, node, s_state, p_state, s_run_at, p_run_at, s_finished,
                   p_finished, result, error, progress, at, s_message, p_message, running)
         WHERE j.id = i.id AND j.state = i.running AND j.attempts = i.attempt
           AND j.node = i.node
         RETURNING j.*, i.node AS lease_node,
                   CASE WHEN j.cancel_requested THEN i.p_message ELSE i.s_message END
                       AS message
     ), events AS (
         INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         SELECT id, event_seq, state, updated_at, attempts, lease_node, message FROM done
     ), counted AS (
         INSERT INTO job_counts (state, shard, n)
         SELECT state, ",
    super::counts::shard!(),
    ", sum(n) FROM (
             SELECT state, 1 AS n FROM done UNION ALL SELECT 'running', -1 FROM done
         ) c GROUP BY state ORDER BY state
         ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n + EXCLUDED.n
     )
     SELECT ",
    job_columns!(),
    ", event_seq FROM done"
);

/// One outcome to write, and where its answer goes.
struct Ask {
    lease: Lease,
    done: Completion,
    next: Option<ClaimRequest>,
    reply: oneshot::Sender<Answer>,
}

/// The handle the store completes through; the task that writes ends with it.
pub(super) struct Completer {
    asks: mpsc::UnboundedSender<Ask>,
}

impl Completer {
    /// Starts the task that writes, on `pool`; committed changes are published through
    /// `publisher`.
    pub fn start(pool: Pool, publisher: Publisher) -> Self {
        let (asks, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, publisher, inbox));
        Self { asks }
    }

    /// Ends the attempt held by `lease` with `outcome` at `now`, then claims for `next`.
    pub async fn complete(
        &self,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
        next: Option<&ClaimRequest>,
    ) -> Answer {
        // An outcome the state machine refuses fails here, alone.
        let done = Completion::decide(outcome, now)?;
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Ask {
                lease: lease.clone(),
                done,
                next: next.cloned(),
                reply,
            })
            .map_err(|_| backend("the completer has stopped"))?;
        answer
            .await
            .map_err(|_| backend("the completer dropped an outcome"))?
    }
}

async fn run(pool: Pool, publisher: Publisher, inbox: mpsc::UnboundedReceiver<Ask>) {
    super::batch::gather(inbox, IN_FLIGHT, MAX_BATCH, move |batch| {
        let (pool, publisher) = (pool.clone(), publisher.clone());
        async move { answer(&pool, &publisher, batch).await }
    })
    .await;
}

/// Writes `batch` and answers each outcome.
async fn answer(pool: &Pool, publisher: &Publisher, batch: Vec<Ask>) {
    let (asks, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|a| ((a.lease, a.done, a.next), a.reply))
        .unzip();
    match write(pool, &asks).await {
        Ok((answers, signals)) => {
            publisher.publish(signals);
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The worker may have gone away (shutting down).
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) if asks.len() > 1 && !matches!(e, StoreError::Transient(_)) => {
            // Something in the batch is refused: write each alone, so only it fails.
            for (ask, reply) in asks.into_iter().zip(replies) {
                let one = write(pool, std::slice::from_ref(&ask)).await;
                let _ = reply.send(one.map(|(mut answers, signals)| {
                    publisher.publish(signals);
                    answers.remove(0)
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(super::batch::copy_err(&e)));
            }
        }
    }
}

type Written = (Vec<(Result<Job>, Vec<Job>)>, Signals);

/// Writes the outcomes of `asks` and claims for their `next` requests in one transaction
/// (one statement without claims); the answers in `asks`' order.
async fn write(pool: &Pool, asks: &[(Lease, Completion, Option<ClaimRequest>)]) -> Result<Written> {
    let mut client = pool.get().await.map_err(map_pool_err)?;
    let mut signals = Signals::default();
    let tx = client.transaction().await?;
    // One plan for every batch: each outcome's job looked up by its primary key (see
    // COMPLETE_MANY). PostgreSQL's custom plans chose it, but planning each batch afresh
    // cost more than running it; its generic plan alone would hash-join the whole table.
    tx.batch_execute(
        "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off; SET LOCAL jit = off",
    )
    .await?;
    let completed = complete_many(&tx, &mut signals, asks).await?;
    if asks.iter().all(|(_, _, next)| next.is_none()) {
        tx.commit().await?;
        return Ok((
            completed.into_iter().map(|c| (c, Vec::new())).collect(),
            signals,
        ));
    }
    let mut claimed = claim_for(&tx, &mut signals, asks).await?;
    tx.commit().await?;
    Ok((
        completed
            .into_iter()
            .zip(claimed.iter_mut())
            .map(|(c, jobs)| (c, std::mem::take(jobs)))
            .collect(),
        signals,
    ))
}

/// The completions of `asks`, each its job or `LeaseLost`. Two outcomes for one job in a
/// batch (the same attempt completed twice at once) race as they would one after the
/// other: the first is written, the later ones lose.
async fn complete_many(
    db: &impl GenericClient,
    signals: &mut Signals,
    asks: &[(Lease, Completion, Option<ClaimRequest>)],
) -> Result<Vec<Result<Job>>> {
    let mut seen = std::collections::HashSet::with_capacity(asks.len());
    let first: Vec<bool> = asks
        .iter()
        .map(|(lease, _, _)| seen.insert(lease.job_id))
        .collect();
    let n = asks.len();
    let mut ids = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut states = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut run_ats = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut finished = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut messages = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut results = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut progress = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut running = Vec::with_capacity(n);
    // In job id order, as lease renewals take them (`super::lease`): two statements that
    // lock rows of the same jobs lock them in one order, so they wait for each other
    // instead of deadlocking (outcomes in completion order against a renewal deadlocked
    // under load, each deadlock costing a second, and leases ran out meanwhile).
    let mut ordered: Vec<_> = asks
        .iter()
        .zip(&first)
        .filter(|(_, first)| **first)
        .map(|(ask, _)| ask)
        .collect();
    ordered.sort_unstable_by_key(|(lease, _, _)| lease.job_id.0);
    for (lease, done, _) in ordered {
        ids.push(lease.job_id.0);
        attempts.push(int(lease.attempt));
        nodes.push(lease.node.as_str());
        for (i, ending) in [&done.settled, &done.cancel_pending]
            .into_iter()
            .enumerate()
        {
            states[i].push(ending.state.as_str());
            run_ats[i].push(ending.run_at);
            finished[i].push(ending.finished_at);
            messages[i].push(ending.message.as_str());
        }
        results.push(done.result.as_ref().map(|v| v.to_string()));
        errors.push(
            done.error
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| backend(format!("an error that does not serialise: {e}")))?,
        );
        progress.push(done.progress);
        at.push(done.at);
        running.push(JobState::Running.as_str());
    }
    let rows = query(
        db,
        COMPLETE_MANY,
        &[
            &ids,
            &attempts,
            &nodes,
            &states[0],
            &states[1],
            &run_ats[0],
            &run_ats[1],
            &finished[0],
            &finished[1],
            &results,
            &errors,
            &progress,
            &at,
            &messages[0],
            &messages[1],
            &running,
        ],
    )
    .await?;
    let mut jobs = HashMap::with_capacity(rows.len());
    for r in &rows {
        let job = row::job(r)?;
        signals.changed(FeedEvent::of(&job, row::seq(r, row::EVENT_SEQ)?));
        jobs.insert(job.id, job);
    }
    Ok(asks
        .iter()
        .zip(first)
        .map(|((lease, _, _), first)| {
            jobs.get(&lease.job_id)
                .filter(|_| first)
                .cloned()
                .ok_or(StoreError::LeaseLost)
        })
        .collect())
}

/// Claims for every ask's `next` request: one claim per distinct node, types and excluded
/// queues, for the sum of their limits, shared out in the asks' order.
async fn claim_for(
    tx: &deadpool_postgres::Transaction<'_>,
    signals: &mut Signals,
    asks: &[(Lease, Completion, Option<ClaimRequest>)],
) -> Result<Vec<Vec<Job>>> {
    let mut out: Vec<Vec<Job>> = vec![Vec::new(); asks.len()];
    let mut done = vec![false; asks.len()];
    for i in 0..asks.len() {
        let Some(first) = &asks[i].2 else { continue };
        if done[i] {
            continue;
        }
        let same = |r: &ClaimRequest| {
            r.node == first.node
                && r.types == first.types
                && r.exclude_queues == first.exclude_queues
                && r.exclude_owners == first.exclude_owners
                && r.per_owner == first.per_owner
                && r.per_owner_exempt == first.per_owner_exempt
        };
        let group: Vec<(usize, &ClaimRequest)> = (i..asks.len())
            .filter(|&j| !done[j])
            .filter_map(|j| asks[j].2.as_ref().filter(|r| same(r)).map(|r| (j, r)))
            .collect();
        let mut req = first.clone();
        for &(_, r) in &group[1..] {
            req.limit = req.limit.saturating_add(r.limit);
            req.now = req.now.max(r.now);
            req.lease = req.lease.max(r.lease);
        }
        let mut claimed = claim::claim(tx, signals, &req).await?.into_iter();
        for &(j, r) in &group {
            done[j] = true;
            out[j].extend(claimed.by_ref().take(r.limit as usize));
        }
    }
    Ok(out)
}
