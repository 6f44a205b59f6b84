//! Handing out work: promotion of due `scheduled`/`failed` jobs to `queued`, the claim, and
//! the next instant something falls due.
//!
//! A claim is one writer command: promote what is due, pick the best queued jobs from the
//! `jobs_claim` partial index (priority DESC, run_at, id), and move each to `running` under
//! a fresh lease. The writer runs commands one at a time, so two claims can never pick the
//! same job; the `state = 'queued'` guard on the `UPDATE` keeps that true even against
//! another process writing the same file.

use kiln_domain::clock::truncate_ms;
use kiln_domain::{Event, Job, JobId, JobState, Step, Timestamp, UserId, transition};
use rusqlite::Connection;

use super::event;
use super::row::{self, id_bytes, ms};
use super::writer::Tx;
use crate::error::Result;
use crate::model::{ClaimRequest, FeedEvent};
use crate::signal::Outbox;

/// Most jobs promoted per writer command, so a burst of jobs all due at once is spread
/// over several short transactions instead of holding the writer for one long one.
pub(super) const PROMOTE_CHUNK: usize = 1000;

/// Moves up to `max` due `scheduled`/`failed` jobs to `queued`, earliest `run_at` first,
/// each with a `due` event; returns how many.
pub(super) fn promote_due(tx: &mut Tx<'_>, now: Timestamp, max: usize) -> Result<u64> {
    let db = tx.db;
    let due = db
        .prepare_cached(
            "SELECT id, owner_id, state, attempts, type, queue FROM jobs
             WHERE state IN ('scheduled', 'failed') AND run_at <= ?1
             ORDER BY run_at LIMIT ?2",
        )?
        .query_map((ms(now), i64::try_from(max).unwrap_or(i64::MAX)), |r| {
            Ok(FeedEvent {
                job_id: row::job_id(r, 0)?,
                owner: UserId(r.get(1)?),
                job_type: row::parsed(r, 4)?,
                queue: row::parsed(r, 5)?,
                seq: 0,
                state: row::state(r, 2)?,
                attempt: r.get(3)?,
                at: truncate_ms(now),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let promoted = due.len() as u64;
    let mut update =
        db.prepare_cached("UPDATE jobs SET state = ?2, updated_at = ?3 WHERE id = ?1")?;
    for mut job in due {
        let Step::To(state) = transition(job.state, Event::Due)? else {
            continue;
        };
        update.execute((id_bytes(job.job_id), state.as_str(), ms(now)))?;
        tx.counts.moved(job.state, state);
        job.state = state;
        job.seq = event::append(
            db,
            &event::New {
                job: job.job_id,
                state,
                at: ms(now),
                attempt: job.attempt,
                node: None,
                message: "due",
            },
        )?;
        tx.changed(job);
    }
    Ok(promoted)
}

/// Promotes due work, then claims up to `req.limit` queued jobs for `req.node`, none of a
/// paused queue.
pub(super) fn claim(tx: &mut Tx<'_>, req: &ClaimRequest) -> Result<Vec<Job>> {
    if req.limit == 0 || req.types.is_empty() {
        return Ok(Vec::new());
    }
    promote_due(tx, req.now, PROMOTE_CHUNK)?;
    let db = tx.db;
    let paused = super::queues::paused(db)?;
    let ids = if paused.is_empty() {
        pick(db, req)?
    } else {
        let mut req = req.clone();
        req.exclude_queues.extend(paused);
        pick(db, &req)?
    };
    let Step::To(running) = transition(JobState::Queued, Event::Claim)? else {
        return Ok(Vec::new());
    };
    let mut take = db.prepare_cached(
        "UPDATE jobs SET state = ?5, attempts = attempts + 1, started_at = ?2,
             node = ?3, lease_expires_at = ?4, cancel_requested = 0, progress = 0,
             updated_at = ?2
         WHERE id = ?1 AND state = 'queued'",
    )?;
    let message = format!("claimed by {}", req.node);
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let taken = take.execute((
            id_bytes(id),
            ms(req.now),
            &req.node,
            ms(kiln_domain::clock::later(req.now, req.lease)),
            running.as_str(),
        ))?;
        if taken == 1 {
            // Read back rather than `RETURNING` (see `lease::complete`).
            let job = super::jobs::get(db, None, id)?;
            tx.counts.moved(JobState::Queued, job.state);
            event::record(tx, &job, Some(&req.node), &message)?;
            claimed.push(job);
        }
    }
    Ok(claimed)
}

/// The best claimable jobs: ?1 the types and ?2 the excluded queues as JSON arrays, ?3 the
/// limit.
pub(super) const PICK: &str = "SELECT id FROM jobs INDEXED BY jobs_claim
     WHERE state = 'queued'
       AND type IN (SELECT value FROM json_each(?1))
       AND queue NOT IN (SELECT value FROM json_each(?2))
     ORDER BY priority DESC, run_at, id
     LIMIT ?3";

/// [`PICK`] without the jobs of some owners: ?4 their ids as a JSON array.
pub(super) const PICK_FAIR: &str = "SELECT id FROM jobs INDEXED BY jobs_claim
     WHERE state = 'queued'
       AND type IN (SELECT value FROM json_each(?1))
       AND queue NOT IN (SELECT value FROM json_each(?2))
       AND owner_id NOT IN (SELECT value FROM json_each(?4))
     ORDER BY priority DESC, run_at, id
     LIMIT ?3";

/// The head of the claim order, whatever the type and queue: ?1 the number of rows.
pub(super) const HEAD: &str = "SELECT id, type, queue FROM jobs INDEXED BY jobs_claim
     WHERE state = 'queued'
     ORDER BY priority DESC, run_at, id
     LIMIT ?1";

/// Rows of the head read beyond `limit` before [`PICK`] takes over.
const HEAD_SLACK: u32 = 32;

/// The ids of the best claimable jobs.
///
/// First the head of the claim order, filtered here: the index holds each entry's type and
/// queue, and almost always the first entries are claimable. Only when the head has fewer
/// than `limit` claimable jobs and more rows behind it does [`PICK`] filter in SQL (type and
/// queue lists travel as JSON arrays so its text and cached plan stay the same whatever
/// their lengths); it costs two temporary tables per run, a tenth of the writer's time when
/// it ran for every claim.
fn pick(db: &Connection, req: &ClaimRequest) -> Result<Vec<JobId>> {
    if let Some(per_owner) = req.per_owner {
        return pick_per_owner(db, req, per_owner);
    }
    if !req.exclude_owners.is_empty() {
        // The claim index does not hold owners: each entry's row is read.
        return pick_fair(db, req);
    }
    let wanted = req.limit as usize;
    let read = req.limit.saturating_add(HEAD_SLACK);
    let mut head = db.prepare_cached(HEAD)?;
    let mut rows = head.query([read])?;
    let (mut ids, mut seen) = (Vec::with_capacity(wanted), 0u32);
    while let Some(row) = rows.next()? {
        seen += 1;
        if claimable(row, req)? {
            ids.push(row::job_id(row, 0)?);
            if ids.len() == wanted {
                return Ok(ids);
            }
        }
    }
    if seen < read {
        // The whole queue was read: these are all there is.
        return Ok(ids);
    }
    let ids = db
        .prepare_cached(PICK)?
        .query_map(
            (
                json_array(&req.types),
                json_array(&req.exclude_queues),
                req.limit,
            ),
            |r| row::job_id(r, 0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// A list as the JSON array the queries read with `json_each`.
fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// [`PICK_FAIR`]: the best claimable jobs of owners not excluded.
fn pick_fair(db: &Connection, req: &ClaimRequest) -> Result<Vec<JobId>> {
    let owners: Vec<i64> = req.exclude_owners.iter().map(|o| o.0).collect();
    let ids = db
        .prepare_cached(PICK_FAIR)?
        .query_map(
            (
                json_array(&req.types),
                json_array(&req.exclude_queues),
                req.limit,
                json_array(&owners),
            ),
            |r| row::job_id(r, 0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// The claim order without the excluded owners, with each row's owner: ?1 types, ?2
/// queues, ?3 owners, as JSON arrays. Read only as far as the claim needs.
const PICK_OWNERS: &str = "SELECT id, owner_id FROM jobs INDEXED BY jobs_claim
     WHERE state = 'queued'
       AND type IN (SELECT value FROM json_each(?1))
       AND queue NOT IN (SELECT value FROM json_each(?2))
       AND owner_id NOT IN (SELECT value FROM json_each(?3))
     ORDER BY priority DESC, run_at, id";

/// [`pick`] taking at most `per_owner` jobs of one owner (but any number of the exempt
/// owners'), skipping the rest of an owner's jobs in the claim order.
fn pick_per_owner(db: &Connection, req: &ClaimRequest, per_owner: u32) -> Result<Vec<JobId>> {
    let wanted = req.limit as usize;
    let excluded: Vec<i64> = req.exclude_owners.iter().map(|o| o.0).collect();
    let mut taken: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
    let mut stmt = db.prepare_cached(PICK_OWNERS)?;
    let mut rows = stmt.query((
        json_array(&req.types),
        json_array(&req.exclude_queues),
        json_array(&excluded),
    ))?;
    let mut ids = Vec::with_capacity(wanted);
    while ids.len() < wanted {
        let Some(row) = rows.next()? else { break };
        let owner: i64 = row.get(1)?;
        if !req.per_owner_exempt.iter().any(|o| o.0 == owner) {
            let n = taken.entry(owner).or_default();
            if *n >= per_owner {
                continue;
            }
            *n += 1;
        }
        ids.push(row::job_id(row, 0)?);
    }
    Ok(ids)
}

/// Whether a [`HEAD`] row is of a type `req` runs and outside its excluded queues.
fn claimable(row: &rusqlite::Row<'_>, req: &ClaimRequest) -> rusqlite::Result<bool> {
    let job_type = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
    let queue = row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
    Ok(req.types.iter().any(|t| t == job_type) && !req.exclude_queues.iter().any(|q| q == queue))
}

/// The earliest `run_at` of a `scheduled` or `failed` job.
pub(super) fn next_due(db: &Connection) -> Result<Option<Timestamp>> {
    let at: Option<i64> = db
        .prepare_cached("SELECT min(run_at) FROM jobs WHERE state IN ('scheduled', 'failed')")?
        .query_row([], |r| r.get(0))?;
    Ok(at.map(kiln_domain::clock::from_millis))
}
