//! `job_list` on PostgreSQL: the statement [`crate::keyset`] builds, in PostgreSQL's
//! dialect, with finished jobs taken from the store's cache when their row is unchanged.
//!
//! Lists that arrive while others are at the database are gathered ([`Lister`]) and sent
//! together on one connection: their statements are pipelined (written at once, answered
//! in order), so a batch costs one connection check-out and a few socket reads and writes
//! on both sides instead of a round trip each. Each list still runs its own statement,
//! after its request arrived, so it sees every commit its client could have seen.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use kiln_domain::clock::from_millis;
use kiln_domain::{Job, JobId, RawJson};
use tokio_postgres::types::ToSql;

use super::batch::{Asked, Gathered};
use super::row::{self, job_columns, ts};
use crate::cache::JobCache;
use crate::error::Result;
use crate::keyset::{self, Arg, Dialect};
use crate::model::{ListQuery, Page, Sort};

/// Batches of lists at the database at once.
const IN_FLIGHT: usize = 2;

/// Lists per batch at most.
const MAX_BATCH: usize = 64;

/// The handle lists go through; the task that reads them ends with it.
pub(super) struct Lister(Gathered<ListQuery, Page>);

impl Lister {
    /// Starts the task that reads lists on `pool`, with finished jobs from `cache`.
    pub fn start(pool: Pool, cache: Arc<JobCache>) -> Self {
        Self(Gathered::start(
            "lister",
            IN_FLIGHT,
            MAX_BATCH,
            move |batch| {
                let (pool, cache) = (pool.clone(), Arc::clone(&cache));
                async move { answer(&pool, &cache, batch).await }
            },
        ))
    }

    /// The page `query` asks for.
    pub async fn list(&self, query: ListQuery) -> Result<Page> {
        self.0.ask(query).await
    }
}

/// Reads every list of `batch` on one connection, pipelined, and answers each.
async fn answer(pool: &Pool, cache: &JobCache, batch: Vec<Asked<ListQuery, Page>>) {
    let db = match pool.get().await {
        Ok(db) => db,
        Err(e) => {
            let e = super::map_pool_err(e);
            for ask in batch {
                let _ = ask.reply.send(Err(super::batch::copy_err(&e)));
            }
            return;
        }
    };
    let pages =
        futures_util::future::join_all(batch.iter().map(|ask| list(&db, cache, &ask.question)))
            .await;
    for (ask, page) in batch.into_iter().zip(pages) {
        // The asker may have gone away (a dropped request).
        let _ = ask.reply.send(page);
    }
}

/// `$N` placeholders, the cursor key as the sorted column's own type.
struct Postgres;

impl Dialect for Postgres {
    type Param = Box<dyn ToSql + Sync + Send>;

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn param(arg: Arg<'_>) -> Self::Param {
        match arg {
            Arg::Int(n) => Box::new(n),
            Arg::Text(text) => Box::new(text.to_owned()),
            Arg::Time(at) => Box::new(ts(at)),
            Arg::Key(Sort::CreatedAsc | Sort::CreatedDesc, ms) => Box::new(from_millis(ms)),
            Arg::Key(Sort::PriorityAsc | Sort::PriorityDesc, key) => {
                let saturated = if key < 0 { i16::MIN } else { i16::MAX };
                Box::new(i16::try_from(key).unwrap_or(saturated))
            }
            Arg::Id(id) => Box::new(id.0),
        }
    }
}

/// A page of jobs matching `query`, in two steps: the page's ids and versions
/// (`event_seq`), narrow rows from the index and the table without any JSON; then, in one
/// statement, the jobs the cache does not hold at that version (offered to it when
/// finished). A page of finished jobs that were read before costs one narrow query.
pub(super) async fn list(
    db: &impl GenericClient,
    cache: &JobCache,
    query: &ListQuery,
) -> Result<Page> {
    let (sql, params) =
        keyset::build::<Postgres>("SELECT id, event_seq FROM jobs WHERE true", query);
    let keys = row::query(db, &sql, &refs(&params)).await?;
    let mut slots: Vec<Option<Job<RawJson>>> = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for key in &keys {
        let id = JobId(row::get(key, 0)?);
        let version = row::seq(key, 1)?;
        match cache.get(id) {
            Some(hit) if hit.version == version => slots.push(Some(Job::clone(&hit.job))),
            _ => {
                missing.push(id.0);
                slots.push(None);
            }
        }
    }
    if !missing.is_empty() {
        let rows = row::query(
            db,
            concat!(
                "SELECT ",
                job_columns!(),
                ", event_seq FROM jobs WHERE id = ANY($1)"
            ),
            &[&missing],
        )
        .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for r in &rows {
            let job = row::job::<RawJson>(r)?;
            cache.offer(0, row::seq(r, row::EVENT_SEQ)?, &job);
            found.insert(job.id, job);
        }
        for (slot, key) in slots.iter_mut().zip(&keys) {
            if slot.is_none() {
                *slot = found.remove(&JobId(row::get(key, 0)?));
            }
        }
    }
    if slots.iter().any(Option::is_none) {
        // A job of the page was deleted between the two statements: the page would have a
        // hole (and its cursor could skip a row), so read it again in one statement.
        return whole(db, query).await;
    }
    Ok(keyset::page(slots.into_iter().flatten().collect(), query))
}

/// A page of jobs matching `query` in one statement, every row decoded.
async fn whole(db: &impl GenericClient, query: &ListQuery) -> Result<Page> {
    let select = concat!("SELECT ", job_columns!(), " FROM jobs WHERE true");
    let (sql, params) = keyset::build::<Postgres>(select, query);
    let rows = row::query(db, &sql, &refs(&params)).await?;
    let rows = rows
        .iter()
        .map(row::job::<RawJson>)
        .collect::<Result<Vec<_>>>()?;
    Ok(keyset::page(rows, query))
}

/// The parameters as the driver takes them.
fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}
