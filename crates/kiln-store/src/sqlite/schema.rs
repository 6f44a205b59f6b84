//! Opening connections (pragmas for the writer and the readers) and applying the embedded
//! migrations in order, each recorded in `schema_migrations`.
//!
//! Migrations are plain SQL files under `migrations/sqlite/`, compiled into the binary; a
//! version once applied is never run again, so re-running is a no-op.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{SqlitePath, Synchronous, backend};
use crate::error::Result;

/// Every migration, in order: (version, SQL).
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_hot_path_indexes.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_counts_by_the_writer.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_jobs_state_check.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_drop_jobs_started.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_job_log_heads.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_queue_controls.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_job_trace_id.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_job_parent_span.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_user_identities.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_owner_active.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_user_limits.sql"),
    ),
    (
        13,
        include_str!("../../migrations/sqlite/0013_artifact_bytes.sql"),
    ),
    (14, include_str!("../../migrations/sqlite/0014_nodes.sql")),
    (
        15,
        include_str!("../../migrations/sqlite/0015_model_calls.sql"),
    ),
];

/// How long a connection waits for another process's lock before reporting busy. Only a
/// second process (say `kiln user add` beside a running server) ever contends: within one
/// process there is a single writer.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. Lists build a few dozen SQL variants (filters ×
/// sorts), the rest are fixed; 256 keeps every hot statement prepared.
const STATEMENT_CACHE: usize = 256;

/// Opens the write connection: WAL, foreign keys, the chosen `synchronous`, and the parent
/// directory created if missing.
pub(super) fn open_writer(path: &SqlitePath, sync: Synchronous) -> Result<Connection> {
    let conn = match path {
        SqlitePath::Memory => Connection::open_in_memory()?,
        SqlitePath::File(file) => {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    backend(format!("cannot create directory {}: {e}", dir.display()))
                })?;
            }
            let conn = Connection::open(file)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(backend(format!(
                    "{} cannot use WAL (journal mode {mode})",
                    file.display()
                )));
            }
            // Checkpoints run on their own thread, never inside the writer's commits.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let sync = match sync {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Caches prepared statements and keeps their plans stable. Without the query planner
