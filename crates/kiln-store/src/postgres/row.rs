//! Rows ↔ domain types: the job column list, [`job`] to read a job row, and the
//! conversions of counters, timestamps, states and JSON columns.
//!
//! A value that does not convert (an unknown state or type, a negative attempt count) is a
//! `StoreError::Backend`: it means the database was written by something else.

use deadpool_postgres::GenericClient;
use kiln_domain::clock::truncate_ms;
use kiln_domain::{Failure, Job, JobId, JobState, Role, Timestamp, User, UserId};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Json, ToSql};

use super::backend;
use crate::error::Result;

/// The columns [`job`] reads, in its order; a macro so SQL can be built with `concat!`.
macro_rules! job_columns {
    () => {
        "id, owner_id, type, queue, name, state, priority, payload, result, error, attempts, \
         max_attempts, progress, cancel_requested, created_at, run_at, started_at, \
         finished_at, updated_at, node, lease_expires_at, trace_id, parent_span_id"
    };
}
pub(super) use job_columns;

/// The columns [`user`] reads.
macro_rules! user_columns {
    () => {
        "id, username, role, disabled, created_at"
    };
}
pub(super) use user_columns;

/// Reads column `idx`, as a backend error if its type does not match.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| backend(format!("column {idx}: {e}")))
}

/// Reads a row selected with [`job_columns!`].
pub(super) fn job<J: serde::de::DeserializeOwned>(row: &Row) -> Result<Job<J>> {
    Ok(Job {
        id: JobId(get(row, 0)?),
        owner: UserId(get(row, 1)?),
        job_type: parsed(row, 2)?,
        queue: parsed(row, 3)?,
        name: get(row, 4)?,
        state: state(row, 5)?,
        priority: get(row, 6)?,
        payload: get::<Json<J>>(row, 7)?.0,
        result: get::<Option<Json<J>>>(row, 8)?.map(|j| j.0),
        error: get::<Option<Json<Failure>>>(row, 9)?.map(|j| j.0),
        attempts: count(row, 10)?,
        max_attempts: count(row, 11)?,
        progress: get(row, 12)?,
        cancel_requested: get(row, 13)?,
        created_at: get(row, 14)?,
        run_at: get(row, 15)?,
        started_at: get(row, 16)?,
        finished_at: get(row, 17)?,
        updated_at: get(row, 18)?,
        node: get(row, 19)?,
        lease_expires_at: get(row, 20)?,
        trace_id: get(row, 21)?,
        parent_span_id: get(row, 22)?,
    })
}

/// The column of `event_seq` in a row that selects it right after [`job_columns!`].
pub(super) const EVENT_SEQ: usize = 23;

/// An event number (`integer`) as the feed carries it.
pub(super) fn seq(row: &Row, idx: usize) -> Result<i64> {
    get::<i32>(row, idx).map(i64::from)
}

/// Reads a row selected with [`user_columns!`] starting at column `at`.
pub(super) fn user(row: &Row, at: usize) -> Result<User> {
    Ok(User {
        id: UserId(get(row, at)?),
        username: get(row, at + 1)?,
        role: parsed::<Role>(row, at + 2)?,
        disabled: get(row, at + 3)?,
        created_at: get(row, at + 4)?,
    })
}

/// A job state column.
pub(super) fn state(row: &Row, idx: usize) -> Result<JobState> {
    parsed(row, idx)
}

/// A text column parsed with `FromStr` (states, types, queues, roles, token kinds).
pub(super) fn parsed<T>(row: &Row, idx: usize) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: &str = get(row, idx)?;
    text.parse()
        .map_err(|e| backend(format!("column {idx}: {e}")))
}

/// A non-negative `integer` column (attempts).
pub(super) fn count(row: &Row, idx: usize) -> Result<u32> {
    let n: i32 = get(row, idx)?;
    u32::try_from(n).map_err(|_| backend(format!("column {idx}: negative count {n}")))
}

/// A counter as stored (`integer`), saturating.
pub(super) fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A `u64` as a `bigint`, saturating.
pub(super) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A timestamp as stored: at millisecond precision, like the SQLite backend.
pub(super) fn ts(t: Timestamp) -> Timestamp {
    truncate_ms(t)
}

/// A JSON value for a `jsonb` parameter.
pub(super) fn json<T: serde::Serialize>(value: &T) -> Json<&T> {
    Json(value)
}

/// Warns about a statement slower than [`crate::SLOW_STORE_CALL`], naming its start.
fn slow(sql: &str, started: std::time::Instant) {
    let took = started.elapsed();
    if took > crate::SLOW_STORE_CALL {
        let head: String = sql.split_whitespace().take(8).collect::<Vec<_>>().join(" ");
        crate::warn_if_slow(&format!("PostgreSQL: {head} …"), took);
    }
}

/// Prepares `sql` (cached per connection) and runs it, returning every row.
pub(super) async fn query(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let started = std::time::Instant::now();
    let stmt = db.prepare_cached(sql).await?;
    let rows = db.query(&stmt, params).await?;
    slow(sql, started);
    Ok(rows)
}

/// Prepares `sql` (cached per connection) and runs it, returning at most one row.
pub(super) async fn query_opt(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let started = std::time::Instant::now();
    let stmt = db.prepare_cached(sql).await?;
    let row = db.query_opt(&stmt, params).await?;
    slow(sql, started);
    Ok(row)
}

/// Prepares `sql` (cached per connection) and runs it, returning exactly one row.
pub(super) async fn query_one(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row> {
    let started = std::time::Instant::now();
    let stmt = db.prepare_cached(sql).await?;
    let row = db.query_one(&stmt, params).await?;
    slow(sql, started);
    Ok(row)
}

/// Prepares `sql` (cached per connection) and runs it, returning the rows it touched.
pub(super) async fn execute(
    db: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let started = std::time::Instant::now();
    let stmt = db.prepare_cached(sql).await?;
    let n = db.execute(&stmt, params).await?;
    slow(sql, started);
    Ok(n)
}
