//! Migrations, maintenance (prune, stats, logs), the listener's reconnect and an unreachable server.

use super::*;

#[tokio::test]
async fn migrations_are_idempotent_across_connects() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let first = db.store().await;
    let second = db.store().await;
    assert!(PgStore::migrate(&db.url).await.unwrap().is_empty());
    // Both stores see the same schema and data.
    let owner = add_user(&*first, "ada").await;
    assert_eq!(second.user_get(owner).await.unwrap().username, "ada");
    drop((first, second));
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let url = db.url.clone();
    let runs = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { PgStore::migrate(&url).await.unwrap() })
    });
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap());
    }
    assert_eq!(
        applied,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    );
}

/// A plain connection to the test database, for writing rows the store never would.
async fn raw_client(db: &TempPostgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_log_row_from_before_heads_reads_as_marker_and_tail() {
    let Some((db, store, ada)) = setup().await else {
        return;
    };
    let id = insert(&*store, job(ada, t0())).await.id;
    let client = raw_client(&db).await;
    // A row as version 2 wrote it: no `head_bytes`, so the column's default.
    client
        .execute(
            "INSERT INTO job_logs (job_id, text, bytes, dropped, updated_at)
             VALUES ($1, 'tail\n', 5, 7, now())",
            &[&id.0],
        )
        .await
        .unwrap();
    let read = store.log_read(Some(ada), id, 0).await.unwrap();
    assert_eq!(read.text, "[… 7 bytes skipped …]\ntail\n");
    assert_eq!((read.end, read.state), (12, JobState::Queued));
    // It stays headless: its start is long gone.
    assert_eq!(store.log_append(id, "more\n", t0()).await.unwrap(), 17);
    assert_eq!(
        store.log_get(None, id).await.unwrap(),
        "[… 7 bytes skipped …]\ntail\nmore\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let mut on_b = node_b.subscribe();
    let admin = db
        .store_with(PgOptions {
            listen: false,
            ..PgOptions::default()
        })
        .await;
    // Kill every listener connection of this database, as a server restart or a network
    // cut would.
    let client = raw_client(&db).await;
    let killed = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
            &[&kiln_store::postgres::LISTENER_NAME],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "one listener per listening store");
    // On reconnecting, a listener tells its subscribers to re-read.
    wait_for(&mut on_b, Signal::JobAvailable).await;
    insert(&*admin, job(ada, t0())).await;
    let running = claim_one(&*node_b, "b", at(1)).await;
    node_a.job_cancel(None, running.id, at(2)).await.unwrap();
    wait_for(&mut on_b, Signal::CancelRequested(running.id)).await;
    drop((node_a, node_b, admin));
}

#[tokio::test]
async fn a_store_that_cannot_reach_its_database_fails_to_connect() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let missing = db.url.replace(&db.name, &format!("{}_missing", db.name));
    let err = PgStore::connect(&missing, PgOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let bad = PgStore::connect("postgres://u@h:notaport/db", PgOptions::default()).await;
    assert!(matches!(bad, Err(StoreError::Backend(_))));
}

#[tokio::test]
async fn an_unknown_type_or_queue_in_the_database_is_a_backend_error() {
    let Some((db, store, ada)) = setup().await else {
        return;
    };
    let id = insert(&*store, job(ada, t0())).await.id;
    let client = raw_client(&db).await;
    for (column, value) in [("type", "fork_bomb"), ("queue", "Not A Queue")] {
        client
            .execute(
                &format!("UPDATE jobs SET {column} = $2 WHERE id = $1"),
                &[&id.0, &value],
            )
            .await
            .unwrap();
        let read = store.job_get(None, id).await;
        assert!(
            matches!(read, Err(StoreError::Backend(_))),
            "{column}: {read:?}"
        );
        client
            .execute(
                "UPDATE jobs SET type = 'echo', queue = 'default' WHERE id = $1",
                &[&id.0],
            )
            .await
            .unwrap();
    }
    assert!(store.job_get(None, id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_changes_reach_every_node_at_once() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let mut on_b = node_b.subscribe();
    let patch = kiln_store::UserPatch {
        disabled: Some(true),
        ..kiln_store::UserPatch::default()
    };
    node_a.user_update(ada, patch).await.unwrap();
    wait_for(&mut on_b, Signal::UserChanged(ada)).await;
    let token = kiln_store::NewToken {
        user: ada,
        hash: vec![7; 32],
        kind: kiln_store::TokenKind::Session,
        name: "login".into(),
        expires_at: None,
    };
    node_a.token_insert(token, t0()).await.unwrap();
    node_a.token_delete_hash(&[7; 32]).await.unwrap();
    wait_for(&mut on_b, Signal::UserChanged(ada)).await;
    let limits = kiln_store::UserLimits {
        max_active: Some(1),
        ..kiln_store::UserLimits::default()
    };
    node_a.user_limits_set(ada, limits).await.unwrap();
    wait_for(&mut on_b, Signal::UserChanged(ada)).await;
}
