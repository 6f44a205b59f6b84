//! Job logs, bounded per job, with the same rules as the SQLite backend (its
//! [`cut_point`] and [`marker`] are shared).
//!
//! Each job has at most one `job_logs` row: the newest `log_limit` bytes of its log, their
//! size, and how many bytes were dropped from the front so far. An append that still fits
//! is a plain concatenation in SQL; one that overflows locks the row, drops the oldest lines
//! in Rust and writes the tail back, in one transaction.

use deadpool_postgres::{GenericClient, Transaction};
use kiln_domain::{JobId, Timestamp, UserId};

use super::row::{self, query_opt, ts};
use crate::error::{Result, StoreError};
use crate::sqlite::log::{cut_point, marker};

/// Appends `text` to the job's log, keeping at most `limit` bytes; `NotFound` if the job
/// does not exist.
pub(super) async fn append(
    tx: &Transaction<'_>,
    id: JobId,
    text: &str,
    now: Timestamp,
    limit: usize,
) -> Result<()> {
    if text.is_empty() {
        return super::jobs::ensure_visible(tx, None, id).await;
    }
    let now = ts(now);
    let added = i64::try_from(text.len()).unwrap_or(i64::MAX);
    let max = i64::try_from(limit).unwrap_or(i64::MAX);
    // Fast path: the text fits, so PostgreSQL concatenates without the text leaving it.
    let fitted = row::execute(
        tx,
        "UPDATE job_logs SET text = text || $2, bytes = bytes + $3, updated_at = $4
         WHERE job_id = $1 AND bytes + $3 <= $5",
        &[&id.0, &text, &added, &now, &max],
    )
    .await?;
    if fitted == 1 {
        return Ok(());
    }
    super::jobs::ensure_visible(tx, None, id).await?;
    // The row exists from here on, so concurrent first appends serialise on its lock
    // instead of overwriting each other.
    row::execute(
        tx,
        "INSERT INTO job_logs (job_id, text, bytes, dropped, updated_at)
         VALUES ($1, '', 0, 0, $2) ON CONFLICT (job_id) DO NOTHING",
        &[&id.0, &now],
    )
    .await?;
    let current = row::query_one(
        tx,
        "SELECT text, dropped FROM job_logs WHERE job_id = $1 FOR UPDATE",
        &[&id.0],
    )
    .await?;
    let mut kept: String = row::get(&current, 0)?;
    let dropped: i64 = row::get(&current, 1)?;
    kept.push_str(text);
    let cut = cut_point(&kept, limit);
    kept.drain(..cut);
    let dropped = dropped.saturating_add(i64::try_from(cut).unwrap_or(i64::MAX));
    row::execute(
        tx,
        "UPDATE job_logs SET text = $2, bytes = $3, dropped = $4, updated_at = $5
         WHERE job_id = $1",
        &[
            &id.0,
            &kept,
            &i64::try_from(kept.len()).unwrap_or(i64::MAX),
            &dropped,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The job's log with its drop marker; `NotFound` if the job is not visible to `owner`.
pub(super) async fn get(
    db: &impl GenericClient,
    owner: Option<UserId>,
    id: JobId,
) -> Result<String> {
    let found = query_opt(
        db,
        "SELECT l.text, l.dropped FROM jobs j LEFT JOIN job_logs l ON l.job_id = j.id
         WHERE j.id = $1 AND ($2::bigint IS NULL OR j.owner_id = $2)",
        &[&id.0, &owner.map(|o| o.0)],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    let text: Option<String> = row::get(&found, 0)?;
    let dropped: Option<i64> = row::get(&found, 1)?;
    let text = text.unwrap_or_default();
    Ok(match dropped.unwrap_or(0) {
        0 => text,
        n => format!("{}\n{text}", marker(n)),
    })
}
