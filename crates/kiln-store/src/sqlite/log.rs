//! Job logs, bounded per job. [`cut_point`] and [`marker`] are shared with the PostgreSQL
//! backend, so both bound logs identically.
//!
//! Each job has at most one `job_logs` row: the newest `log_limit` bytes of its log, their
//! size, and how many bytes were dropped from the front so far. An append that still fits
//! is a plain concatenation in SQL; one that overflows reads the text, drops the oldest
//! lines (cutting inside a line only when a single line is longer than the limit) and
//! writes the tail back. Readers see a one-line marker with the total dropped, then the
//! text.

use kiln_domain::{JobId, Timestamp, UserId};
use rusqlite::{Connection, OptionalExtension};

use super::row::{id_bytes, ms};
use super::writer::Tx;
use crate::error::{Result, StoreError};

/// Appends `text` to the job's log; `NotFound` if the job does not exist.
pub(super) fn append(tx: &Tx<'_>, id: JobId, text: &str, now: Timestamp) -> Result<()> {
    if text.is_empty() {
        return super::jobs::ensure_visible(tx.db, None, id);
    }
    let db = tx.db;
    let key = id_bytes(id);
    let added = i64::try_from(text.len()).unwrap_or(i64::MAX);
    let limit = i64::try_from(tx.log_limit).unwrap_or(i64::MAX);
    // Fast path: the text fits, so SQLite concatenates without the text leaving it.
    let fitted = db
        .prepare_cached(
            "UPDATE job_logs SET text = text || ?2, bytes = bytes + ?3, updated_at = ?4
             WHERE job_id = ?1 AND bytes + ?3 <= ?5",
        )?
        .execute((key, text, added, ms(now), limit))?;
    if fitted == 1 {
        return Ok(());
    }
    let current: Option<(String, i64)> = db
        .prepare_cached("SELECT text, dropped FROM job_logs WHERE job_id = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut kept, mut dropped) = match current {
        Some(found) => found,
        None => {
            super::jobs::ensure_visible(db, None, id)?;
            (String::new(), 0)
        }
    };
    kept.push_str(text);
    let cut = cut_point(&kept, tx.log_limit);
    kept.drain(..cut);
    dropped = dropped.saturating_add(i64::try_from(cut).unwrap_or(i64::MAX));
    db.prepare_cached(
        "INSERT INTO job_logs (job_id, text, bytes, dropped, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (job_id) DO UPDATE SET text = excluded.text, bytes = excluded.bytes,
             dropped = excluded.dropped, updated_at = excluded.updated_at",
    )?
    .execute((
        key,
        &kept,
        i64::try_from(kept.len()).unwrap_or(i64::MAX),
        dropped,
        ms(now),
    ))?;
    Ok(())
}

/// The job's log with its drop marker; `NotFound` if the job is not visible to `owner`.
pub(super) fn get(db: &Connection, owner: Option<UserId>, id: JobId) -> Result<String> {
    let found: Option<(Option<String>, Option<i64>)> = db
        .prepare_cached(
            "SELECT l.text, l.dropped FROM jobs j LEFT JOIN job_logs l ON l.job_id = j.id
             WHERE j.id = ?1 AND (?2 IS NULL OR j.owner_id = ?2)",
        )?
        .query_row((id_bytes(id), owner.map(|o| o.0)), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (text, dropped) = found.ok_or(StoreError::NotFound)?;
    let text = text.unwrap_or_default();
    Ok(match dropped.unwrap_or(0) {
        0 => text,
        n => format!("{}\n{text}", marker(n)),
    })
}

/// The line shown where old text was dropped.
pub(crate) fn marker(dropped: i64) -> String {
    format!("[... {dropped} bytes dropped ...]")
}

/// How many bytes to drop from the front of `text` so at most `limit` remain: through the
/// end of a line when possible, else (a single line longer than the limit) at the first
/// character boundary that is far enough.
pub(crate) fn cut_point(text: &str, limit: usize) -> usize {
    let Some(min_cut) = text.len().checked_sub(limit).filter(|&c| c > 0) else {
        return 0;
    };
    // Cutting right after a '\n' at or past `min_cut - 1` drops whole lines. '\n' never
    // occurs inside a multi-byte character, so that is also a character boundary.
    let at_line = text.as_bytes()[min_cut - 1..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|pos| min_cut + pos)
        .filter(|&cut| cut < text.len());
    at_line.unwrap_or_else(|| {
        (min_cut..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_within_the_limit_is_kept_whole() {
        assert_eq!(cut_point("abc\ndef\n", 8), 0);
        assert_eq!(cut_point("", 0), 0);
    }

    #[test]
    fn overflow_drops_whole_old_lines() {
        let text = "one\ntwo\nthree\n";
        // 14 bytes, limit 10: at least 4 must go, and "one\n" is exactly 4.
        assert_eq!(cut_point(text, 10), 4);
        // Limit 9: at least 5 must go, so the whole of "two\n" goes too.
        assert_eq!(&text[cut_point(text, 9)..], "three\n");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_inside_at_a_char_boundary() {
        let text = "ééééé"; // 10 bytes, no newline
        let cut = cut_point(text, 5);
        assert_eq!(cut, 6);
        assert_eq!(&text[cut..], "éé");
        // The newest line alone is too long: keep its tail rather than nothing.
        let text = "old\nxxxxxxxxxx\n";
        assert_eq!(&text[cut_point(text, 5)..], "xxxx\n");
    }
}
