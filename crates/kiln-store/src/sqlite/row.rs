//! Rows ↔ domain types: the job column list, [`job`] to read a job row, and the
//! conversions of ids, timestamps, states and JSON columns.
//!
//! A value that does not parse (an unknown state or type, bad JSON) is a conversion error,
//! which becomes `StoreError::Backend`: it means the database was written by something else.

use kiln_domain::clock::from_millis;
use kiln_domain::{Failure, Job, JobId, JobState, Role, Timestamp, User, UserId};
use rusqlite::Row;
use rusqlite::types::Type;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// The columns [`job`] reads, in its order; a macro so SQL can be built with `concat!`.
macro_rules! job_columns {
    () => {
        "id, owner_id, type, queue, name, state, priority, payload, result, error, attempts, \
         max_attempts, progress, cancel_requested, created_at, run_at, started_at, \
         finished_at, updated_at, node, lease_expires_at, trace_id, parent_span_id"
    };
}
pub(super) use job_columns;

/// Reads a row selected with [`job_columns!`].
pub(super) fn job<J: DeserializeOwned>(row: &Row<'_>) -> rusqlite::Result<Job<J>> {
    Ok(Job {
        id: job_id(row, 0)?,
        owner: UserId(row.get(1)?),
        job_type: parsed(row, 2)?,
        queue: parsed(row, 3)?,
        name: row.get(4)?,
        state: state(row, 5)?,
        priority: row.get(6)?,
        payload: json(row, 7)?,
        result: opt_json(row, 8)?,
        error: opt_json::<Failure>(row, 9)?,
        attempts: row.get(10)?,
        max_attempts: row.get(11)?,
        progress: row.get(12)?,
        cancel_requested: row.get(13)?,
        created_at: time(row, 14)?,
        run_at: time(row, 15)?,
        started_at: opt_time(row, 16)?,
        finished_at: opt_time(row, 17)?,
        updated_at: time(row, 18)?,
        node: row.get(19)?,
        lease_expires_at: opt_time(row, 20)?,
        trace_id: row.get(21)?,
        parent_span_id: row.get(22)?,
    })
}

/// The columns [`user`] reads.
macro_rules! user_columns {
    () => {
        "id, username, role, disabled, created_at"
    };
}
pub(super) use user_columns;

/// Reads a row selected with [`user_columns!`] starting at column `at`.
pub(super) fn user(row: &Row<'_>, at: usize) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(row.get(at)?),
        username: row.get(at + 1)?,
        role: parsed::<Role>(row, at + 2)?,
        disabled: row.get(at + 3)?,
        created_at: time(row, at + 4)?,
    })
}

/// A timestamp as stored: milliseconds since the epoch.
pub(super) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// An optional timestamp as stored.
pub(super) fn opt_ms(t: Option<Timestamp>) -> Option<i64> {
    t.map(ms)
}

/// A job id as stored: its 16 bytes.
pub(super) fn id_bytes(id: JobId) -> [u8; 16] {
    *id.0.as_bytes()
}

/// Serialises a JSON column (a `Value` or a `Failure`).
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

pub(super) fn job_id(row: &Row<'_>, idx: usize) -> rusqlite::Result<JobId> {
    let bytes: [u8; 16] = row.get(idx)?;
    Ok(JobId(Uuid::from_bytes(bytes)))
}

pub(super) fn time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Timestamp> {
    Ok(from_millis(row.get(idx)?))
}

pub(super) fn opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(from_millis))
}

pub(super) fn state(row: &Row<'_>, idx: usize) -> rusqlite::Result<JobState> {
    parsed(row, idx)
}

/// A TEXT column parsed with `FromStr` (states, types, queues, roles, token kinds).
pub(super) fn parsed<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(idx)?;
    text.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// A JSON TEXT column, parsed straight from SQLite's buffer (into a tree, or only checked
/// for a [`kiln_domain::RawJson`]).
fn json<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text = row.get_ref(idx)?.as_str()?;
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// [`json`] of a nullable column.
pub(super) fn opt_json<T: DeserializeOwned>(
    row: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    match row.get_ref(idx)?.as_str_or_null()? {
        None => Ok(None),
        Some(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))),
    }
}
