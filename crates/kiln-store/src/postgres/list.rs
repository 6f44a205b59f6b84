//! `job_list` on PostgreSQL: the statement [`crate::keyset`] builds, in PostgreSQL's
//! dialect, with finished jobs taken from the store's cache when their row is unchanged.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kiln_domain::clock::from_millis;
use kiln_domain::{Job, JobId, RawJson};
use tokio_postgres::types::ToSql;

use super::row::{self, job_columns, ts};
use crate::cache::JobCache;
use crate::error::Result;
use crate::keyset::{self, Arg, Dialect};
use crate::model::{ListQuery, Page, Sort};

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
