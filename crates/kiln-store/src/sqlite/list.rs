//! `job_list`: filters, the four sort orders and keyset pagination.
//!
//! The order is always (sort key, id) in one direction, and the cursor is the last item's
//! (key, id), so the next page is the rows strictly after it in that order: a row-value
//! comparison the `(owner_id, created_at, id)` and `(owner_id, priority, id)` indexes serve
//! directly. Pages never skip or repeat a row, whatever is inserted meanwhile.

use kiln_domain::Job;
use rusqlite::Connection;
use rusqlite::types::Value;

use super::row::{self, id_bytes, job_columns, ms};
use crate::error::Result;
use crate::model::{Cursor, ListQuery, Page, Sort};

/// Largest page; the API caps `limit` at this already.
const MAX_LIMIT: u32 = 100;

/// A page of jobs matching `query`.
pub(super) fn list(db: &Connection, query: &ListQuery) -> Result<Page> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let (sql, params) = build(query, limit);
    let mut stmt = db.prepare_cached(&sql)?;
    let mut items = stmt
        .query_map(rusqlite::params_from_iter(params), row::job)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
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
        Sort::CreatedAsc | Sort::CreatedDesc => ms(job.created_at),
        Sort::PriorityAsc | Sort::PriorityDesc => i64::from(job.priority),
    };
    Cursor { key, id: job.id }
}

/// The statement text and its parameters; the text depends only on which filters are set
/// and the sort, so the prepared-statement cache holds every variant in use.
fn build(query: &ListQuery, limit: u32) -> (String, Vec<Value>) {
    let mut sql = String::from(concat!("SELECT ", job_columns!(), " FROM jobs WHERE 1 = 1"));
    let mut params: Vec<Value> = Vec::new();
    let mut filter = |sql: &mut String, clause: &str, value: Value| {
        params.push(value);
        sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
    };
    if let Some(owner) = query.owner {
        filter(&mut sql, " AND owner_id = ?", Value::Integer(owner.0));
    }
    if !query.states.is_empty() {
        let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        let json = serde_json::to_string(&states).unwrap_or_else(|_| "[]".to_owned());
        filter(
            &mut sql,
            " AND state IN (SELECT value FROM json_each(?))",
            Value::Text(json),
        );
    }
    if let Some(job_type) = &query.job_type {
        filter(&mut sql, " AND type = ?", Value::Text(job_type.clone()));
    }
    if let Some(queue) = &query.queue {
        filter(&mut sql, " AND queue = ?", Value::Text(queue.clone()));
    }
    if let Some(name) = &query.name {
        filter(&mut sql, " AND name = ?", Value::Text(name.clone()));
    }
    if let Some(after) = query.created_after {
        filter(&mut sql, " AND created_at >= ?", Value::Integer(ms(after)));
    }
    if let Some(before) = query.created_before {
        filter(&mut sql, " AND created_at < ?", Value::Integer(ms(before)));
    }
    let (column, direction, after) = query.sort.keyset();
    if let Some(cursor) = query.cursor {
        params.push(Value::Integer(cursor.key));
        params.push(Value::Blob(id_bytes(cursor.id).to_vec()));
        let (key, id) = (params.len() - 1, params.len());
        sql.push_str(&format!(" AND ({column}, id) {after} (?{key}, ?{id})"));
    }
    params.push(Value::Integer(i64::from(limit) + 1));
    sql.push_str(&format!(
        " ORDER BY {column} {direction}, id {direction} LIMIT ?{}",
        params.len()
    ));
    (sql, params)
}
