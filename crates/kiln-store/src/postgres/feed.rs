//! The feed of job events across jobs (see [`crate::Store::event_feed`]): what a live
//! stream replays on (re)connecting, from a [`FeedCursor`] on.

use deadpool_postgres::GenericClient;
use kiln_domain::{JobId, UserId};

use super::row::{self, query, ts};
use crate::error::Result;
use crate::model::{FeedCursor, FeedEvent};

/// The feed's columns and join: each event with its job's owner, type and queue, jobs
/// pre-filtered by `updated_at` (at least the time of each of the job's events). $1 the
/// cursor's time, $2 its job, $3 its event number, $4 the limit, $5 the owner.
macro_rules! feed_sql {
    ($owner:literal) => {
        concat!(
            "SELECT e.job_id, j.owner_id, j.type, j.queue, e.seq, e.state, e.attempt, e.at
             FROM jobs j JOIN job_events e ON e.job_id = j.id
             WHERE ",
            $owner,
            " j.updated_at >= $1
               AND (e.at, e.job_id, e.seq) > ($1, $2, $3::integer)
             ORDER BY e.at, e.job_id, e.seq LIMIT $4"
        )
    };
}

/// One owner's feed: their jobs through an owner index (`jobs_owner_*`), each job's events
/// by key. No index has `updated_at`, and one more on the hot write path (every state
/// change moves it) costs more than a reconnect's scan of one owner's jobs. A statement of
/// its own, so its plan never depends on whether an owner is given.
const FEED_OF_OWNER: &str = feed_sql!("j.owner_id = $5 AND");

/// Everyone's feed (operators): every job is looked at. $5 is null here.
const FEED_OF_ALL: &str = feed_sql!("$5::bigint IS NULL AND");

/// Events strictly after `after`, oldest first, at most `limit`.
pub(super) async fn feed(
    db: &impl GenericClient,
    owner: Option<UserId>,
    after: &FeedCursor,
    limit: u32,
) -> Result<Vec<FeedEvent>> {
    let sql = match owner {
        Some(_) => FEED_OF_OWNER,
        None => FEED_OF_ALL,
    };
    // Event numbers are `integer`: a cursor past that range is past every event.
    let seq = after.seq.clamp(i32::MIN.into(), i32::MAX.into()) as i32;
    let rows = query(
        db,
        sql,
        &[
            &ts(after.at),
            &after.job_id.0,
            &seq,
            &i64::from(limit),
            &owner.map(|o| o.0),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FeedEvent {
                job_id: JobId(row::get(r, 0)?),
                owner: UserId(row::get(r, 1)?),
                job_type: row::parsed(r, 2)?,
                queue: row::parsed(r, 3)?,
                seq: row::seq(r, 4)?,
                state: row::state(r, 5)?,
                attempt: row::count(r, 6)?,
                at: row::get(r, 7)?,
            })
        })
        .collect()
}
