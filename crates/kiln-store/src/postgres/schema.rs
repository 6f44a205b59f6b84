//! The embedded migrations, applied in order under a session advisory lock, each recorded
//! in `schema_migrations`.
//!
//! Many nodes may start at once: the first to take the lock applies what is missing, the
//! others wait for it and then find nothing left to do. Each migration runs in its own
//! transaction, so a failing one leaves the schema at the previous version.

use crate::error::Result;

/// Every migration, in order: (version, SQL).
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_drop_jobs_started.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_job_log_heads.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_job_json_as_text.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_queue_controls.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_job_trace_id.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_job_parent_span.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_job_counts.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_user_identities.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_owner_active.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_user_limits.sql"),
    ),
    (
        12,
        include_str!("../../migrations/postgres/0012_artifact_bytes.sql"),
    ),
    (13, include_str!("../../migrations/postgres/0013_nodes.sql")),
    (
        14,
        include_str!("../../migrations/postgres/0014_objects.sql"),
    ),
    (
        15,
        include_str!("../../migrations/postgres/0015_drop_jobs_node.sql"),
    ),
    (
        16,
        include_str!("../../migrations/postgres/0016_count_every_state.sql"),
    ),
    (
        17,
        include_str!("../../migrations/postgres/0017_lighter_job_writes.sql"),
    ),
    (
        18,
        include_str!("../../migrations/postgres/0018_model_calls.sql"),
    ),
];

/// The advisory lock key that serialises migrations (`kilnmigr` in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_6d69_6772;

/// Applies the migrations the database lacks on a connection of its own; returns their
/// versions.
pub(super) async fn migrate(target: &super::tls::Target) -> Result<Vec<u32>> {
    let (mut client, connection) = target.config.connect(target.tls.clone()).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the PostgreSQL migration connection failed");
        }
    });
    let applied = apply(&mut client).await;
    drop(client);
    // The connection ends with the client; the session lock goes with it in any case.
    let _ = driver.await;
    applied
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<Vec<u32>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_locked(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

async fn apply_locked(client: &mut tokio_postgres::Client) -> Result<Vec<u32>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        let v = i32::try_from(version).unwrap_or(i32::MAX);
        let tx = client.transaction().await?;
        let done = tx
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&v])
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&v])
            .await?;
        tx.commit().await?;
        applied.push(version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_increase() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
