//! Promotion of due work, retention, stats and signals.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::{Failure, JobState};
use kiln_store::{Outcome, Signal, Stats, Store};
use serde_json::json;

use crate::helpers::*;

pub async fn promote_due_and_next_due(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    assert_eq!(store.job_next_due().await.unwrap(), None);
    let delayed = |ms: u64| {
        let mut s = sub("echo");
        s.delay_ms = Some(ms);
        s
    };
    let a = insert(&store, alice, delayed(1_000), at(0)).await;
    let b = insert(&store, alice, delayed(3_000), at(0)).await;
    let queued = echo(&store, alice, at(0)).await;
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(1_000)));

    // A failed job is due at its retry time.
    let running = claim_one(&store, "n1", at(10)).await;
    assert_eq!(running.id, queued.id);
    store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::retryable("io", "x"),
                retry_at: Some(at(500)),
            },
            at(20),
        )
        .await
        .unwrap();
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(500)));

    assert_eq!(store.job_promote_due(at(499)).await.unwrap(), 0);
    assert_eq!(store.job_promote_due(at(1_000)).await.unwrap(), 2);
    assert_eq!(get(&store, queued.id).await.state, JobState::Queued);
    assert_eq!(get(&store, a.id).await.state, JobState::Queued);
    assert_eq!(get(&store, b.id).await.state, JobState::Scheduled);
    let last = store.event_list(None, a.id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.state, last.at, last.attempt),
        (JobState::Queued, at(1_000), 0)
    );
    let last = store
        .event_list(None, queued.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.state, last.at, last.attempt),
        (JobState::Queued, at(1_000), 1)
    );
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(3_000)));
    // Promoting again finds nothing new.
    assert_eq!(store.job_promote_due(at(1_000)).await.unwrap(), 0);
    assert_eq!(store.job_promote_due(at(3_000)).await.unwrap(), 1);
    assert_eq!(store.job_next_due().await.unwrap(), None);
}

pub async fn prune_by_age_and_keep_max_spares_non_terminal_jobs(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    // Five terminal jobs finished at 1000, 2000, …, 5000.
    let mut done = Vec::new();
    for i in 1..=5_i64 {
        echo(&store, alice, at(0)).await;
        let running = claim_one(&store, "n1", at(i * 1_000 - 1)).await;
        let job = store
            .job_complete(
                &lease_of(&running),
                Outcome::Succeeded(json!(i)),
                at(i * 1_000),
            )
            .await
            .unwrap();
        done.push(job.id);
    }
    // Non-terminal jobs, old and new, in every waiting state.
    let queued = echo(&store, alice, at(0)).await;
    let mut s = sub("echo");
    s.delay_ms = Some(1_000_000);
    let scheduled = insert(&store, alice, s, at(0)).await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    store
        .job_report(
            None,
            ext.id,
            kiln_store::Report {
                state: JobState::Running,
                result: None,
                error: None,
            },
            at(1),
        )
        .await
        .unwrap();
    let survivors = [queued.id, scheduled.id, ext.id];

    let exists = |id| {
        let store = Arc::clone(&store);
        async move { store.job_get(None, id).await.is_ok() }
    };

    // By age: finished strictly before 2500 → the first two.
    assert_eq!(store.job_prune(at(2_500), None).await.unwrap().count, 2);
    assert!(!exists(done[0]).await);
    assert!(!exists(done[1]).await);
    assert!(exists(done[2]).await);
    // Nothing more that old.
    assert_eq!(store.job_prune(at(2_500), None).await.unwrap().count, 0);

    // By count: keep the newest two terminal jobs (4000, 5000).
    assert_eq!(store.job_prune(at(0), Some(2)).await.unwrap().count, 1);
    assert!(!exists(done[2]).await);
    assert!(exists(done[3]).await);
    assert!(exists(done[4]).await);
    assert_eq!(store.job_prune(at(0), Some(2)).await.unwrap().count, 0);

    // Everything terminal, however far in the future: non-terminal jobs stay.
    assert_eq!(
        store
            .job_prune(at(1_000_000_000), Some(0))
            .await
            .unwrap()
            .count,
        2
    );
    for id in survivors {
        assert!(exists(id).await, "non-terminal job {id:?} was pruned");
    }
    let stats = store.job_stats().await.unwrap();
    assert_eq!(
        stats.total_submitted, 8,
        "pruning keeps the submitted count"
    );
    let succeeded = stats
        .by_state
        .iter()
        .find(|(s, _)| *s == JobState::Succeeded)
        .map(|(_, n)| *n);
    assert_eq!(succeeded, Some(0));
}

