//! Queue controls: operators pause and resume queues; a claim skips the paused ones.

use kiln_domain::Timestamp;
use rusqlite::Connection;

use super::row::{self, ms};
use super::writer::Tx;
use crate::error::Result;
use crate::model::{QueueControl, Signal};

/// Every queue an operator has paused or resumed.
pub(super) fn controls(db: &Connection) -> Result<Vec<QueueControl>> {
    let mut stmt = db.prepare_cached(
        "SELECT name, paused, changed_at, changed_by FROM queue_controls ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(QueueControl {
            name: r.get(0)?,
            paused: r.get(1)?,
            changed_at: row::time(r, 2)?,
            changed_by: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Pauses or resumes `name`; resuming wakes the workers.
pub(super) fn set_paused(
    tx: &mut Tx<'_>,
    name: &str,
    paused: bool,
    by: &str,
    now: Timestamp,
) -> Result<QueueControl> {
    tx.db
        .prepare_cached(
            "INSERT INTO queue_controls (name, paused, changed_at, changed_by)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET
                 paused = excluded.paused, changed_at = excluded.changed_at,
                 changed_by = excluded.changed_by",
        )?
        .execute((name, paused, ms(now), by))?;
    if !paused {
        tx.signal(Signal::JobAvailable);
    }
    Ok(QueueControl {
        name: name.to_owned(),
        paused,
        changed_at: kiln_domain::clock::truncate_ms(now),
        changed_by: by.to_owned(),
    })
}

/// The paused queues, for a claim to skip: one read of a table of a few rows (none while
/// nothing is paused, and an empty list allocates nothing).
pub(super) fn paused(db: &Connection) -> Result<Vec<String>> {
    let mut stmt = db.prepare_cached("SELECT name FROM queue_controls WHERE paused = 1")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    Ok(names.collect::<rusqlite::Result<Vec<_>>>()?)
}
