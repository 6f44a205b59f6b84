//! Job logs, bounded per job: the `job_logs` rows. What a row keeps and how it reads is
//! [`crate::log_text`], shared with the PostgreSQL backend.
//!
//! An append that still fits is a plain concatenation in SQL, so the text never leaves
//! SQLite; one that overflows reads the row, lets [`Kept::append`] keep the head and cut
//! the tail, and writes it back.

use kiln_domain::{JobId, Timestamp, UserId};
use rusqlite::{Connection, OptionalExtension};

use super::row::{self, id_bytes, ms};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::log_text::Kept;
use crate::model::LogRead;

/// Appends `text` to the job's log; returns the log's end offset. `NotFound` if the job
/// does not exist.
pub(super) fn append(tx: &Tx<'_>, id: JobId, text: &str, now: Timestamp) -> Result<u64> {
    if text.is_empty() {
        return end(tx.db, id);
    }
    if let Some(end) = concatenate(tx, id, text, now)? {
        return Ok(end);
    }
    let db = tx.db;
    let mut kept = match stored(db, id)? {
        Some(kept) => kept,
        None => {
            super::jobs::ensure_visible(db, None, id)?;
            Kept::default()
        }
    };
    kept.append(text, tx.log_limit);
    db.prepare_cached(
        "INSERT INTO job_logs (job_id, text, bytes, head_bytes, dropped, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (job_id) DO UPDATE SET text = excluded.text, bytes = excluded.bytes,
             head_bytes = excluded.head_bytes, dropped = excluded.dropped,
             updated_at = excluded.updated_at",
    )?
    .execute((
        id_bytes(id),
        kept.text(),
        kept.bytes(),
        kept.head_bytes(),
        kept.dropped(),
        ms(now),
    ))?;
    Ok(kept.total())
}

/// The fast path: when the job has a log row and `text` fits in it, SQLite concatenates
/// without the text leaving it. Returns the new end offset, or `None` (nothing written)
/// when the slow path must run.
fn concatenate(tx: &Tx<'_>, id: JobId, text: &str, now: Timestamp) -> Result<Option<u64>> {
    let key = id_bytes(id);
    let added = i64::try_from(text.len()).unwrap_or(i64::MAX);
    let limit = i64::try_from(tx.log_limit).unwrap_or(i64::MAX);
    let fitted = tx
        .db
        .prepare_cached(
            "UPDATE job_logs SET text = text || ?2, bytes = bytes + ?3, updated_at = ?4
             WHERE job_id = ?1 AND bytes + ?3 <= ?5",
        )?
        .execute((key, text, added, ms(now), limit))?;
    if fitted == 0 {
        return Ok(None);
    }
    // A lookup rather than `RETURNING`, which SQLite stages in a temporary table.
    let total: i64 = tx
        .db
        .prepare_cached("SELECT bytes + dropped FROM job_logs WHERE job_id = ?1")?
        .query_row([key], |r| r.get(0))?;
    Ok(Some(u64::try_from(total).unwrap_or(0)))
}

/// The job's log row, if it has one.
fn stored(db: &Connection, id: JobId) -> Result<Option<Kept>> {
    Ok(db
        .prepare_cached("SELECT text, head_bytes, dropped FROM job_logs WHERE job_id = ?1")?
        .query_row([id_bytes(id)], |r| {
            Ok(Kept::from_row(r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?)
}

/// The end offset of the job's log (0 without a log row); `NotFound` if no such job.
fn end(db: &Connection, id: JobId) -> Result<u64> {
    let total: Option<i64> = db
        .prepare_cached(
            "SELECT coalesce(l.bytes + l.dropped, 0) FROM jobs j
             LEFT JOIN job_logs l ON l.job_id = j.id WHERE j.id = ?1",
        )?
        .query_row([id_bytes(id)], |r| r.get(0))
        .optional()?;
    let total = total.ok_or(StoreError::NotFound)?;
    Ok(u64::try_from(total).unwrap_or(0))
}

/// The job's log from offset `from`, with its state, in one statement (one snapshot);
/// `NotFound` if the job is not visible to `owner`.
pub(super) fn read(
    db: &Connection,
    owner: Option<UserId>,
    id: JobId,
    from: u64,
) -> Result<LogRead> {
    db.prepare_cached(
        "SELECT j.state, l.text, l.head_bytes, l.dropped FROM jobs j
         LEFT JOIN job_logs l ON l.job_id = j.id
         WHERE j.id = ?1 AND (?2 IS NULL OR j.owner_id = ?2)",
    )?
    .query_row((id_bytes(id), owner.map(|o| o.0)), |r| {
        let kept = Kept::from_row(
            r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            r.get::<_, Option<i64>>(3)?.unwrap_or(0),
        );
        Ok(kept.read(from, row::state(r, 0)?))
    })
    .optional()?
    .ok_or(StoreError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{SqlitePath, Synchronous, schema};

    #[test]
    fn a_row_from_before_heads_reads_as_marker_and_tail() {
        let conn = schema::open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        schema::migrate(&conn).unwrap();
        // A row as version 5 wrote it: no `head_bytes`, so the column's default.
        conn.execute_batch(
            "INSERT INTO users (id, username, password_hash, role, created_at)
                 VALUES (1, 'a', 'x', 'client', 0);
             INSERT INTO jobs (id, owner_id, type, queue, state, priority, payload,
                               max_attempts, created_at, run_at, updated_at)
                 VALUES (x'00000000000000000000000000000001', 1, 'echo', 'default',
                         'running', 0, '{}', 3, 0, 0, 0);
             INSERT INTO job_logs (job_id, text, bytes, dropped, updated_at)
                 VALUES (x'00000000000000000000000000000001', 'tail\n', 5, 7, 0);",
        )
        .unwrap();
        let id = JobId(uuid::Uuid::from_u128(1));
        let read = super::read(&conn, Some(UserId(1)), id, 0).unwrap();
        assert_eq!(read.text, "[… 7 bytes skipped …]\ntail\n");
        assert_eq!(read.end, 12);
        assert_eq!(read.state, kiln_domain::JobState::Running);
        assert_eq!(end(&conn, id).unwrap(), 12);
    }
}
