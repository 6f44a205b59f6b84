//! `job_list` on PostgreSQL: the statement [`crate::keyset`] builds, in PostgreSQL's
//! dialect.

use deadpool_postgres::GenericClient;
use kiln_domain::RawJson;
use kiln_domain::clock::from_millis;
use tokio_postgres::types::ToSql;

use super::row::{self, job_columns, ts};
use crate::error::Result;
use crate::keyset::{self, Arg, Dialect};
use crate::model::{ListQuery, Page, Sort};

/// `$N` placeholders, a set of states as a `text[]`, the cursor key as the sorted column's
/// own type.
struct Postgres;

impl Dialect for Postgres {
    type Param = Box<dyn ToSql + Sync + Send>;
    const ANY_STATE: &'static str = "state = ANY(?)";

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn param(arg: Arg<'_>) -> Self::Param {
        match arg {
            Arg::Int(n) => Box::new(n),
            Arg::States(states) => Box::new(
                states
                    .iter()
                    .map(|s| s.as_str().to_owned())
                    .collect::<Vec<_>>(),
            ),
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

/// A page of jobs matching `query`.
pub(super) async fn list(db: &impl GenericClient, query: &ListQuery) -> Result<Page> {
    let select = concat!("SELECT ", job_columns!(), " FROM jobs WHERE true");
    let (sql, params) = keyset::build::<Postgres>(select, query);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = row::query(db, &sql, &refs).await?;
    let rows = rows
        .iter()
        .map(row::job::<RawJson>)
        .collect::<Result<Vec<_>>>()?;
    Ok(keyset::page(rows, query))
}
