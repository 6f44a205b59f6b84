//! `job_list` for both backends: the filters, the four sort orders, keyset pagination and
//! the page they make. A backend supplies only its [`Dialect`] (placeholders, the clause
//! for a set of states, its parameter types) and runs the statement.
//!
//! The order is always (sort key, id) in one direction, and the cursor is the last item's
//! (key, id), so the next page is the rows strictly after it in that order: a row-value
//! comparison the `(owner_id, created_at, id)` and `(owner_id, priority, id)` indexes serve
//! directly. Pages never skip or repeat a row, whatever is inserted meanwhile. The cursor
//! key is `created_at` in milliseconds (or the priority) on both backends, so a cursor
//! means the same thing on either.

use kiln_domain::{Job, JobId, RawJson, Timestamp};

use crate::model::{Cursor, ListQuery, Page, Sort};

/// Largest page; the API caps `limit` at this already.
const MAX_LIMIT: u32 = 100;

/// A value a list statement binds, before the backend converts it.
pub(crate) enum Arg<'q> {
    /// An integer: the owner's id, the row limit.
    Int(i64),
    /// A type, queue or name.
    Text(&'q str),
    /// A bound on `created_at`.
    Time(Timestamp),
    /// A cursor's key under `Sort`: `created_at` in ms, or a priority.
    Key(Sort, i64),
    /// A cursor's id.
    Id(JobId),
}

/// What differs between the backends' list statements.
pub(crate) trait Dialect {
    /// A bound parameter.
    type Param;
    /// The placeholder of parameter `n` (from 1).
    fn placeholder(n: usize) -> String;
    /// `arg` as a parameter.
    fn param(arg: Arg<'_>) -> Self::Param;
}

/// The page size `query` asks for, within 1..=100.
fn limit(query: &ListQuery) -> u32 {
    query.limit.clamp(1, MAX_LIMIT)
}

/// The statement (`select`, which ends in a `WHERE` condition, then the filters, order and
/// limit) and its parameters. The text depends only on which filters are set and the sort,
/// so a prepared-statement cache holds every variant in use. One row more than the page is
/// read, to know whether another page follows.
pub(crate) fn build<D: Dialect>(select: &str, query: &ListQuery) -> (String, Vec<D::Param>) {
    let mut sql = select.to_owned();
    let mut params = Vec::new();
    let mut bind = |sql: &mut String, condition: &str, arg: Arg<'_>| {
        params.push(D::param(arg));
        let placeholder = D::placeholder(params.len());
        sql.push_str(&format!(" AND {}", condition.replace('?', &placeholder)));
    };
    if let Some(owner) = query.owner {
        bind(&mut sql, "owner_id = ?", Arg::Int(owner.0));
    }
    if !query.states.is_empty() {
        // Written into the statement, not bound: states are a fixed set of names, and a
        // plan made for the very states asked for can use the partial index of a rare one
        // (`queued`, `running`) even when plans are generic and cached (PostgreSQL's
        // lookups, `postgres/mod.rs`). One statement text per set of states, at most 127.
        let mut names: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        sql.push_str(&format!(" AND state IN ('{}')", names.join("', '")));
    }
    for (column, value) in [
        ("type", &query.job_type),
        ("queue", &query.queue),
        ("name", &query.name),
    ] {
        if let Some(value) = value {
            bind(&mut sql, &format!("{column} = ?"), Arg::Text(value));
        }
    }
    if let Some(after) = query.created_after {
        bind(&mut sql, "created_at >= ?", Arg::Time(after));
    }
    if let Some(before) = query.created_before {
        bind(&mut sql, "created_at < ?", Arg::Time(before));
    }
    let (column, direction, after) = query.sort.keyset();
    if let Some(cursor) = query.cursor {
        params.push(D::param(Arg::Key(query.sort, cursor.key)));
        params.push(D::param(Arg::Id(cursor.id)));
        let (key, id) = (
            D::placeholder(params.len() - 1),
            D::placeholder(params.len()),
        );
        sql.push_str(&format!(" AND ({column}, id) {after} ({key}, {id})"));
    }
    params.push(D::param(Arg::Int(i64::from(limit(query)) + 1)));
    let limit = D::placeholder(params.len());
    sql.push_str(&format!(
        " ORDER BY {column} {direction}, id {direction} LIMIT {limit}"
    ));
    (sql, params)
}

/// The page of `query` among `rows`, the rows [`build`]'s statement read.
pub(crate) fn page(mut rows: Vec<Job<RawJson>>, query: &ListQuery) -> Page {
    let limit = limit(query) as usize;
    let mut next_cursor = None;
    if rows.len() > limit {
        rows.truncate(limit);
        next_cursor = rows.last().map(|last| Cursor::after(query.sort, last));
    }
    Page {
        items: rows,
        next_cursor,
    }
}
