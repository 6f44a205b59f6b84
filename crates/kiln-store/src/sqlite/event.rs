//! The job event history: appending a row with each state change, and reading it back,
//! per job ([`list`]) or as a feed across jobs ([`feed`]).
//!
//! Every writer that changes a job's state calls [`record`] in the same command (and so the
//! same transaction) as its `UPDATE`, which also queues the signals of the change.

use kiln_domain::{Job, JobId, JobState, UserId};
use rusqlite::Connection;

use super::row::{self, id_bytes, ms};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::model::{FeedCursor, FeedEvent, JobEvent};
use crate::signal::Outbox;

/// Appends an event for `job` as it is now (its state, `updated_at` and attempt number),
/// and queues `Changed` (plus `JobAvailable` if it became `queued`) for after the commit.
pub(super) fn record(tx: &mut Tx<'_>, job: &Job, node: Option<&str>, message: &str) -> Result<()> {
    let seq = append(tx.db, &New::of(job, node, message))?;
    tx.changed(FeedEvent::of(job, seq));
    Ok(())
}

/// [`record`] for a job just inserted: its first event, with sequence number 1.
pub(super) fn record_first(tx: &mut Tx<'_>, job: &Job, message: &str) -> Result<()> {
    insert(tx.db, &New::of(job, None, message), 1)?;
    tx.changed(FeedEvent::of(job, 1));
    Ok(())
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

/// Appends an event row with the job's next sequence number, and returns that number.
///
/// Two statements rather than one `INSERT … SELECT max(seq) + 1 FROM job_events`: an
/// INSERT that reads its own table makes SQLite stage the row in a temporary table, built
/// and dropped per event, which cost a sixth of the writer thread's time under load. The
/// lookup is one seek to the job's last key.
pub(super) fn append(db: &Connection, event: &New<'_>) -> Result<i64> {
    let last: i64 = db
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM job_events WHERE job_id = ?1")?
        .query_row([id_bytes(event.job)], |r| r.get(0))?;
    insert(db, event, last + 1)?;
    Ok(last + 1)
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

/// The feed's columns and join: each event with its job's owner, type and queue. The job
/// table leads (`CROSS JOIN` fixes that order in SQLite), pre-filtered by `updated_at`: a
/// job's `updated_at` is at least the time of each of its events. ?1 the cursor's time, ?2
/// its job, ?3 its event number, ?4 the limit, ?5 the owner.
macro_rules! feed_sql {
    ($owner:literal) => {
        concat!(
            "SELECT e.job_id, j.owner_id, j.type, j.queue, e.seq, e.state, e.attempt, e.at
             FROM jobs j CROSS JOIN job_events e ON e.job_id = j.id
             WHERE ",
            $owner,
            " j.updated_at >= ?1 AND (e.at, e.job_id, e.seq) > (?1, ?2, ?3)
             ORDER BY e.at, e.job_id, e.seq LIMIT ?4"
        )
    };
}

/// One owner's feed: their jobs through an owner index (`jobs_owner_*`), each job's events
/// by key. No index has `updated_at`, and one more on the hot write path (every state
/// change moves it) costs more than a reconnect's scan of one owner's jobs. A statement of
/// its own, so its cached plan never depends on whether an owner is given.
pub(super) const FEED_OF_OWNER: &str = feed_sql!("j.owner_id = ?5 AND");

/// Everyone's feed (operators): every job is looked at. ?5 is null here, but bound all
/// the same, so both statements take the same parameters.
pub(super) const FEED_OF_ALL: &str = feed_sql!("?5 IS NULL AND");

/// Events strictly after `after`, oldest first, at most `limit` (see
/// [`crate::Store::event_feed`]).
pub(super) fn feed(
    db: &Connection,
    owner: Option<UserId>,
    after: &FeedCursor,
    limit: u32,
) -> Result<Vec<FeedEvent>> {
    let sql = match owner {
        Some(_) => FEED_OF_OWNER,
        None => FEED_OF_ALL,
    };
    let after = (ms(after.at), id_bytes(after.job_id), after.seq);
    let events = db
        .prepare_cached(sql)?
        .query_map(
            (after.0, after.1, after.2, limit, owner.map(|o| o.0)),
            feed_event,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(events)
}

/// Reads a row selected by [`FEED_OF_OWNER`] or [`FEED_OF_ALL`].
fn feed_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedEvent> {
    Ok(FeedEvent {
        job_id: row::job_id(r, 0)?,
        owner: UserId(r.get(1)?),
        job_type: row::parsed(r, 2)?,
        queue: row::parsed(r, 3)?,
        seq: r.get(4)?,
        state: row::state(r, 5)?,
        attempt: r.get(6)?,
        at: row::time(r, 7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{SqlitePath, Synchronous, schema};

    /// The query plan of `sql`, one step a line.
    fn plan(sql: &str) -> Vec<String> {
        let conn = schema::open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        schema::migrate(&conn).unwrap();
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([0, 0, 0, 0, 1], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn an_owners_feed_reads_their_jobs_by_index_and_events_by_key() {
        let plan = plan(FEED_OF_OWNER);
        assert!(
            plan.iter()
                .any(|s| s.starts_with("SEARCH j USING INDEX jobs_owner_")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|s| s.starts_with("SEARCH e USING PRIMARY KEY (job_id=?)")),
            "{plan:?}"
        );
    }
}
