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
    assert_eq!(applied, vec![1, 2, 3]);
}

#[tokio::test]
async fn prune_removes_old_and_excess_terminal_jobs_only() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let mut done = Vec::new();
    for i in 0..5 {
        insert(&*store, job(ada, at(i))).await;
        done.push(finish(&*store, "n", at(100 * (i + 1))).await.id);
    }
    let waiting = insert(&*store, job(ada, at(0))).await;
    store.log_append(done[0], "hello\n", at(1)).await.unwrap();
    // Finished before 250: the first two.
    assert_eq!(store.job_prune(at(250), None).await.unwrap(), 2);
    assert!(matches!(
        store.job_get(None, done[0]).await,
        Err(StoreError::NotFound)
    ));
    // Keep the newest two terminal jobs.
    assert_eq!(store.job_prune(at(0), Some(2)).await.unwrap(), 1);
    assert!(matches!(
        store.job_get(None, done[2]).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.job_get(None, done[3]).await.is_ok());
    assert_eq!(
        store.job_get(None, waiting.id).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 6);
}

#[tokio::test]
async fn stats_count_states_and_time_runs() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let empty = store.job_stats().await.unwrap();
    assert_eq!(
        (
            empty.total_submitted,
            empty.avg_duration_ms,
            empty.p95_start_latency_ms
        ),
        (0, 0.0, 0.0)
    );
    assert_eq!(empty.by_state.len(), 7);
    insert(&*store, job(ada, at(0))).await;
    let running = claim_one(&*store, "n", at(40)).await;
    store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(140))
        .await
        .unwrap();
    let mut scheduled = job(ada, at(0));
    scheduled.run_at = at(10_000);
    scheduled.state = JobState::Scheduled;
    insert(&*store, scheduled).await;
    let stats = store.job_stats().await.unwrap();
    assert_eq!(stats.total_submitted, 2);
    assert_eq!(stats.avg_duration_ms, 100.0);
    assert_eq!(stats.p95_start_latency_ms, 40.0);
    let count = |s| stats.by_state.iter().find(|(st, _)| *st == s).unwrap().1;
    assert_eq!(
        (
            count(JobState::Succeeded),
            count(JobState::Scheduled),
            count(JobState::Queued)
        ),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn logs_keep_their_head_and_newest_bytes_around_a_marker() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let store = db
        .store_with(PgOptions {
            log_limit_bytes: 16,
            ..PgOptions::default()
        })
        .await;
    let ada = add_user(&*store, "ada").await;
    let bob = add_user(&*store, "bob").await;
    let id = insert(&*store, job(ada, t0())).await.id;
    assert_eq!(store.log_get(Some(ada), id).await.unwrap(), "");
    assert_eq!(store.log_append(id, "one\n", t0()).await.unwrap(), 4);
    assert_eq!(store.log_append(id, "two\n", t0()).await.unwrap(), 8);
    assert_eq!(store.log_get(Some(ada), id).await.unwrap(), "one\ntwo\n");
    assert_eq!(
        store.log_append(id, "three\nfour\n", t0()).await.unwrap(),
        19
    );
    // 19 bytes, limit 16: the head is the lines within 8 bytes, the tail the newest lines
    // within the other 8.
    assert_eq!(
        store.log_get(None, id).await.unwrap(),
        "one\ntwo\n[… 6 bytes skipped …]\nfour\n"
    );
    assert!(matches!(
        store.log_get(Some(bob), id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.log_append(JobId::new(), "x", t0()).await,
        Err(StoreError::NotFound)
    ));
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
