//! `job_list` on SQLite: the statement [`crate::keyset`] builds, in SQLite's dialect.

use kiln_domain::{Job, RawJson};
use rusqlite::Connection;
use rusqlite::types::Value;

use super::row::{self, id_bytes, job_columns, ms};
use crate::cache::JobCache;
use crate::error::Result;
use crate::keyset::{self, Arg, Dialect};
use crate::model::{ListQuery, Page};

/// Numbered `?N` placeholders; a set of states travels as one JSON array, so the text (and
/// the cached plan) is the same whatever its length.
struct Sqlite;

impl Dialect for Sqlite {
    type Param = Value;

    fn placeholder(n: usize) -> String {
        format!("?{n}")
    }

    fn param(arg: Arg<'_>) -> Value {
        match arg {
            Arg::Int(n) | Arg::Key(_, n) => Value::Integer(n),
            Arg::Text(text) => Value::Text(text.to_owned()),
            Arg::Time(at) => Value::Integer(ms(at)),
            Arg::Id(id) => Value::Blob(id_bytes(id).to_vec()),
        }
    }
}

/// A page of jobs matching `query`. A finished job found in `cache` is taken from there
/// instead of decoding its row again (its JSON checked, its timestamps and error parsed);
/// one decoded here is offered to the cache, if nothing was evicted since `epoch`.
pub(super) fn list(
    db: &Connection,
    query: &ListQuery,
    cache: &JobCache,
    epoch: u64,
) -> Result<Page> {
    let select = concat!("SELECT ", job_columns!(), " FROM jobs WHERE 1 = 1");
    let (sql, params) = keyset::build::<Sqlite>(select, query);
    let mut stmt = db.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut jobs = Vec::new();
    while let Some(r) = rows.next()? {
        let id = row::job_id(r, 0)?;
        if let Some(hit) = cache.get(id) {
            jobs.push(Job::clone(&hit.job));
            continue;
        }
        let job = row::job::<RawJson>(r)?;
        cache.offer(epoch, 0, &job);
        jobs.push(job);
    }
    Ok(keyset::page(jobs, query))
}
