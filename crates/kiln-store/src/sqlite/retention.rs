//! Retention (pruning terminal jobs by age and by count) and the numbers behind `/metrics`.
//!
//! Only terminal jobs have `finished_at`, so the partial index `jobs_finished` lists exactly
//! the prunable jobs, oldest first. Deleting a job cascades to its events, log and
//! idempotency keys; `total_submitted` (see `counts`) stays across pruning.

use kiln_domain::{JobState, Timestamp};
use rusqlite::Connection;

use super::row::{self, ms};
use super::writer::Tx;
use crate::error::{Result, backend};
use crate::model::{Pruned, QUEUE_DEPTHS, QueueDepth, Stats};

/// Most jobs deleted per writer command: a prune of a large backlog runs as many short
/// transactions, so submissions are never stuck behind one long delete.
pub(super) const PRUNE_CHUNK: usize = 1000;

/// Deletes up to `PRUNE_CHUNK` prunable jobs: first those finished before `before`, then the
/// oldest terminal jobs beyond the newest `keep_max`. Returns how many, and which had
/// artifacts.
pub(super) fn prune_chunk(
    tx: &mut Tx<'_>,
    before: Timestamp,
    keep_max: Option<u64>,
) -> Result<Pruned> {
    let chunk = PRUNE_CHUNK as i64;
    let mut pruned = Pruned::default();
    delete_returning(
        tx,
        &mut pruned,
        "DELETE FROM jobs WHERE rowid IN (
             SELECT rowid FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1
             LIMIT ?2)
         RETURNING state, id, state = 'succeeded' AND json_type(result, '$.artifacts') IS NOT NULL",
        (ms(before), chunk),
    )?;
    if let Some(keep) = keep_max
        && (pruned.count as i64) < chunk
    {
        let left = chunk - pruned.count as i64;
        delete_returning(
            tx,
            &mut pruned,
            "DELETE FROM jobs WHERE rowid IN (
                 SELECT rowid FROM jobs WHERE finished_at IS NOT NULL
                 ORDER BY finished_at DESC LIMIT ?2 OFFSET ?1)
             RETURNING state, id, state = 'succeeded' AND json_type(result, '$.artifacts') IS NOT NULL",
            (i64::try_from(keep).unwrap_or(i64::MAX), left),
        )?;
    }
    Ok(pruned)
}

/// Runs a `DELETE … RETURNING state, id, <has artifacts>`, noting each deleted job for the
/// counts and in `pruned`.
fn delete_returning(
    tx: &mut Tx<'_>,
    pruned: &mut Pruned,
    sql: &str,
    params: (i64, i64),
) -> Result<()> {
    let rows = tx
        .db
        .prepare_cached(sql)?
        .query_map(params, |r| {
            Ok((
                row::state(r, 0)?,
                row::job_id(r, 1)?,
                r.get::<_, Option<bool>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for &(state, id, artifacts) in &rows {
        tx.counts.deleted(state);
        if artifacts == Some(true) {
            pruned.with_artifacts.push(id);
        }
    }
    if !rows.is_empty() {
        tx.evict_all();
    }
    pruned.count += rows.len() as u64;
    Ok(())
}

/// Jobs ever submitted, current counts per state, mean run time, p95 start latency.
pub(super) fn stats(db: &Connection) -> Result<Stats> {
    let total_submitted: i64 = db
        .prepare_cached("SELECT value FROM counters WHERE name = 'total_submitted'")?
        .query_row([], |r| r.get(0))?;
    let mut by_state = Vec::with_capacity(JobState::ALL.len());
    let mut count = db.prepare_cached("SELECT n FROM job_counts WHERE state = ?1")?;
    for state in JobState::ALL {
        let n: i64 = count.query_row([state.as_str()], |r| r.get(0))?;
        by_state.push((state, u64::try_from(n).unwrap_or(0)));
    }
    let avg_duration_ms: Option<f64> = db
        .prepare_cached(
            "SELECT avg(d) FROM (
                 SELECT finished_at - started_at AS d FROM jobs INDEXED BY jobs_finished
                 WHERE finished_at IS NOT NULL AND state = 'succeeded' AND started_at IS NOT NULL
                 ORDER BY finished_at DESC LIMIT ?1)",
        )?
        .query_row([LATENCY_SAMPLE], |r| r.get(0))?;
    let latencies = db
        .prepare_cached(START_LATENCIES)?
        .query_map([LATENCY_SAMPLE], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Stats {
        total_submitted: u64::try_from(total_submitted).unwrap_or(0),
        by_state,
        avg_duration_ms: avg_duration_ms.unwrap_or(0.0),
        p95_start_latency_ms: p95(latencies),
    })
}

/// Jobs waiting or running per queue and state.
pub(super) fn queue_depths(db: &Connection) -> Result<Vec<QueueDepth>> {
    let mut stmt = db.prepare_cached(QUEUE_DEPTHS)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut depths = Vec::new();
    for row in rows {
        let (queue, state, n) = row?;
        depths.push(QueueDepth {
            queue,
            state: state
                .parse()
                .map_err(|e| backend(format!("job state: {e}")))?,
            n: u64::try_from(n).unwrap_or(0),
        });
    }
    Ok(depths)
}

/// The start latencies of the most recently finished jobs that started: an index-only read
/// of `jobs_finished` (migration 5).
pub(super) const START_LATENCIES: &str =
    "SELECT started_at - created_at FROM jobs INDEXED BY jobs_finished
     WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
     ORDER BY finished_at DESC LIMIT ?1";

/// Jobs the mean run time and the start-latency percentile look at (the most recently
/// finished): recent enough to follow changes in load, many enough to be stable,
/// and a bounded read whatever the table's size (an average over every succeeded job was a
/// full index scan per `/metrics` call: ~10 ms at a million jobs).
const LATENCY_SAMPLE: i64 = 1000;

/// The 95th percentile (nearest rank); 0 for no samples.
fn p95(mut samples: Vec<i64>) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = (samples.len() * 95).div_ceil(100).max(1);
    samples[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_is_the_nearest_rank() {
        assert_eq!(p95(vec![]), 0.0);
        assert_eq!(p95(vec![7]), 7.0);
        assert_eq!(p95((1..=100).rev().collect()), 95.0);
        assert_eq!(p95((1..=20).collect()), 19.0);
    }
}
