//! Bulk seeding for benchmarks (`kiln bench --seed-jobs N`): many finished jobs written
//! straight into the tables, far faster than N submissions.
//!
//! Deliberately an inherent method of [`SqliteStore`], not part of [`crate::Store`]: the
//! service never needs it, and the contract suite does not have to cover it. The rows are
//! what a real run leaves behind (a `succeeded` `echo` job with its `submitted` and
//! `succeeded` events), so lists and counters see ordinary data.

use kiln_domain::{Timestamp, UserId};
use uuid::Uuid;

use super::SqliteStore;
use super::row::ms;
use super::writer::Tx;
use crate::error::Result;

/// Jobs per writer command: one command holds the write lock for roughly 50–100 ms on this
/// machine class, so live requests interleave between chunks instead of waiting seconds.
const CHUNK: u64 = 10_000;

impl SqliteStore {
    /// Inserts `count` `succeeded` `echo` jobs owned by `owner`, created one millisecond
    /// apart and ending at `now`, each with its two events. Returns how many were written.
    /// For benchmarks only: no signals are sent and no quota or idempotency applies.
    pub async fn job_seed(&self, owner: UserId, count: u64, now: Timestamp) -> Result<u64> {
        let first = ms(now) - i64::try_from(count).unwrap_or(i64::MAX);
        let mut done = 0;
        while done < count {
            let n = CHUNK.min(count - done);
            let start = first + i64::try_from(done).unwrap_or(i64::MAX);
            self.write(move |tx| insert_chunk(tx, owner, start, n))
                .await?;
            done += n;
        }
        Ok(done)
    }
}

/// Writes `n` jobs created at `start`, `start + 1`, … milliseconds.
fn insert_chunk(tx: &mut Tx<'_>, owner: UserId, start: i64, n: u64) -> Result<()> {
    let mut job = tx.db.prepare_cached(
        "INSERT INTO jobs (id, owner_id, type, queue, state, priority, payload, result,
                           attempts, max_attempts, created_at, run_at, started_at,
                           finished_at, updated_at, node)
         VALUES (?1, ?2, 'echo', 'default', 'succeeded', 0, '{}', '{}', 1, 3,
                 ?3, ?3, ?3, ?3 + 1, ?3 + 1, 'seed')",
    )?;
    let mut event = tx.db.prepare_cached(
        "INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
         VALUES (?1, 1, 'queued', ?2, 0, NULL, 'submitted'),
                (?1, 2, 'succeeded', ?2 + 1, 1, 'seed', 'succeeded')",
    )?;
    for i in 0..n {
        let at = start + i64::try_from(i).unwrap_or(0);
        let id = *v7(at).as_bytes();
        job.execute((id, owner.0, at))?;
        event.execute((id, at))?;
    }
    Ok(())
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
    async fn seeded_jobs_are_ordinary_succeeded_jobs_of_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions {
            path: super::super::SqlitePath::File(dir.path().join("kiln.db")),
            ..SqliteOptions::default()
        })
        .unwrap();
        let now = chrono::Utc::now();
        let owner = NewUser {
            username: "bench".to_owned(),
            password_hash: "x".to_owned(),
            role: Role::Admin,
        };
        let owner = store.user_insert(owner, now).await.unwrap().id;

        let written = store.job_seed(owner, CHUNK + 5, now).await.unwrap();

        assert_eq!(written, CHUNK + 5);
        let stats = store.job_stats().await.unwrap();
        assert_eq!(stats.total_submitted, CHUNK + 5);
        assert!(stats.by_state.contains(&(JobState::Succeeded, CHUNK + 5)));
        let page = store
            .job_list(&ListQuery {
                owner: Some(owner),
                limit: 20,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.items.len(), 20);
        let newest = &page.items[0];
        assert_eq!(newest.state, JobState::Succeeded);
        assert!(newest.created_at <= now && newest.finished_at.is_some());
        let events = store.event_list(Some(owner), newest.id).await.unwrap();
        assert_eq!(events.len(), 2);
    }
}
