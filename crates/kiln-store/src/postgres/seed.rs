//! Bulk seeding for benchmarks (`kiln bench --database postgres://… --seed-jobs N`): the
//! same rows as the SQLite seed (`sqlite/seed.rs`: a `succeeded` `echo` job with its
//! `submitted` and `succeeded` events, one millisecond apart, round robin over the owners),
//! written by one `INSERT … SELECT … FROM generate_series` per chunk.
//!
//! Deliberately inherent methods of [`PgStore`], not part of [`crate::Store`]: the service
//! never needs them, and the contract suite does not have to cover them.

use chrono::TimeDelta;
use kiln_domain::{Timestamp, UserId};

use super::row::{self, ts};
use super::{PgStore, parse_url};
use crate::error::{Result, backend};

/// Jobs per statement (and transaction): 50,000 jobs and their 100,000 events take well
/// under a second, so live requests are never held up for long.
const CHUNK: u64 = 50_000;

/// Jobs `$1..=$2` of the seed: job `i` is created at `$4 + i` ms (`$3 + i` as epoch
/// milliseconds, for its UUIDv7) and belongs to `$5[i % len + 1]`. The job rows and their
/// two events in one statement. The id is a UUIDv7 made from a random v4 (generated once
/// per row, hence the materialised CTE): the creation millisecond in its first 48 bits and
/// the version nibble set to 7, so ids sort like real ones. `event_seq` is 2: the seq of
/// the job's latest event, as a real run leaves it.
const INSERT_CHUNK: &str = "
WITH seed AS MATERIALIZED (
    SELECT uuid_send(gen_random_uuid()) AS r,
           $3::bigint + i AS ms,
           $4::timestamptz + i * interval '1 millisecond' AS at,
           ($5::bigint[])[1 + (i % cardinality($5::bigint[]))::int] AS owner
    FROM generate_series($1::bigint, $2::bigint) AS g (i)
), job AS (
    INSERT INTO jobs (id, owner_id, type, queue, state, priority, payload, result,
                      attempts, max_attempts, created_at, run_at, started_at, finished_at,
                      updated_at, node, event_seq)
    SELECT encode(set_byte(overlay(r PLACING substring(int8send(ms) FROM 3) FROM 1 FOR 6),
                           6, (get_byte(r, 6) & 15) | 112), 'hex')::uuid,
           owner, 'echo', 'default', 'succeeded', 0, '{}', '{}', 1, 3,
           at, at, at, at + interval '1 millisecond', at + interval '1 millisecond', 'seed', 2
    FROM seed
    RETURNING id, created_at
)
INSERT INTO job_events (job_id, seq, state, at, attempt, node, message)
SELECT id, 1, 'queued', created_at, 0, NULL, 'submitted' FROM job
UNION ALL
SELECT id, 2, 'succeeded', created_at + interval '1 millisecond', 1, 'seed', 'succeeded'
FROM job";

impl PgStore {
    /// Inserts `count` `succeeded` `echo` jobs, created one millisecond apart and ending at
    /// `now`, each with its two events; the `i`-th job (oldest first) belongs to
    /// `owners[i % owners.len()]`. Then `VACUUM (ANALYZE)`s the two tables, as autovacuum
    /// would have done long since on a table this size: the planner gets its statistics
    /// and index-only scans their visibility map, and no autovacuum starts during the
    /// measurements that follow. Returns how many jobs were written. For benchmarks only:
    /// no signals are sent and no quota or idempotency applies.
    pub async fn job_seed(&self, owners: &[UserId], count: u64, now: Timestamp) -> Result<u64> {
        if owners.is_empty() {
            return Err(backend("job_seed needs at least one owner"));
        }
        let owners: Vec<i64> = owners.iter().map(|o| o.0).collect();
        let span = i64::try_from(count).unwrap_or(i64::MAX);
        let first = ts(now) - TimeDelta::milliseconds(span);
        let first_ms = first.timestamp_millis();
        let db = self.client().await?;
        let mut done = 0;
        while done < count {
            let n = CHUNK.min(count - done);
            let (from, to) = (row::big(done), row::big(done + n - 1));
            row::execute(&db, INSERT_CHUNK, &[&from, &to, &first_ms, &first, &owners]).await?;
            done += n;
        }
        if count > 0 {
            db.batch_execute("VACUUM (ANALYZE) jobs, job_events")
                .await?;
            // The seed writes rows directly: count them as a node does when it connects.
            let mut db = db;
            super::counts::recount(&mut db, super::counts::Recount::Everything).await?;
        }
        Ok(done)
    }

    /// Whether the database at `url` holds any job, read on a connection of its own before
    /// anything is migrated (a database without Kiln's tables holds none), so that
    /// `kiln bench` refuses to mix its jobs with somebody's data before it writes anything.
    pub async fn holds_jobs(url: &str) -> Result<bool> {
        let target = parse_url(url)?;
        let (client, connection) = target.config.connect(target.tls.clone()).await?;
        let driver = tokio::spawn(connection);
        let holds: Result<bool> = async {
            let found = client
                .query_one("SELECT to_regclass('jobs') IS NOT NULL", &[])
                .await?;
            if !row::get::<bool>(&found, 0)? {
                return Ok(false);
            }
            let found = client
                .query_one("SELECT EXISTS (SELECT 1 FROM jobs)", &[])
                .await?;
            row::get(&found, 0)
        }
        .await;
        drop(client);
        let _ = driver.await;
        holds
    }

    /// The server's version and `synchronous_commit`, for a benchmark report's header:
    /// `PostgreSQL 16.4, synchronous_commit=on`.
    pub async fn describe_server(&self) -> Result<String> {
        let db = self.client().await?;
        let found = db
            .query_one(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit')",
                &[],
            )
            .await?;
        let (version, sync): (String, String) = (row::get(&found, 0)?, row::get(&found, 1)?);
        Ok(format!("PostgreSQL {version}, synchronous_commit={sync}"))
    }
}
