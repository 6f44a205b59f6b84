//! Version checks of cached finished jobs, coalesced: concurrent `job_read`s and
//! `job_status`es of jobs the node has cached ask PostgreSQL for their rows' `event_seq`
//! in one statement (`WHERE id = ANY($1)`) instead of one round trip each.
//!
//! Written by hand because it is what makes these reads cheap: a read served from the cache
//! costs a pool check-out and a round trip, and most of that round trip is the kernel
//! delivering a small message on loopback and waking a backend (`BENCHMARKS.md`). Batching
//! is natural, never timed: a request waits only while [`IN_FLIGHT`] batches are already at
//! the database, and then joins the next batch; an idle node sends each request at once.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use kiln_domain::{JobId, UserId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{map_pool_err, row};
use crate::error::{Result, StoreError, backend};

/// Batches at the database at once; the pool keeps its other connections for everything
/// else.
const IN_FLIGHT: usize = 4;

/// Ids per statement at most.
const MAX_BATCH: usize = 256;

/// One question: the current `event_seq` of job `id`, if `owner` may see it.
struct Ask {
    id: JobId,
    owner: Option<UserId>,
    reply: oneshot::Sender<Result<Option<i64>>>,
}

/// The handle [`super::PgStore`] asks through; the task that answers ends with it.
pub(super) struct Versions {
    asks: mpsc::UnboundedSender<Ask>,
}

impl Versions {
    /// Starts the task that answers, on `pool`.
    pub fn start(pool: Pool) -> Self {
        let (asks, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, inbox));
        Self { asks }
    }

    /// The current `event_seq` of job `id`; `None` when there is no such job or `owner`
    /// may not see it.
    pub async fn get(&self, owner: Option<UserId>, id: JobId) -> Result<Option<i64>> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .send(Ask { id, owner, reply })
            .map_err(|_| backend("the version checker has stopped"))?;
        answer
            .await
            .map_err(|_| backend("the version checker dropped a question"))?
    }
}

async fn run(pool: Pool, mut inbox: mpsc::UnboundedReceiver<Ask>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = inbox.recv().await {
        // Wait for a slot first: whatever arrives meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            answer(&pool, batch).await;
            drop(slot);
        });
    }
}

/// Reads the versions of `batch`'s jobs in one statement and answers each question.
async fn answer(pool: &Pool, batch: Vec<Ask>) {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|a| a.id.0).collect();
    let rows = async {
        let client = pool.get().await.map_err(map_pool_err)?;
        row::query(
            &client,
            "SELECT id, owner_id, event_seq FROM jobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await
    }
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let transient = matches!(e, StoreError::Transient(_));
            for ask in batch {
                let shared = if transient {
                    StoreError::Transient(e.to_string().into())
                } else {
                    backend(e.to_string())
                };
                let _ = ask.reply.send(Err(shared));
            }
            return;
        }
    };
    let decoded: Result<HashMap<uuid::Uuid, (i64, i64)>> = rows
        .iter()
        .map(|r| Ok((row::get(r, 0)?, (row::get::<i64>(r, 1)?, row::seq(r, 2)?))))
        .collect();
    let found = match decoded {
        Ok(found) => found,
        Err(e) => {
            for ask in batch {
                let _ = ask.reply.send(Err(backend(e.to_string())));
            }
            return;
        }
    };
    for ask in batch {
        let answer = found
            .get(&ask.id.0)
            .filter(|(owner, _)| ask.owner.is_none_or(|o| o.0 == *owner))
            .map(|&(_, seq)| seq);
        // The asker may have gone away (a dropped request).
        let _ = ask.reply.send(Ok(answer));
    }
}
