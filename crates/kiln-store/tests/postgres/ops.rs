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
    assert_eq!(applied, (1..=18).collect::<Vec<u32>>());
}

/// Two nodes that recount at the same moment take turns: each deletes the counts of
/// waiting and running jobs and inserts them again, so two at once collided on the same
/// rows and one refused to start. The test holds `job_counts` until both nodes wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_that_recount_together_take_turns() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    drop(db.store().await);
    let holder = raw_client(&db).await;
    let watcher = raw_client(&db).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE job_counts IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    let waiting = async {
        loop {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("both nodes wait for a lock within 30 s");
    holder.batch_execute("COMMIT").await.unwrap();
    for start in starts {
        let store = start.await.unwrap();
        assert!(store.is_ok(), "{:?}", store.err());
    }
}

/// A plain connection to the test database, for writing rows the store never would.
async fn raw_client(db: &TempPostgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Events per job id, from the table.
async fn events_of(client: &tokio_postgres::Client) -> std::collections::HashMap<uuid::Uuid, i64> {
    client
        .query(
            "SELECT job_id, count(*) FROM job_events GROUP BY job_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Events have no foreign key to their job (migration 17): the delete trigger removes them
/// with the jobs a delete or a prune removes, and only those.
#[tokio::test]
async fn deleted_and_pruned_jobs_take_their_events_with_them() {
    let Some((db, store, ada)) = setup().await else {
        return;
    };
    let client = raw_client(&db).await;
    let deleted = insert(&*store, job(ada, t0())).await.id;
    let older = insert(&*store, job(ada, t0())).await.id;
    let newest = insert(&*store, job(ada, at(1))).await.id;
    // Claimed and finished in that order (same priority and run time: by id).
    for (n, id) in [deleted, older, newest].into_iter().enumerate() {
        let ms = 10 * i64::try_from(n).unwrap();
        let claimed = claim_one(&*store, "n1", at(2 + ms)).await;
        assert_eq!(claimed.id, id);
        store
            .job_complete(
                &lease_of(&claimed),
                Outcome::Succeeded(json!(n)),
                at(3 + ms),
            )
            .await
            .unwrap();
    }
    // Submitted, running, succeeded: three events each.
    let before = events_of(&client).await;
    assert_eq!(before.len(), 3);
    assert!(before.values().all(|&n| n == 3), "{before:?}");

    store.job_delete(Some(ada), deleted).await.unwrap();
    let after = events_of(&client).await;
    assert!(!after.contains_key(&deleted.0), "{after:?}");
    assert_eq!(after.len(), 2);

    // Nothing is old enough to go by age; the count keeps only the newest finished job.
    let gone = store.job_prune(t0(), Some(1)).await.unwrap();
    assert_eq!(gone.count, 1);
    let after = events_of(&client).await;
    assert!(!after.contains_key(&older.0), "{after:?}");
    assert_eq!(after.get(&newest.0), Some(&3), "{after:?}");
    assert_eq!(after.len(), 1);
    assert_eq!(store.event_list(Some(ada), newest).await.unwrap().len(), 3);
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