fn count(stats: &Stats, state: JobState) -> u64 {
    stats
        .by_state
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("no count for {state:?} in {stats:?}"))
}

pub async fn stats_count_jobs_per_state(store: Arc<dyn Store>) {
    let empty = store.job_stats().await.unwrap();
    assert_eq!(empty.total_submitted, 0);
    assert_eq!(empty.by_state.len(), JobState::ALL.len());
    assert!(empty.by_state.iter().all(|(_, n)| *n == 0));
    assert_eq!(empty.avg_duration_ms, 0.0);
    assert_eq!(empty.p95_start_latency_ms, 0.0);

    let alice = user(&store, "alice").await;
    // Succeeded: created 0, started 100, finished 400 (300 ms).
    echo(&store, alice, at(0)).await;
    let r = claim_one(&store, "n1", at(100)).await;
    store
        .job_complete(&lease_of(&r), Outcome::Succeeded(json!(1)), at(400))
        .await
        .unwrap();
    // Succeeded: created 0, started 200, finished 300 (100 ms).
    echo(&store, alice, at(0)).await;
    let r = claim_one(&store, "n1", at(200)).await;
    store
        .job_complete(&lease_of(&r), Outcome::Succeeded(json!(2)), at(300))
        .await
        .unwrap();
    // Dead.
    echo(&store, alice, at(0)).await;
    let r = claim_one(&store, "n1", at(500)).await;
    store
        .job_complete(
            &lease_of(&r),
            Outcome::Failed {
                failure: Failure::permanent("x", "y"),
                retry_at: None,
            },
            at(600),
        )
        .await
        .unwrap();
    // Running, queued, scheduled, cancelled.
    echo(&store, alice, at(0)).await;
    claim_one(&store, "n1", at(700)).await;
    echo(&store, alice, at(0)).await;
    let mut s = sub("echo");
    s.delay_ms = Some(10_000);
    insert(&store, alice, s, at(0)).await;
    let c = echo(&store, alice, at(0)).await;
    // (the queued job above is older, so cancel this one by id)
    store.job_cancel(None, c.id, at(800)).await.unwrap();

    let stats = store.job_stats().await.unwrap();
    assert_eq!(stats.total_submitted, 7);
    assert_eq!(count(&stats, JobState::Succeeded), 2);
    assert_eq!(count(&stats, JobState::Dead), 1);
    assert_eq!(count(&stats, JobState::Running), 1);
    assert_eq!(count(&stats, JobState::Queued), 1);
    assert_eq!(count(&stats, JobState::Scheduled), 1);
    assert_eq!(count(&stats, JobState::Cancelled), 1);
    assert_eq!(count(&stats, JobState::Failed), 0);
    assert_eq!(stats.avg_duration_ms, 200.0);
    // Start latencies of the finished jobs 100, 200, 500 (the running job's 700 is not
    // sampled until it finishes): the nearest-rank p95 is the largest.
    assert_eq!(stats.p95_start_latency_ms, 500.0);
}

/// The next signal, or a panic after a generous deadline (no signal is not a hang).
async fn next(rx: &mut tokio::sync::broadcast::Receiver<Signal>) -> Signal {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a signal within 10 s")
        .expect("an open signal channel")
}

