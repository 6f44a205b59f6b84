//! The job event history: appending a row with each state change, and reading it back.
//!
//! Every writer that changes a job's state calls [`record`] in the same command (and so the
//! same transaction) as its `UPDATE`, which also queues the signals of the change.

use kiln_domain::{Job, JobId, JobState, UserId};
use rusqlite::Connection;

use super::row::{self, id_bytes, ms};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::model::{JobEvent, Signal};

/// Appends an event for `job` as it is now (its state, `updated_at` and attempt number),
/// and queues `Changed` (plus `JobAvailable` if it became `queued`) for after the commit.
pub(super) fn record(tx: &mut Tx<'_>, job: &Job, node: Option<&str>, message: &str) -> Result<()> {
    append(tx.db, &New::of(job, node, message))?;
    changed(tx, job.id, job.owner, job.state);
    Ok(())
}

/// [`record`] for a job just inserted: its first event, with sequence number 1.
pub(super) fn record_first(tx: &mut Tx<'_>, job: &Job, message: &str) -> Result<()> {
    insert(tx.db, &New::of(job, None, message), 1)?;
    changed(tx, job.id, job.owner, job.state);
    Ok(())
}

/// Queues the signals of a state change.
pub(super) fn changed(tx: &mut Tx<'_>, id: JobId, owner: UserId, state: JobState) {
    tx.signal(Signal::Changed { id, owner, state });
    if state == JobState::Queued {
        tx.signal(Signal::JobAvailable);
    }
}

/// An event row to append.
pub(super) struct New<'a> {
    pub job: JobId,
    pub state: JobState,
    pub at: i64,
    pub attempt: u32,
    pub node: Option<&'a str>,
    pub message: &'a str,
}

impl<'a> New<'a> {
    /// The event of `job` as it is now.
    fn of(job: &Job, node: Option<&'a str>, message: &'a str) -> Self {
        New {
            job: job.id,
            state: job.state,
            at: ms(job.updated_at),
            attempt: job.attempts,
            node,
            message,
        }
    }
}

/// Appends an event row with the job's next sequence number.
///
/// Two statements rather than one `INSERT … SELECT max(seq) + 1 FROM job_events`: an
/// INSERT that reads its own table makes SQLite stage the row in a temporary table, built
/// and dropped per event, which cost a sixth of the writer thread's time under load. The
/// lookup is one seek to the job's last key.
pub(super) fn append(db: &Connection, event: &New<'_>) -> Result<()> {
    let last: i64 = db
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = ?1")?
        .query_row([id_bytes(event.job)], |r| r.get(0))?;
    insert(db, event, last + 1)
}

fn insert(db: &Connection, event: &New<'_>, seq: i64) -> Result<()> {
    db.prepare_cached(
        "INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute((
        id_bytes(event.job),
        seq,
        event.state.as_str(),
        event.at,
        event.attempt,
        event.node,
        event.message,
    ))?;
    Ok(())
}

/// The job's events, oldest first; `NotFound` if the job is not visible to `owner`.
pub(super) fn list(db: &Connection, owner: Option<UserId>, id: JobId) -> Result<Vec<JobEvent>> {
    super::jobs::ensure_visible(db, owner, id)?;
    let mut stmt = db.prepare_cached(
        "SELECT seq, state, at, attempt, node, message FROM job_events
         WHERE job_id = ?1 ORDER BY seq",
    )?;
    let events = stmt
        .query_map([id_bytes(id)], |r| {
            Ok(JobEvent {
                seq: r.get(0)?,
                state: row::state(r, 1)?,
                at: row::time(r, 2)?,
                attempt: r.get(3)?,
                node: r.get(4)?,
                message: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(StoreError::from)?;
    Ok(events)
}