/// stability guarantee, SQLite re-prepares a statement on the next step whenever a newly
/// bound value might change its plan (a `LIMIT ?` moving between 1 and more, a parameter
/// compared against a partial index's condition, STAT4 estimates): the hot claim, event and
/// promotion statements were being parsed again on most executions, a third of the writer
/// thread's time. Every hot statement names its partial index's condition literally, so
/// the value-independent plan is the one wanted anyway.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Opens the checkpoint thread's connection to `file` (see [`super::checkpoint`]).
pub(super) fn open_checkpointer(file: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Opens a read connection to `file` (which the writer has already created and migrated).
pub(super) fn open_reader(file: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(file, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Read-write open (a read-only one cannot create the WAL index if it is missing), but
    // refusing writes: every write must go through the writer thread.
    conn.pragma_update(None, "query_only", "ON")?;
    stable_plans(&conn)?;
    Ok(conn)
}

/// Applies the migrations `conn` lacks, each in its own transaction; returns their versions.
///
/// Foreign keys are off while migrations run (SQLite ignores the setting inside a
/// transaction, and a table rebuild needs them off: dropping the old table must not cascade)
/// and each migration checks them before it commits.
pub(super) fn migrate(conn: &Connection) -> Result<Vec<u32>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER NOT NULL PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let enforced: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let applied = apply(conn);
    conn.pragma_update(None, "foreign_keys", enforced)?;
    applied
}

fn apply(conn: &Connection) -> Result<Vec<u32>> {
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        // Checked inside the transaction, so two processes migrating at once cannot both
        // apply the same version.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let done = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if done {
            continue;
        }
        tx.execute_batch(sql)?;
        let dangling: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = dangling {
            return Err(backend(format!(
                "migration {version} would leave rows of {table} referring to missing rows"
            )));
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            (version, chrono::Utc::now().timestamp_millis()),
        )?;
        tx.commit()?;
        applied.push(version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let conn = open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        assert_eq!(
            migrate(&conn).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(migrate(&conn).unwrap(), Vec::<u32>::new());
        let versions: i64 = conn
            .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
    }

    #[test]
    fn hot_statements_are_not_prepared_again_when_their_bindings_change() {
        // The claim's `LIMIT ?3` moves between 1 (a slot's next job) and more (a claim
        // round): without stable plans SQLite re-prepares the statement on each change.
        let conn = open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        migrate(&conn).unwrap();
        for limit in [1, 4, 1, 16, 1] {
            let mut pick = conn.prepare_cached(super::super::claim::PICK).unwrap();
            let ids = pick
                .query_map(("[\"echo\"]", "[]", limit), |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .count();
            assert_eq!(ids, 0);
        }
        let pick = conn.prepare_cached(super::super::claim::PICK).unwrap();
        assert_eq!(pick.get_status(rusqlite::StatementStatus::RePrepare), 0);
        for limit in [1, 33, 1, 48, 1] {
            let mut head = conn.prepare_cached(super::super::claim::HEAD).unwrap();
            assert_eq!(head.query_map([limit], |_| Ok(())).unwrap().count(), 0);
        }
        let head = conn.prepare_cached(super::super::claim::HEAD).unwrap();
        assert_eq!(head.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn the_start_latency_sample_reads_only_its_index() {
        let conn = open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        migrate(&conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                super::super::retention::START_LATENCIES
            ))
            .unwrap()
            .query_map([1000], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX jobs_finished")),
            "{plan:?}"
        );
    }

    #[test]
    fn the_owner_quota_count_reads_only_its_partial_index() {
        let conn = open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        migrate(&conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                super::super::jobs::OWNER_ACTIVE_COUNT
            ))
            .unwrap()
            .query_map([1, 10], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX jobs_owner_active")),
            "{plan:?}"
        );
    }

    #[test]
    fn the_jobs_rebuild_keeps_rows_references_and_cascades() {
        let conn = open_writer(&SqlitePath::Memory, Synchronous::Normal).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (
                 version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .unwrap();
        for &(version, sql) in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [version])
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO users (id, username, password_hash, role, created_at)
                 VALUES (1, 'a', 'x', 'client', 0);
             INSERT INTO jobs (id, owner_id, type, queue, state, priority, payload,
                               max_attempts, created_at, run_at, updated_at)
                 VALUES (x'00000000000000000000000000000001', 1, 'echo', 'default',
                         'succeeded', 0, '{}', 3, 0, 0, 0),
                        (x'00000000000000000000000000000002', 1, 'echo', 'default',
                         'queued', 0, '{}', 3, 0, 0, 0);
             INSERT INTO job_events (job_id, seq, state, at, attempt)
                 VALUES (x'00000000000000000000000000000001', 1, 'queued', 0, 0);
             INSERT INTO job_logs (job_id, text, bytes, updated_at)
                 VALUES (x'00000000000000000000000000000001', 'hi', 2, 0);
             INSERT INTO idempotency_keys (owner_id, key, request_hash, job_id)
                 VALUES (1, 'k', x'00', x'00000000000000000000000000000001');",
        )
        .unwrap();
        let later: Vec<u32> = MIGRATIONS[3..].iter().map(|&(v, _)| v).collect();
        assert_eq!(later.first(), Some(&4));
        assert_eq!(migrate(&conn).unwrap(), later);

        let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(one("PRAGMA foreign_keys"), 1, "foreign keys are on again");
        assert_eq!(one("SELECT count(*) FROM jobs"), 2);
        // The rebuild's nine indexes (eight of its own and the primary key's), less the
        // one version 5 drops, plus version 11's `jobs_owner_active` and version 13's
        // `jobs_owner_artifacts`.
        assert_eq!(one("SELECT count(*) FROM pragma_index_list('jobs')"), 10);
        assert!(
            conn.execute("UPDATE jobs SET state = 'bogus'", []).is_err(),
            "the state check still holds"
        );
        conn.execute(
            "DELETE FROM jobs WHERE id = x'00000000000000000000000000000001'",
            [],
        )
        .unwrap();
        for child in ["job_events", "job_logs", "idempotency_keys"] {
            assert_eq!(
                one(&format!("SELECT count(*) FROM {child}")),
                0,
                "{child} rows go with their job"
            );
        }
        // The point of the rebuild: no temporary table per job insert.
        let ops: Vec<String> = conn
            .prepare(
                "EXPLAIN INSERT INTO jobs (id, owner_id, type, queue, state, priority,
                     payload, max_attempts, created_at, run_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .unwrap()
            .query_map(
                rusqlite::params_from_iter([rusqlite::types::Null; 11]),
                |r| r.get(1),
            )
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{ops:?}");
    }

    #[test]
    fn migration_versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
