//! The per-state counts behind the stats (`job_counts`): after every kind of change, from
//! two nodes, they equal a count of the table; rows of closed connections fold; a node that
//! connects recounts the waiting and running jobs.

use kiln_domain::Failure;

use super::*;

async fn connect(db: &TempPostgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Rows of `job_counts` whose connection is gone (shard 0 aside).
async fn rows_of_gone_connections(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM job_counts WHERE shard <> 0
             AND shard NOT IN (SELECT pid % 32000 FROM pg_stat_activity)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Jobs per state as the table holds them.
async fn counted(db: &TempPostgres) -> Vec<(JobState, u64)> {
    let rows = connect(db)
        .await
        .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
        .await
        .unwrap();
    let mut out: Vec<(JobState, u64)> = JobState::ALL.iter().map(|&s| (s, 0)).collect();
    for r in rows {
        let state: JobState = r.get::<_, String>(0).parse().unwrap();
        let n: i64 = r.get(1);
        out.iter_mut().find(|(s, _)| *s == state).unwrap().1 = n as u64;
    }
    out
}

async fn assert_counts_match(db: &TempPostgres, store: &dyn Store, when: &str) {
    let stats = store.job_stats().await.unwrap();
    assert_eq!(stats.by_state, counted(db).await, "{when}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_the_table_after_every_kind_of_change() {
    let Some((db, a, ada)) = setup().await else {
        return;
    };
    let b = db.store().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(insert(&*a, job(ada, at(i))).await.id);
    }
    assert_counts_match(&db, &*a, "after inserts").await;

    // Scheduled jobs, one through the single-insert path (a key, a queue cap), due at 50.
    for key in [None, Some("once")] {
        let mut later = job(ada, at(0));
        later.run_at = at(50);
        later.state = JobState::Scheduled;
        let opts = InsertOptions {
            idempotency: key.map(|key| kiln_store::Idempotency {
                key: key.to_owned(),
                request_hash: vec![1],
            }),
            max_queued: key.map(|_| 1000),
            ..InsertOptions::default()
        };
        a.job_insert(later, opts).await.unwrap();
    }
    assert_counts_match(&db, &*a, "after scheduled inserts").await;
    assert_eq!(a.job_promote_due(at(60)).await.unwrap(), 2);
    assert_counts_match(&db, &*b, "after a promotion").await;

    let on_a = a.job_claim(&claim_req("a", 10, at(100))).await.unwrap();
    let on_b = b.job_claim(&claim_req("b", 10, at(100))).await.unwrap();
    assert_counts_match(&db, &*b, "after claims").await;

    // Two nodes complete at once: succeeded, dead, failed (retry later), and a cancel
    // pending on a running job turns a retryable failure into `cancelled`.
    a.job_cancel(None, on_a[8].id, at(110)).await.unwrap();
    let mut calls = Vec::new();
    for (i, job) in on_a.iter().chain(&on_b).enumerate() {
        let store = if i < 10 { a.clone() } else { b.clone() };
        let lease = lease_of(job);
        let outcome = match i % 3 {
            0 => Outcome::Succeeded(json!(i)),
            1 => Outcome::Failed {
                failure: Failure::permanent("bad", "no"),
                retry_at: None,
            },
            _ => Outcome::Failed {
                failure: Failure::retryable("busy", "later"),
                retry_at: Some(at(100_000)),
            },
        };
        calls.push(tokio::spawn(async move {
            store.job_complete(&lease, outcome, at(120)).await.unwrap()
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    assert_counts_match(&db, &*a, "after completions").await;
    assert_eq!(
        a.job_get(None, on_a[8].id).await.unwrap().state,
        JobState::Cancelled
    );

    // Cancels of waiting jobs, a retry of a dead one, a delete, from either node.
    let waiting: Vec<_> = ids
        .iter()
        .filter(|id| !on_a.iter().chain(&on_b).any(|j| j.id == **id))
        .copied()
        .collect();
    b.job_cancel(None, waiting[0], at(130)).await.unwrap();
    a.job_cancel_by("oscar", waiting[1], at(130)).await.unwrap();
    let dead = on_a[1].id;
    b.job_retry(None, dead, 3, at(140)).await.unwrap();
    a.job_delete(None, on_a[0].id).await.unwrap();
    assert_counts_match(&db, &*b, "after cancels, a retry and a delete").await;

    // Pruning keeps the two newest terminal jobs.
    b.job_prune(at(0), Some(2)).await.unwrap();
    assert_counts_match(&db, &*a, "after pruning").await;
    let stats = a.job_stats().await.unwrap();
    let terminal: u64 = stats
        .by_state
        .iter()
        .filter(|(s, _)| s.is_terminal())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(terminal, 2);

    // A job given back, and a rescue of an attempt whose node died (its lease expired), from the other node.
    let held = a.job_claim(&claim_req("gone", 2, at(150))).await.unwrap();
    assert_counts_match(&db, &*b, "after a claim of the node that dies").await;
    b.job_release(&lease_of(&held[1]), at(155)).await.unwrap();
    assert_counts_match(&db, &*a, "after a release").await;
    let lease = lease_of(&held[0]);
    let outcome = Outcome::Failed {
        failure: Failure::retryable("interrupted", "the node died"),
        retry_at: Some(at(160)),
    };
    b.job_complete(&lease, outcome, at(160)).await.unwrap();
    assert_counts_match(&db, &*a, "after a rescue").await;

    // The rows of connections that are gone fold into shard 0, and the sums stay.
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO job_counts (state, shard, n)
             SELECT 'succeeded', s, 3 FROM generate_series(1, 31999) s
             WHERE s NOT IN (SELECT pid % 32000 FROM pg_stat_activity) LIMIT 1;
             INSERT INTO job_counts (state, shard, n) VALUES ('succeeded', 0, -3)
             ON CONFLICT (state, shard) DO UPDATE SET n = job_counts.n - 3",
        )
        .await
        .unwrap();
    assert_eq!(rows_of_gone_connections(&client).await, 1);
    a.job_prune(at(0), None).await.unwrap();
    assert_counts_match(&db, &*a, "after folding").await;
    assert_eq!(rows_of_gone_connections(&client).await, 0);

    // Counts of waiting and running jobs written wrong (by a node of an older version,
    // which kept only the finished ones) are set right by the next node that connects.
    client
        .batch_execute(
            "UPDATE job_counts SET n = n + 1000
             WHERE state IN ('scheduled', 'queued', 'running', 'failed')",
        )
        .await
        .unwrap();
    let c = db.store().await;
    assert_counts_match(&db, &*c, "after a node connected").await;
}
