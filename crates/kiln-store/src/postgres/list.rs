//! `job_list`: filters, the four sort orders and keyset pagination.
//!
//! The order is always (sort key, id) in one direction, and the cursor is the last item's
//! (key, id), so the next page is the rows strictly after it in that order: a row-value
//! comparison the `(owner_id, created_at, id)` and `(owner_id, priority, id)` indexes serve
//! directly. Pages never skip or repeat a row, whatever is inserted meanwhile. The cursor
//! key is `created_at` in milliseconds, the same as the SQLite backend's, so a cursor means
//! the same thing on both.

use deadpool_postgres::GenericClient;
use kiln_domain::Job;
use kiln_domain::clock::from_millis;
use tokio_postgres::types::ToSql;

use super::row::{self, job_columns, ts};
use crate::error::Result;
use crate::model::{Cursor, ListQuery, Page, Sort};

/// Largest page; the API caps `limit` at this already.
const MAX_LIMIT: u32 = 100;

type Param = Box<dyn ToSql + Sync + Send>;

/// A page of jobs matching `query`.
pub(super) async fn list(db: &impl GenericClient, query: &ListQuery) -> Result<Page> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let (sql, params) = build(query, limit);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = row::query(db, &sql, &refs).await?;
    let mut items = rows.iter().map(row::job).collect::<Result<Vec<_>>>()?;
    let mut next_cursor = None;
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        next_cursor = items.last().map(|last| cursor(query.sort, last));
    }
    Ok(Page { items, next_cursor })
}

/// The cursor that resumes after `job` in `sort` order.
fn cursor(sort: Sort, job: &Job) -> Cursor {
    let key = match sort {
        Sort::CreatedAsc | Sort::CreatedDesc => job.created_at.timestamp_millis(),
        Sort::PriorityAsc | Sort::PriorityDesc => i64::from(job.priority),
    };
    Cursor { key, id: job.id }
}

/// The statement text and its parameters; the text depends only on which filters are set
/// and the sort, so the per-connection statement cache holds every variant in use.
fn build(query: &ListQuery, limit: u32) -> (String, Vec<Param>) {
    let mut sql = String::from(concat!("SELECT ", job_columns!(), " FROM jobs WHERE true"));
    let mut params: Vec<Param> = Vec::new();
    let mut filter = |sql: &mut String, clause: &str, value: Param| {
        params.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(owner) = query.owner {
        filter(&mut sql, " AND owner_id = ?", Box::new(owner.0));
    }
    if !query.states.is_empty() {
        let states: Vec<String> = query.states.iter().map(|s| s.as_str().to_owned()).collect();
        filter(&mut sql, " AND state = ANY(?)", Box::new(states));
    }
    if let Some(job_type) = &query.job_type {
        filter(&mut sql, " AND type = ?", Box::new(job_type.clone()));
    }
    if let Some(queue) = &query.queue {
        filter(&mut sql, " AND queue = ?", Box::new(queue.clone()));
    }
    if let Some(name) = &query.name {
        filter(&mut sql, " AND name = ?", Box::new(name.clone()));
    }
    if let Some(after) = query.created_after {
        filter(&mut sql, " AND created_at >= ?", Box::new(ts(after)));
    }
    if let Some(before) = query.created_before {
        filter(&mut sql, " AND created_at < ?", Box::new(ts(before)));
    }
    let (column, direction, after) = query.sort.keyset();
    if let Some(cursor) = query.cursor {
        let key: Param = match query.sort {
            Sort::CreatedAsc | Sort::CreatedDesc => Box::new(from_millis(cursor.key)),
            Sort::PriorityAsc | Sort::PriorityDesc => {
                Box::new(i16::try_from(cursor.key).unwrap_or(if cursor.key < 0 {
                    i16::MIN
                } else {
                    i16::MAX
                }))
            }
        };
        params.push(key);
        params.push(Box::new(cursor.id.0));
        let (key, id) = (params.len() - 1, params.len());
        sql.push_str(&format!(" AND ({column}, id) {after} (${key}, ${id})"));
    }
    params.push(Box::new(i64::from(limit) + 1));
    sql.push_str(&format!(
        " ORDER BY {column} {direction}, id {direction} LIMIT ${}",
        params.len()
    ));
    (sql, params)
}
