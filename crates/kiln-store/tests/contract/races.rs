//! Concurrent callers on one store: what a single writer serialises for SQLite must hold
//! for a backend with real concurrent transactions too (PostgreSQL).

use std::collections::HashSet;
use std::sync::Arc;

use kiln_domain::JobState;
use kiln_store::{Idempotency, InsertOptions, Inserted, Outcome, Store, StoreError};
use serde_json::json;

use crate::helpers::*;

pub async fn concurrent_idempotent_inserts_create_one_job(store: Arc<dyn Store>) {
    const CALLERS: usize = 24;
    let alice = user(&store, "alice").await;
    let opts = InsertOptions {
        idempotency: Some(Idempotency {
            key: "race".to_owned(),
            request_hash: vec![7; 32],
        }),
        max_queued: None,
        owner_max_active: None,
    };
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let store = Arc::clone(&store);
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            store
                .job_insert(new_job(sub("echo"), alice, at(i as i64)), opts)
                .await
        }));
    }
    let (mut created, mut existing) = (Vec::new(), Vec::new());
    for task in tasks {
        // A backend may report the loser of a unique-key race as a transient error;
        // anything else is a broken contract.
        match task.await.expect("insert task") {
            Ok(Inserted::Created(job)) => created.push(job.id),
            Ok(Inserted::Existing(job)) => existing.push(job.id),
            Err(e) if e.is_transient() => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one job created");
    assert!(existing.iter().all(|id| *id == created[0]));
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 1);
}

pub async fn concurrent_inserts_respect_max_queued(store: Arc<dyn Store>) {
    const CALLERS: usize = 40;
    const CAP: u64 = 10;
    let alice = user(&store, "alice").await;
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .job_insert(
                    new_job(sub("echo"), alice, at(i as i64)),
                    InsertOptions {
                        idempotency: None,
                        max_queued: Some(CAP),
                        owner_max_active: None,
                    },
                )
                .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("insert task") {
            Ok(Inserted::Created(_)) => ok += 1,
            Ok(Inserted::Existing(job)) => panic!("no key, yet existing: {job:?}"),
            Err(StoreError::QueueFull { limit: CAP }) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    let stats = store.job_stats().await.unwrap();
    assert!(ok <= CAP, "{ok} inserted past a cap of {CAP}");
    assert_eq!(stats.total_submitted, ok);
    assert_eq!(ok, CAP, "the cap is reached, not undershot");
}

pub async fn concurrent_inserts_never_pass_an_owners_quota(store: Arc<dyn Store>) {
    const CALLERS: usize = 40;
    const QUOTA: u64 = 7;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let store = Arc::clone(&store);
        let owner = if i % 2 == 0 { alice } else { bob };
        tasks.push(tokio::spawn(async move {
            let opts = InsertOptions {
                owner_max_active: Some(QUOTA),
                ..InsertOptions::default()
            };
            let inserted = store
                .job_insert(new_job(sub("echo"), owner, at(i as i64)), opts)
                .await;
            (owner, inserted)
        }));
    }
    let (mut by_alice, mut by_bob) = (0, 0);
    for task in tasks {
        match task.await.expect("insert task") {
            (owner, Ok(Inserted::Created(_))) if owner == alice => by_alice += 1,
            (_, Ok(Inserted::Created(_))) => by_bob += 1,
            (_, Ok(Inserted::Existing(job))) => panic!("no key, yet existing: {job:?}"),
            (_, Err(StoreError::ActiveQuota { limit: QUOTA })) => {}
            (_, Err(e)) if e.is_transient() => {}
            (_, Err(e)) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(
        (by_alice, by_bob),
        (QUOTA, QUOTA),
        "each owner reaches the quota, no more"
    );
}

pub async fn concurrent_completions_of_one_attempt_succeed_once(store: Arc<dyn Store>) {
    const CALLERS: usize = 16;
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(1)).await;
    let lease = lease_of(&running);
    let mut tasks = Vec::new();
    for i in 0..CALLERS {
        let store = Arc::clone(&store);
        let lease = lease.clone();
        tasks.push(tokio::spawn(async move {
            store
                .job_complete(&lease, Outcome::Succeeded(json!(i)), at(10 + i as i64))
                .await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("complete task") {
            Ok(job) => winners.push(job),
            Err(StoreError::LeaseLost) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one completion wins");
    let stored = get(&store, running.id).await;
    assert_eq!(stored, winners[0]);
    assert_eq!(stored.state, JobState::Succeeded);
    let events = store.event_list(None, running.id).await.unwrap();
    assert_eq!(events.len(), 3, "one completion event: {events:?}");
}

pub async fn claims_racing_cancels_leave_consistent_jobs(store: Arc<dyn Store>) {
    const JOBS: usize = 200;
    let alice = user(&store, "alice").await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(echo(&store, alice, at(0)).await.id);
    }
    let canceller = {
        let store = Arc::clone(&store);
        let ids = ids.clone();
        tokio::spawn(async move {
            for id in ids {
                store
                    .job_cancel(Some(alice), id, at(5))
                    .await
                    .expect("cancel");
            }
        })
    };
    let mut claimers = Vec::new();
    for c in 0..4 {
        let store = Arc::clone(&store);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .job_claim(&claim_req(&format!("n{c}"), 3, at(5)))
                    .await
                    .expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    canceller.await.expect("canceller");
    let mut claimed = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.expect("claimer") {
            assert!(claimed.insert(id), "claimed twice: {id:?}");
        }
    }
    for id in ids {
        let job = get(&store, id).await;
        let events = store.event_list(None, id).await.unwrap();
        if claimed.contains(&id) {
            // Claimed first, then the cancel found it running.
            assert_eq!(job.state, JobState::Running);
            assert!(job.cancel_requested, "{job:?}");
            assert_eq!(events.len(), 3);
        } else {
            assert_eq!(job.state, JobState::Cancelled);
            assert_eq!(events.len(), 2);
            assert_eq!(job.attempts, 0);
        }
        assert_eq!(events.last().unwrap().state, job.state);
    }
}