pub async fn subscribe_hears_job_available_and_changed(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut rx = store.subscribe();

    let job = echo(&store, alice, at(0)).await;
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort_by_key(|s| format!("{s:?}"));
    let mut want = vec![Signal::JobAvailable, changed(&job, 1)];
    want.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(got, want);

    let running = claim_one(&store, "n1", at(10)).await;
    assert_eq!(next(&mut rx).await, changed(&running, 2));
    let done = store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(20))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, changed(&done, 3));

    // A scheduled job is not available yet; it becomes so when promoted.
    let mut s = sub("echo");
    s.delay_ms = Some(1_000);
    let later = insert(&store, alice, s, at(30)).await;
    assert_eq!(next(&mut rx).await, changed(&later, 1));
    // A refused write publishes nothing.
    assert_not_found(
        store
            .job_cancel(Some(kiln_domain::UserId(9_999)), later.id, at(40))
            .await,
    );
    assert_eq!(store.job_promote_due(at(1_030)).await.unwrap(), 1);
    let promoted = get(&store, later.id).await;
    assert_eq!(promoted.state, JobState::Queued);
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort_by_key(|s| format!("{s:?}"));
    let mut want = vec![Signal::JobAvailable, changed(&promoted, 2)];
    want.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(got, want);
    assert!(rx.try_recv().is_err(), "no further signals");
}

/// Inserts `n` jobs from `sub()` concurrently (a backend may batch them) at `now`.
async fn insert_many(
    store: &Arc<dyn Store>,
    owner: kiln_domain::UserId,
    n: usize,
    sub: fn() -> kiln_domain::job::Submission,
    now: kiln_domain::Timestamp,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let store = Arc::clone(store);
        set.spawn(async move { insert(&store, owner, sub(), now).await });
    }
    while let Some(done) = set.join_next().await {
        done.expect("insert task");
    }
}

pub async fn promote_and_prune_work_past_any_internal_chunk_size(store: Arc<dyn Store>) {
    const N: usize = 2_500;
    let alice = user(&store, "alice").await;
    insert_many(
        &store,
        alice,
        N,
        || {
            let mut s = sub("echo");
            s.delay_ms = Some(1_000);
            s
        },
        at(0),
    )
    .await;
    assert_eq!(store.job_promote_due(at(1_000)).await.unwrap(), N as u64);
    assert_eq!(store.job_next_due().await.unwrap(), None);
    let stats = store.job_stats().await.unwrap();
    assert_eq!(count(&stats, JobState::Queued), N as u64);
    assert_eq!(count(&stats, JobState::Scheduled), 0);

    // Finish them all: cancelling a queued job is terminal at once.
    let page = kiln_store::ListQuery {
        limit: 100,
        ..Default::default()
    };
    let mut query = page.clone();
    loop {
        let got = store.job_list(&query).await.unwrap();
        for job in &got.items {
            store.job_cancel(None, job.id, at(2_000)).await.unwrap();
        }
        match got.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        count(&store.job_stats().await.unwrap(), JobState::Cancelled),
        N as u64
    );
    insert_many(&store, alice, 3, || sub("echo"), at(3_000)).await;

    assert_eq!(
        store.job_prune(at(0), Some(100)).await.unwrap().count,
        (N - 100) as u64
    );
    let stats = store.job_stats().await.unwrap();
    assert_eq!(count(&stats, JobState::Cancelled), 100);
    assert_eq!(count(&stats, JobState::Queued), 3);
    assert_eq!(store.job_prune(at(2_001), None).await.unwrap().count, 100);
    let stats = store.job_stats().await.unwrap();
    assert_eq!(count(&stats, JobState::Cancelled), 0);
    assert_eq!(count(&stats, JobState::Queued), 3);
    assert_eq!(stats.total_submitted, N as u64 + 3);
}

pub async fn prune_by_age_and_count_in_one_call(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut done = Vec::new();
    for i in 1..=5_i64 {
        let job = echo(&store, alice, at(0)).await;
        store.job_cancel(None, job.id, at(i * 1_000)).await.unwrap();
        done.push(job.id);
    }
    // Two are older than 2500; of the other three, the oldest is beyond the newest two.
    assert_eq!(store.job_prune(at(2_500), Some(2)).await.unwrap().count, 3);
    for (i, id) in done.iter().enumerate() {
        assert_eq!(store.job_get(None, *id).await.is_ok(), i >= 3, "job {i}");
    }
}

