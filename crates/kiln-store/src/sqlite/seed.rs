//! Bulk seeding for benchmarks (`kiln bench --seed-jobs N --seed-users U`): many finished
//! jobs written straight into the tables, far faster than N submissions.
//!
//! Deliberately an inherent method of [`SqliteStore`], not part of [`crate::Store`]: the
//! service never needs it, and the contract suite does not have to cover it. The rows are
//! what a real run leaves behind (a `succeeded` `echo` job with its `submitted` and
//! `succeeded` events), so lists and counters see ordinary data. The PostgreSQL backend
//! writes the same rows (`postgres/seed.rs`).

use std::sync::Arc;

use kiln_domain::{JobState, Timestamp, UserId};
use rusqlite::params_from_iter;
use rusqlite::types::Value;
use uuid::Uuid;

use super::SqliteStore;
use super::row::ms;
use super::writer::Tx;
use crate::error::{Result, backend};

/// Jobs per writer command: one command holds the write lock for roughly 50–100 ms on this
/// machine class, so live requests interleave between chunks instead of waiting seconds.
const CHUNK: u64 = 10_000;

impl SqliteStore {
    /// Inserts `count` `succeeded` `echo` jobs, created one millisecond apart and ending at
    /// `now`, each with its two events; the `i`-th job (oldest first) belongs to
    /// `owners[i % owners.len()]`. Returns how many were written. For benchmarks only: no
    /// signals are sent and no quota or idempotency applies.
    pub async fn job_seed(&self, owners: &[UserId], count: u64, now: Timestamp) -> Result<u64> {
        if owners.is_empty() {
            return Err(backend("job_seed needs at least one owner"));
        }
        let owners: Arc<[UserId]> = owners.into();
        let first = ms(now) - i64::try_from(count).unwrap_or(i64::MAX);
        let mut done = 0;
        while done < count {
            let n = CHUNK.min(count - done);
            let owners = Arc::clone(&owners);
            self.write(move |tx| insert_chunk(tx, &owners, first, done, n))
                .await?;
            done += n;
        }
        Ok(done)
    }
}

/// Rows per `INSERT`. Each statement inside the batch's savepoint pays for a statement
/// journal when it closes (a quarter of the seeding time with one row per statement, by
/// `perf`); 100 rows per statement make that cost vanish.
const ROWS: u64 = 100;

/// Writes jobs `from..from + n` of the seed: job `i` is created at `first + i`
/// milliseconds and belongs to `owners[i % owners.len()]`.
fn insert_chunk(tx: &mut Tx<'_>, owners: &[UserId], first: i64, from: u64, n: u64) -> Result<()> {
    let mut done = from;
    while done < from + n {
        let rows = ROWS.min(from + n - done);
        let mut jobs = Vec::with_capacity(rows as usize * 3);
        let mut events = Vec::with_capacity(rows as usize * 2);
        for i in done..done + rows {
            let at = first + i64::try_from(i).unwrap_or(0);
            let owner = owners[usize::try_from(i).unwrap_or(0) % owners.len()];
            let id = Value::Blob(v7(at).as_bytes().to_vec());
            jobs.extend([id.clone(), Value::Integer(owner.0), Value::Integer(at)]);
            events.extend([id, Value::Integer(at)]);
        }
        let inserted = tx
            .db
            .prepare_cached(&jobs_sql(rows))?
            .execute(params_from_iter(jobs))?;
        tx.counts
            .inserted_many(JobState::Succeeded, i64::try_from(inserted).unwrap_or(0));
        tx.db
            .prepare_cached(&events_sql(rows))?
            .execute(params_from_iter(events))?;
        done += rows;
    }
    Ok(())
}

/// `INSERT INTO jobs` of `rows` finished echo jobs; parameters per row: id, owner, time.
fn jobs_sql(rows: u64) -> String {
    format!(
        "WITH v (id, owner, at) AS (VALUES {})
         INSERT INTO jobs (id, owner_id, type, queue, state, priority, payload, result,
                           attempts, max_attempts, created_at, run_at, started_at,
                           finished_at, updated_at, node)
         SELECT id, owner, 'echo', 'default', 'succeeded', 0, '{{}}', '{{}}', 1, 3,
                at, at, at, at + 1, at + 1, 'seed'
         FROM v",
        vec!["(?, ?, ?)"; rows as usize].join(", ")
    )
}

/// `INSERT INTO job_events` of the two events of `rows` jobs; parameters per row: id, time.
fn events_sql(rows: u64) -> String {
    format!(
        "WITH v (id, at) AS (VALUES {})
         INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         SELECT id, 1, 'queued', at, 0, NULL, 'submitted' FROM v
         UNION ALL
         SELECT id, 2, 'succeeded', at + 1, 1, 'seed', 'succeeded' FROM v",
        vec!["(?, ?)"; rows as usize].join(", ")
    )
}

/// A UUIDv7 for millisecond `at` (its other bits random), so ids sort like real ones.
fn v7(at: i64) -> Uuid {
    let millis = u64::try_from(at).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        u32::try_from(millis % 1000).unwrap_or(0) * 1_000_000,
    );
    Uuid::new_v7(ts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kiln_domain::{JobState, Role};

    use super::*;
    use crate::sqlite::SqliteOptions;
    use crate::{ListQuery, NewUser, Store};

    #[tokio::test]
    async fn seeded_jobs_are_ordinary_succeeded_jobs_spread_over_their_owners() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions {
            path: super::super::SqlitePath::File(dir.path().join("kiln.db")),
            ..SqliteOptions::default()
        })
        .unwrap();
        let now = chrono::Utc::now();
        let mut owners = Vec::new();
        for name in ["bench", "other"] {
            let user = NewUser {
                username: name.to_owned(),
                password_hash: "x".to_owned(),
                role: Role::Admin,
            };
            owners.push(store.user_insert(user, now).await.unwrap().id);
        }

        let written = store.job_seed(&owners, CHUNK + 5, now).await.unwrap();

        assert_eq!(written, CHUNK + 5);
        let stats = store.job_stats().await.unwrap();
        assert_eq!(stats.total_submitted, CHUNK + 5);
        assert!(stats.by_state.contains(&(JobState::Succeeded, CHUNK + 5)));
        let page = |owner| ListQuery {
            owner: Some(owner),
            limit: 20,
            ..ListQuery::default()
        };
        let first = store.job_list(&page(owners[0])).await.unwrap();
        assert_eq!(first.items.len(), 20);
        let newest = &first.items[0];
        assert_eq!(newest.state, JobState::Succeeded);
        assert!(newest.created_at <= now && newest.finished_at.is_some());
        assert_eq!(newest.started_at, Some(newest.created_at));
        assert!(first.items.iter().all(|j| j.owner == owners[0]));
        let events = store.event_list(Some(owners[0]), newest.id).await.unwrap();
        assert_eq!(events.len(), 2);
        // Round robin: job i belongs to owners[i % 2], so the two owners' newest jobs are
        // one millisecond apart.
        let second = store.job_list(&page(owners[1])).await.unwrap();
        assert!(second.items.iter().all(|j| j.owner == owners[1]));
        let gap = (newest.created_at - second.items[0].created_at).num_milliseconds();
        assert_eq!(gap.abs(), 1);

        assert!(store.job_seed(&[], 1, now).await.is_err());
    }
}
