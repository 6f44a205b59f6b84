//! Job logs, bounded per job: the `job_logs` rows. What a row keeps and how it reads is
//! [`crate::log_text`], shared with the SQLite backend. Reads go through the coalescing
//! reader (`batch::Log`).
//!
//! An append that still fits is a plain concatenation in SQL; one that overflows locks the
//! row, lets [`Kept::append`] keep the head and cut the tail, and writes it back, in one
//! transaction.

use deadpool_postgres::{GenericClient, Transaction};
use kiln_domain::{JobId, Timestamp};

use super::row::{self, query_opt, ts};
use crate::error::{Result, StoreError};
use crate::log_text::Kept;

/// Appends `text` to the job's log, keeping at most `limit` bytes; returns the log's end
/// offset. `NotFound` if the job does not exist.
pub(super) async fn append(
    tx: &Transaction<'_>,
    id: JobId,
    text: &str,
    now: Timestamp,
    limit: usize,
) -> Result<u64> {
    if text.is_empty() {
        return end(tx, id).await;
    }
    let now = ts(now);
    let added = i64::try_from(text.len()).unwrap_or(i64::MAX);
    let max = i64::try_from(limit).unwrap_or(i64::MAX);
    // Fast path: the text fits, so PostgreSQL concatenates without the text leaving it.
    let fitted = query_opt(
        tx,
        "UPDATE job_logs SET text = text || $2, bytes = bytes + $3, updated_at = $4
         WHERE job_id = $1 AND bytes + $3 <= $5 RETURNING bytes + dropped",
        &[&id.0, &text, &added, &now, &max],
    )
    .await?;
    if let Some(fitted) = fitted {
        return Ok(offset(row::get(&fitted, 0)?));
    }
    let mut kept = locked(tx, id, now).await?;
    kept.append(text, limit);
    row::execute(
        tx,
        "UPDATE job_logs SET text = $2, bytes = $3, head_bytes = $4, dropped = $5,
             updated_at = $6
         WHERE job_id = $1",
        &[
            &id.0,
            &kept.text(),
            &kept.bytes(),
            &kept.head_bytes(),
            &kept.dropped(),
            &now,
        ],
    )
    .await?;
    Ok(kept.total())
}

/// The job's log row, created empty if missing and locked until the transaction ends;
/// `NotFound` if no such job.
async fn locked(tx: &Transaction<'_>, id: JobId, now: Timestamp) -> Result<Kept> {
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
        "SELECT text, head_bytes, dropped FROM job_logs WHERE job_id = $1 FOR UPDATE",
        &[&id.0],
    )
    .await?;
    Ok(Kept::from_row(
        row::get(&current, 0)?,
        row::get(&current, 1)?,
        row::get(&current, 2)?,
    ))
}

/// The end offset of the job's log (0 without a log row); `NotFound` if no such job.
async fn end(db: &impl GenericClient, id: JobId) -> Result<u64> {
    let found = query_opt(
        db,
        "SELECT coalesce(l.bytes + l.dropped, 0) FROM jobs j
         LEFT JOIN job_logs l ON l.job_id = j.id WHERE j.id = $1",
        &[&id.0],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(offset(row::get(&found, 0)?))
}

/// A stored byte count as an offset.
fn offset(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
