//! Reads by job id, coalesced: concurrent reads of the same kind (the version check of a
//! cached finished job, a job's events, a job's log) share one statement
//! (`WHERE j.id = ANY($1)`) instead of one round trip each.
//!
//! Written by hand because it is what makes these reads cheap: each costs a pool check-out
//! and a round trip, and most of that round trip is the kernel delivering a small message
//! on loopback and waking a backend (`BENCHMARKS.md`). Batching is natural, never timed: a
//! read waits only while [`IN_FLIGHT`] batches of its kind are already at the database, and
//! then joins the next batch; an idle node sends each read at once.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use kiln_domain::{JobId, JobState, UserId};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::Row;

use super::{map_pool_err, row};
use crate::error::{Result, StoreError, backend};
use crate::log_text::Kept;
use crate::model::JobEvent;

/// Batches of one kind at the database at once; the pool keeps its other connections for
/// everything else.
const IN_FLIGHT: usize = 4;

/// Ids per statement at most.
const MAX_BATCH: usize = 256;

/// One kind of read by job id.
pub(super) trait Lookup: Send + Sync + 'static {
    /// What one job's read gives (cloned when several asks name the same job).
    type Out: Clone + Send + 'static;
    /// The statement: `$1` the ids (`uuid[]`); its first two columns the job's id and owner.
    const SQL: &'static str;
    /// Each job's owner and read, from the statement's rows.
    fn fold(rows: &[Row]) -> Result<HashMap<uuid::Uuid, (i64, Self::Out)>>;
}

/// The current `event_seq` of a job: what a cached finished job is checked against.
pub(super) struct Version;

impl Lookup for Version {
    type Out = i64;
    const SQL: &'static str =
        "SELECT j.id, j.owner_id, j.event_seq FROM jobs j WHERE j.id = ANY($1)";

    fn fold(rows: &[Row]) -> Result<HashMap<uuid::Uuid, (i64, i64)>> {
        rows.iter()
            .map(|r| Ok((row::get(r, 0)?, (row::get(r, 1)?, row::seq(r, 2)?))))
            .collect()
    }
}

/// A job's events, oldest first.
pub(super) struct Events;

impl Lookup for Events {
    type Out = Vec<JobEvent>;
    const SQL: &'static str =
        "SELECT j.id, j.owner_id, e.seq, e.state, e.at, e.attempt, e.node, e.message
         FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id
         WHERE j.id = ANY($1)
         ORDER BY j.id, e.seq";

    fn fold(rows: &[Row]) -> Result<HashMap<uuid::Uuid, (i64, Vec<JobEvent>)>> {
        let mut jobs: HashMap<uuid::Uuid, (i64, Vec<JobEvent>)> = HashMap::new();
        for r in rows {
            let entry = jobs
                .entry(row::get(r, 0)?)
                .or_insert_with(|| (0, Vec::new()));
            entry.0 = row::get(r, 1)?;
            // A job without events (never written by Kiln) is one row of nulls.
            let Some(seq) = row::get::<Option<i32>>(r, 2)? else {
                continue;
            };
            entry.1.push(JobEvent {
                seq: i64::from(seq),
                state: row::state(r, 3)?,
                at: row::get(r, 4)?,
                attempt: row::count(r, 5)?,
                node: row::get(r, 6)?,
                message: row::get(r, 7)?,
            });
        }
        Ok(jobs)
    }
}

/// A job's state and its log as kept.
pub(super) struct Log;

impl Lookup for Log {
    type Out = (JobState, Kept);
    const SQL: &'static str = "SELECT j.id, j.owner_id, j.state, l.text, l.head_bytes, l.dropped
         FROM jobs j LEFT JOIN job_logs l ON l.job_id = j.id
         WHERE j.id = ANY($1)";

    fn fold(rows: &[Row]) -> Result<HashMap<uuid::Uuid, (i64, (JobState, Kept))>> {
        rows.iter()
            .map(|r| {
                let kept = Kept::from_row(
                    row::get::<Option<String>>(r, 3)?.unwrap_or_default(),
                    row::get::<Option<i64>>(r, 4)?.unwrap_or(0),
                    row::get::<Option<i64>>(r, 5)?.unwrap_or(0),
                );
                Ok((
                    row::get(r, 0)?,
                    (row::get(r, 1)?, (row::state(r, 2)?, kept)),
                ))
            })
            .collect()
    }
}