/// `job_stats` per state equals the jobs a listing finds in that state, after each kind of
/// change a job can go through (the counts are kept incrementally, not counted).
pub async fn prune_names_the_pruned_jobs_that_had_artifacts(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let results = [
        json!({"n": 1, "artifacts": [{"name": "a.npy", "bytes": 1}]}),
        json!({"n": 2}),
        json!("ok"),
        json!({"n": 4, "artifacts": []}),
    ];
    let mut ids = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        echo(&store, alice, at(0)).await;
        let running = claim_one(&store, "n1", at(1)).await;
        store
            .job_complete(
                &lease_of(&running),
                Outcome::Succeeded(result),
                at(10 + i as i64),
            )
            .await
            .unwrap();
        ids.push(running.id);
    }
    // A cancelled job has no result, so no artifacts.
    let cancelled = echo(&store, alice, at(0)).await;
    store.job_cancel(None, cancelled.id, at(20)).await.unwrap();

    let pruned = store.job_prune(at(1_000), None).await.unwrap();

    assert_eq!(pruned.count, 5);
    let mut with = pruned.with_artifacts;
    with.sort();
    let mut want = vec![ids[0], ids[3]];
    want.sort();
    assert_eq!(with, want);
}

pub async fn counts_follow_every_kind_of_change(store: Arc<dyn Store>) {
    async fn check(store: &Arc<dyn Store>, step: &str) {
        let stats = store.job_stats().await.unwrap();
        for state in JobState::ALL {
            let listed = store
                .job_list(&kiln_store::ListQuery {
                    states: vec![state],
                    limit: 100,
                    ..kiln_store::ListQuery::default()
                })
                .await
                .unwrap()
                .items
                .len() as u64;
            assert_eq!(count(&stats, state), listed, "{state:?} after {step}");
        }
    }
    let alice = user(&store, "alice").await;
    for _ in 0..4 {
        echo(&store, alice, at(0)).await;
    }
    let mut later = sub("echo");
    later.delay_ms = Some(1_000);
    let scheduled = insert(&store, alice, later, at(0)).await;
    check(&store, "inserts").await;

    let done = claim_one(&store, "n1", at(10)).await;
    let retried = claim_one(&store, "n1", at(10)).await;
    let dead = claim_one(&store, "n1", at(10)).await;
    check(&store, "claims").await;
    let complete = |job: &kiln_domain::Job, outcome: Outcome| {
        let (store, lease) = (store.clone(), lease_of(job));
        async move { store.job_complete(&lease, outcome, at(20)).await.unwrap() }
    };
    complete(&done, Outcome::Succeeded(json!(1))).await;
    let failure = Failure::retryable("io", "x");
    complete(
        &retried,
        Outcome::Failed {
            failure: failure.clone(),
            retry_at: Some(at(30)),
        },
    )
    .await;
    complete(
        &dead,
        Outcome::Failed {
            failure,
            retry_at: None,
        },
    )
    .await;
    check(&store, "completions").await;

    let queued = echo(&store, alice, at(40)).await;
    store.job_cancel(None, queued.id, at(41)).await.unwrap();
    store.job_retry(None, dead.id, 1, at(42)).await.unwrap();
    check(&store, "cancel and retry").await;

    assert_eq!(store.job_promote_due(at(2_000)).await.unwrap(), 2);
    assert_eq!(get(&store, scheduled.id).await.state, JobState::Queued);
    check(&store, "promotion").await;

    store.job_delete(None, queued.id).await.unwrap();
    check(&store, "delete").await;
    assert_eq!(store.job_prune(at(1_000_000), None).await.unwrap().count, 1);
    check(&store, "prune").await;
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 6);
}
