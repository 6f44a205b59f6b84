//! Retention (pruning terminal jobs by age and by count) and the numbers behind `/metrics`.
//!
//! Only terminal jobs have `finished_at`, so the partial index `jobs_finished` lists exactly
//! the prunable jobs, oldest first. Deleting a job cascades to its log and idempotency
//! keys; a statement trigger deletes its events and counts deleted jobs, so
//! `total_submitted` survives pruning.

use deadpool_postgres::GenericClient;
use kiln_domain::{JobId, JobState, Timestamp};

use super::row::{self, big, ts};
use crate::error::Result;
use crate::model::{Pruned, QUEUE_DEPTHS, QueueDepth, Stats};

/// Most jobs deleted per transaction: a prune of a large backlog runs as many short
/// transactions, so it never holds thousands of row locks for long.
pub(super) const PRUNE_CHUNK: i64 = 1000;

/// Started jobs the start-latency percentile looks at: recent enough to follow changes in
/// load, many enough for a stable p95 (the same sample as the SQLite backend).
const LATENCY_SAMPLE: i64 = 1000;

/// Deletes up to `PRUNE_CHUNK` prunable jobs: first those finished before `before`, then the
/// oldest terminal jobs beyond the newest `keep_max`. Returns how many, and which had
/// artifacts.
///
/// The outer `WHERE` repeats the terminal condition: if a job is retried (so no longer
/// terminal) while this runs, the delete re-checks the new row version and spares it.
pub(super) async fn prune_chunk(
    db: &impl GenericClient,
    before: Timestamp,
    keep_max: Option<u64>,
) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    let rows = row::query(
        db,
        "DELETE FROM jobs WHERE id IN (
             SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1
             LIMIT $2)
           AND finished_at IS NOT NULL AND finished_at < $1
         RETURNING id, state = 'succeeded' AND (result -> 'artifacts') IS NOT NULL",
        &[&ts(before), &PRUNE_CHUNK],
    )
    .await?;
    note_pruned(&mut pruned, &rows)?;
    if let Some(keep) = keep_max
        && big(pruned.count) < PRUNE_CHUNK
    {
        let rows = row::query(
            db,
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs WHERE finished_at IS NOT NULL
                 ORDER BY finished_at DESC, id DESC OFFSET $1 LIMIT $2)
               AND finished_at IS NOT NULL
             RETURNING id, state = 'succeeded' AND (result -> 'artifacts') IS NOT NULL",
            &[&big(keep), &(PRUNE_CHUNK - big(pruned.count))],
        )
        .await?;
        note_pruned(&mut pruned, &rows)?;
    }
    Ok(pruned)
}

/// Adds the rows of a `DELETE … RETURNING id, <has artifacts>` to `pruned`.
fn note_pruned(pruned: &mut Pruned, rows: &[tokio_postgres::Row]) -> Result<()> {
    pruned.count += rows.len() as u64;
    for r in rows {
        if row::get::<Option<bool>>(r, 1)? == Some(true) {
            pruned.with_artifacts.push(JobId(row::get(r, 0)?));
        }
    }
    Ok(())
}

/// Jobs waiting or running per queue and state.
pub(super) async fn queue_depths(db: &impl GenericClient) -> Result<Vec<QueueDepth>> {
    let rows = row::query(db, QUEUE_DEPTHS, &[]).await?;
    rows.iter()
        .map(|r| {
            Ok(QueueDepth {
                queue: row::get(r, 0)?,
                state: row::state(r, 1)?,
                n: u64::try_from(row::get::<i64>(r, 2)?).unwrap_or(0),
            })
        })
        .collect()
}

/// The mean run time and p95 start latency as last computed, and when. They read the
/// newest finished rows (a thousand rows from the heap: 2–9 ms under load, when a client
/// polling the JSON summary every 25 ms took a tenth of PostgreSQL's CPU), so a node
/// computes them at most once per [`TIMES_FRESH`] once a whole sample of jobs has
/// finished (a few newer ones then barely move them; with fewer they are cheap, and exact
/// at every call). The counts are read at every call.
#[derive(Default)]
pub(super) struct Times(std::sync::Mutex<Option<(std::time::Instant, f64, f64)>>);

/// How long [`Times`] are used before they are computed again.
const TIMES_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl Times {
    fn get(&self) -> Option<(f64, f64)> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.filter(|(at, ..)| at.elapsed() < TIMES_FRESH)
            .map(|(_, avg, p95)| (avg, p95))
    }

    fn put(&self, avg: f64, p95: f64) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *kept = Some((std::time::Instant::now(), avg, p95));
    }
}

/// Jobs ever submitted, current counts per state (read from `job_counts`, see
/// `super::counts`: nothing counts the table), mean run time and p95 start latency (at
/// most a second old, see [`Times`]).
pub(super) async fn stats(db: &impl GenericClient, times: &Times) -> Result<Stats> {
    let r = row::query_one(
        db,
        "WITH counts AS (SELECT state, sum(n)::int8 AS n FROM job_counts GROUP BY state)
         SELECT
             (SELECT value FROM counters WHERE name = 'jobs_deleted'),
             coalesce((SELECT array_agg(state) FROM counts), '{}'),
             coalesce((SELECT array_agg(n) FROM counts), '{}')",
        &[],
    )
    .await?;
    let deleted: i64 = row::get(&r, 0)?;
    let states: Vec<&str> = row::get(&r, 1)?;
    let counts: Vec<i64> = row::get(&r, 2)?;
    let mut by_state: Vec<(JobState, u64)> = JobState::ALL.iter().map(|&s| (s, 0)).collect();
    for (state, n) in states.into_iter().zip(counts) {
        let state: JobState = state
            .parse()
            .map_err(|e| super::backend(format!("job state: {e}")))?;
        if let Some(slot) = by_state.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    let finished: u64 = by_state
        .iter()
        .filter(|(s, _)| s.is_terminal())
        .map(|(_, n)| n)
        .sum();
    let sampled = finished >= LATENCY_SAMPLE as u64;
    let (avg, p95) = match times.get().filter(|_| sampled) {
        Some(known) => known,
        None => {
            let t = row::query_one(
                db,
                "SELECT
                     (SELECT avg(d)::float8
                      FROM (SELECT extract(epoch FROM finished_at - started_at) * 1000 AS d
                            FROM jobs
                            WHERE finished_at IS NOT NULL AND state = 'succeeded'
                              AND started_at IS NOT NULL
                            ORDER BY finished_at DESC LIMIT $1) recent_runs),
                     (SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY latency)::float8
                      FROM (SELECT extract(epoch FROM started_at - created_at) * 1000 AS latency
                            FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
                            ORDER BY finished_at DESC LIMIT $1) recent)",
                &[&LATENCY_SAMPLE],
            )
            .await?;
            let avg: Option<f64> = row::get(&t, 0)?;
            let p95: Option<f64> = row::get(&t, 1)?;
            let (avg, p95) = (avg.unwrap_or(0.0), p95.unwrap_or(0.0));
            if sampled {
                times.put(avg, p95);
            }
            (avg, p95)
        }
    };
    let present: u64 = by_state.iter().map(|(_, n)| n).sum();
    Ok(Stats {
        total_submitted: present + u64::try_from(deleted).unwrap_or(0),
        by_state,
        avg_duration_ms: avg,
        p95_start_latency_ms: p95,
    })
}