/// A question of a [`Batcher`]: a job id and the owner who must own it (`None`: anyone).
type Question = (JobId, Option<UserId>);

/// The handle the store asks through; the task that answers ends with it.
pub(super) struct Batcher<L: Lookup>(Gathered<Question, Option<L::Out>>);

impl<L: Lookup> Batcher<L> {
    /// Starts the task that answers, on `pool`.
    pub fn start(pool: Pool) -> Self {
        Self(Gathered::start(
            "batched reader",
            IN_FLIGHT,
            MAX_BATCH,
            move |batch| {
                let pool = pool.clone();
                async move { answer::<L>(&pool, batch).await }
            },
        ))
    }

    /// `L`'s read of job `id`; `None` when there is no such job or `owner` may not see it.
    pub async fn get(&self, owner: Option<UserId>, id: JobId) -> Result<Option<L::Out>> {
        self.0.ask((id, owner)).await
    }
}

/// The error of a batch, for each of its callers: transient stays transient (worth a
/// retry), anything else is a backend error with the same message.
pub(super) fn copy_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Transient(t) => StoreError::Transient(t.to_string().into()),
        other => backend(other.to_string()),
    }
}

/// A question for a gathering task ([`Gathered`]), and where its answer goes.
pub(super) struct Asked<Q, A> {
    pub question: Q,
    pub reply: oneshot::Sender<Result<A>>,
}

/// The handle of a task that gathers questions into batches ([`gather`]) and answers each;
/// the task ends with the handle.
pub(super) struct Gathered<Q, A> {
    asks: mpsc::UnboundedSender<Asked<Q, A>>,
    /// What the task is, for the errors it causes.
    name: &'static str,
}

impl<Q: Send + 'static, A: Send + 'static> Gathered<Q, A> {
    /// Starts the task: batches of at most `max` questions, `in_flight` of them handled at
    /// once by `handle`, which answers every question of its batch.
    pub fn start<F, Fut>(name: &'static str, in_flight: usize, max: usize, handle: F) -> Self
    where
        F: FnMut(Vec<Asked<Q, A>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (asks, inbox) = mpsc::unbounded_channel();
        tokio::spawn(gather(inbox, in_flight, max, handle));
        Self { asks, name }
    }

    /// Asks `question`; its answer once its batch is handled.
    pub async fn ask(&self, question: Q) -> Result<A> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Asked { question, reply })
            .map_err(|_| backend(format!("the {} has stopped", self.name)))?;
        answer
            .await
            .map_err(|_| backend(format!("the {} dropped a request", self.name)))?
    }
}

/// Natural batching: takes what `inbox` holds (up to `max`) as one batch as soon as fewer
/// than `in_flight` batches are being `handle`d, each on a task of its own; whatever
/// arrives meanwhile joins the next batch. Ends when every sender is gone.
pub(super) async fn gather<T, F, Fut>(
    mut inbox: mpsc::UnboundedReceiver<T>,
    in_flight: usize,
    max: usize,
    mut handle: F,
) where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = inbox.recv().await {
        // Wait for a slot first: whatever arrives meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match inbox.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let work = handle(batch);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

/// Reads `batch`'s jobs in one statement and answers each question.
async fn answer<L: Lookup>(pool: &Pool, batch: Vec<Asked<Question, Option<L::Out>>>) {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|a| a.question.0.0).collect();
    let found = async {
        let client = pool.get().await.map_err(map_pool_err)?;
        let rows = row::query(&client, L::SQL, &[&ids]).await?;
        L::fold(&rows)
    }
    .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            for ask in batch {
                let _ = ask.reply.send(Err(copy_err(&e)));
            }
            return;
        }
    };
    for ask in batch {
        let (id, asker) = ask.question;
        let answer = found
            .get(&id.0)
            .filter(|(owner, _)| asker.is_none_or(|o| o.0 == *owner))
            .map(|(_, out)| out.clone());
        // The asker may have gone away (a dropped request).
        let _ = ask.reply.send(Ok(answer));
    }
}
