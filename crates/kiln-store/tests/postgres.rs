//! The PostgreSQL backend against a real server: each test gets its own database
//! ([`TempPostgres`]), dropped afterwards. Without a server the tests print `SKIPPED` and
//! pass, unless `KILN_REQUIRE_POSTGRES=1`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::clock::from_millis;
use kiln_domain::{
    Failure, JobId, JobState, Lease, NewJob, Priority, Role, Step, Timestamp, UserId,
};
use kiln_store::postgres::{PgOptions, PgStore};
use kiln_store::{
    ClaimRequest, Cursor, Idempotency, InsertOptions, Inserted, LeaseFilter, ListQuery, NewToken,
    NewUser, Outcome, Signal, Sort, Store, StoreError, TokenKind, UserPatch,
};
use kiln_testkit::TempPostgres;
use kiln_testkit::factory::new_job;
use serde_json::json;

/// A fixed start so tests never depend on the wall clock.
fn t0() -> Timestamp {
    from_millis(1_700_000_000_000)
}

fn at(ms: i64) -> Timestamp {
    t0() + TimeDelta::milliseconds(ms)
}

/// A fresh database, a store on it and one user; `None` when PostgreSQL is absent.
async fn setup() -> Option<(TempPostgres, Arc<PgStore>, UserId)> {
    let db = TempPostgres::create().await?;
    let store = db.store().await;
    let owner = add_user(&*store, "ada").await;
    Some((db, store, owner))
}

async fn add_user(store: &dyn Store, name: &str) -> UserId {
    store
        .user_insert(
            NewUser {
                username: name.into(),
                password_hash: "hash".into(),
                role: Role::Client,
            },
            t0(),
        )
        .await
        .unwrap()
        .id
}

fn job(owner: UserId, now: Timestamp) -> NewJob {
    new_job(owner, "echo", json!({"n": 1}), now)
}

async fn insert(store: &dyn Store, job: NewJob) -> kiln_domain::Job {
    match store
        .job_insert(job, InsertOptions::default())
        .await
        .unwrap()
    {
        Inserted::Created(job) => job,
        Inserted::Existing(job) => panic!("unexpected existing job {}", job.id),
    }
}

fn claim_req(node: &str, limit: u32, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        types: vec!["echo".into(), "sleep".into()],
        exclude_queues: vec![],
        limit,
        now,
        lease_until: now + TimeDelta::seconds(30),
    }
}

fn lease_of(job: &kiln_domain::Job) -> Lease {
    Lease {
        job_id: job.id,
        attempt: job.attempts,
        node: job.node.clone().unwrap(),
    }
}

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
    assert_eq!(applied, vec![1]);
}

#[tokio::test]
async fn users_and_tokens_round_trip() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let dup = store
        .user_insert(
            NewUser {
                username: "ada".into(),
                password_hash: "x".into(),
                role: Role::Admin,
            },
            t0(),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert_eq!(store.user_count().await.unwrap(), 1);
    let record = store.user_by_name("ada").await.unwrap().unwrap();
    assert_eq!(record.user.id, ada);
    assert_eq!(record.password_hash, "hash");
    assert!(store.user_by_name("bob").await.unwrap().is_none());
    let updated = store
        .user_update(
            ada,
            UserPatch {
                role: Some(Role::Operator),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.role, Role::Operator);
    assert!(matches!(
        store.user_update(UserId(999), UserPatch::default()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.user_list().await.unwrap().len(), 1);

    let token = store
        .token_insert(
            NewToken {
                user: ada,
                hash: vec![1; 32],
                kind: TokenKind::Api,
                name: "ci".into(),
                expires_at: Some(at(60_000)),
            },
            t0(),
        )
        .await
        .unwrap();
    let (user, found) = store.token_lookup(&[1; 32], at(1)).await.unwrap().unwrap();
    assert_eq!((user.id, found.id), (ada, token.id));
    assert!(
        store
            .token_lookup(&[1; 32], at(60_000))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert_eq!(
        store.token_list(ada, TokenKind::Api).await.unwrap(),
        vec![token.clone()]
    );
    assert!(
        store
            .token_list(ada, TokenKind::Session)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .user_update(
            ada,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(
        store.token_lookup(&[1; 32], at(1)).await.unwrap().is_none(),
        "disabled user"
    );
    assert!(matches!(
        store.token_delete(UserId(999), token.id).await,
        Err(StoreError::NotFound)
    ));
    store.token_delete(ada, token.id).await.unwrap();
    store.token_delete_hash(&[9; 32]).await.unwrap();
    assert!(
        store
            .token_list(ada, TokenKind::Api)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn jobs_insert_get_and_list_in_keyset_pages() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut new = job(ada, at(i));
        new.priority = Priority::parse(i % 5).unwrap();
        ids.push(insert(&*store, new).await.id);
    }
    insert(&*store, job(bob, at(100))).await;
    let got = store.job_get(Some(ada), ids[0]).await.unwrap();
    assert_eq!(
        (got.state, got.created_at, got.payload.clone()),
        (JobState::Queued, at(0), json!({"n": 1}))
    );
    assert!(matches!(
        store.job_get(Some(bob), ids[0]).await,
        Err(StoreError::NotFound)
    ));
    for sort in [
        Sort::CreatedDesc,
        Sort::CreatedAsc,
        Sort::PriorityDesc,
        Sort::PriorityAsc,
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        loop {
            let page = store
                .job_list(&ListQuery {
                    owner: Some(ada),
                    sort,
                    limit: 10,
                    cursor,
                    ..ListQuery::default()
                })
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|j| (j.id, j.created_at, j.priority)));
            match page.next_cursor {
                // The cursor survives its string form, as the API passes it.
                Some(next) => cursor = Some(Cursor::decode(&next.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25, "{sort:?}");
        assert_eq!(seen.iter().map(|s| s.0).collect::<HashSet<_>>().len(), 25);
        let mut expected = seen.clone();
        match sort {
            Sort::CreatedDesc => expected.sort_by_key(|a| Reverse((a.1, a.0))),
            Sort::CreatedAsc => expected.sort_by_key(|a| (a.1, a.0)),
            Sort::PriorityDesc => expected.sort_by_key(|a| Reverse((a.2, a.0))),
            Sort::PriorityAsc => expected.sort_by_key(|a| (a.2, a.0)),
        }
        assert_eq!(seen, expected, "{sort:?}");
    }
    let filtered = store
        .job_list(&ListQuery {
            states: vec![JobState::Running, JobState::Queued],
            job_type: Some("echo".into()),
            queue: Some("default".into()),
            created_after: Some(at(10)),
            created_before: Some(at(20)),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 10);
    assert!(filtered.next_cursor.is_none());
}

fn keyed(key: &str, hash: u8) -> InsertOptions {
    InsertOptions {
        idempotency: Some(Idempotency {
            key: key.into(),
            request_hash: vec![hash; 32],
        }),
        max_queued: None,
    }
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_owner_and_checked_by_hash() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let bob = add_user(&*store, "bob").await;
    let first = store
        .job_insert(job(ada, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(first, Inserted::Created(_)));
    let again = store
        .job_insert(job(ada, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(&again, Inserted::Existing(j) if j.id == first.job().id));
    let other = store.job_insert(job(ada, t0()), keyed("k", 2)).await;
    assert!(
        matches!(other, Err(StoreError::Conflict { .. })),
        "{other:?}"
    );
    let bobs = store
        .job_insert(job(bob, t0()), keyed("k", 1))
        .await
        .unwrap();
    assert!(matches!(bobs, Inserted::Created(_)));
    // Racing requests with one key make one job.
    let racers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.job_insert(job(ada, t0()), keyed("race", 7)).await })
    });
    let mut ids = HashSet::new();
    for racer in racers {
        ids.insert(racer.await.unwrap().unwrap().job().id);
    }
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn max_queued_refuses_when_full() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let capped = InsertOptions {
        idempotency: None,
        max_queued: Some(2),
    };
    for _ in 0..2 {
        store
            .job_insert(job(ada, t0()), capped.clone())
            .await
            .unwrap();
    }
    let full = store.job_insert(job(ada, t0()), capped).await;
    assert!(
        matches!(full, Err(StoreError::QueueFull { limit: 2 })),
        "{full:?}"
    );
}

#[tokio::test]
async fn claims_follow_priority_then_run_at_then_id_and_promote_due_work() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    let low = insert(&*store, job(ada, at(0))).await;
    let mut high = job(ada, at(1));
    high.priority = Priority::parse(10).unwrap();
    let high = insert(&*store, high).await;
    let mut later = job(ada, at(2));
    later.run_at = at(500);
    later.state = JobState::Scheduled;
    let later = insert(&*store, later).await;
    let mut other_queue = job(ada, at(3));
    other_queue.queue = kiln_domain::QueueName::parse("slow").unwrap();
    let other_queue = insert(&*store, other_queue).await;
    let mut sleepy = new_job(ada, "external", json!({"name": "x"}), at(4));
    sleepy.priority = Priority::parse(50).unwrap();
    insert(&*store, sleepy).await;

    let mut req = claim_req("n1", 10, at(100));
    req.exclude_queues = vec!["slow".into()];
    let claimed: Vec<JobId> = store
        .job_claim(&req)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        claimed,
        vec![high.id, low.id],
        "external jobs and excluded queues are skipped"
    );
    // At 600 the scheduled job is due and is promoted by the claim itself.
    let mut req = claim_req("n1", 1, at(600));
    req.exclude_queues = vec!["slow".into()];
    let claimed = store.job_claim(&req).await.unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![later.id]
    );
    let running = &claimed[0];
    assert_eq!(
        (running.state, running.attempts, running.node.as_deref()),
        (JobState::Running, 1, Some("n1"))
    );
    assert_eq!(
        running.lease_expires_at,
        Some(at(600) + TimeDelta::seconds(30))
    );
    let events = store.event_list(None, later.id).await.unwrap();
    let states: Vec<_> = events.iter().map(|e| (e.seq, e.state)).collect();
    assert_eq!(
        states,
        vec![
            (1, JobState::Scheduled),
            (2, JobState::Queued),
            (3, JobState::Running)
        ]
    );
    assert!(
        store
            .job_claim(&claim_req("n1", 0, at(600)))
            .await
            .unwrap()
            .is_empty()
    );
    let rest = store
        .job_claim(&claim_req("n1", 10, at(600)))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other_queue.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_for_500_jobs_never_claim_one_twice() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    for i in 0..500 {
        insert(&*node_a, job(ada, at(i))).await;
    }
    let mut claimers = Vec::new();
    for (n, store) in [
        node_a.clone(),
        node_b.clone(),
        node_a.clone(),
        node_b.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .job_claim(&claim_req(&format!("node-{n}"), 7, at(1000)))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        let mine = claimer.await.unwrap();
        per_claimer.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 500, "claims per claimer: {per_claimer:?}");
    assert_eq!(unique.len(), 500);
    let running = store_count(&*node_b, JobState::Running).await;
    assert_eq!(running, 500);
    drop((node_a, node_b));
}

async fn store_count(store: &dyn Store, state: JobState) -> u64 {
    let stats = store.job_stats().await.unwrap();
    stats.by_state.iter().find(|(s, _)| *s == state).unwrap().1
}

#[tokio::test]
async fn a_stale_attempt_cannot_complete_or_report_progress() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let first = store
        .job_claim(&claim_req("n1", 1, at(1)))
        .await
        .unwrap()
        .remove(0);
    let stale = lease_of(&first);
    // The attempt fails with a retry due at 10; the job is claimed again by another node.
    let failed = store
        .job_complete(
            &stale,
            Outcome::Failed {
                failure: Failure::retryable("io", "broken pipe"),
                retry_at: Some(at(10)),
            },
            at(2),
        )
        .await
        .unwrap();
    assert_eq!((failed.state, failed.run_at), (JobState::Failed, at(10)));
    assert_eq!(failed.error.as_ref().unwrap().code, "io");
    assert!(failed.finished_at.is_none() && failed.node.is_none());
    let second = store
        .job_claim(&claim_req("n2", 1, at(10)))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.attempts, 2);
    let done = Outcome::Succeeded(json!("late"));
    assert!(matches!(
        store.job_complete(&stale, done, at(11)).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.job_progress(&stale, 0.5, at(11)).await,
        Err(StoreError::LeaseLost)
    ));
    let fresh = lease_of(&second);
    store.job_progress(&fresh, 7.0, at(12)).await.unwrap();
    assert_eq!(
        store.job_get(None, first.id).await.unwrap().progress,
        1.0,
        "clamped"
    );
    let ok = store
        .job_complete(&fresh, Outcome::Succeeded(json!({"r": 1})), at(13))
        .await
        .unwrap();
    assert_eq!(
        (ok.state, ok.result.clone(), ok.finished_at),
        (JobState::Succeeded, Some(json!({"r": 1})), Some(at(13)))
    );
    // Completing twice is also stale.
    let again = store.job_complete(&fresh, Outcome::Cancelled, at(14)).await;
    assert!(matches!(again, Err(StoreError::LeaseLost)), "{again:?}");
    let events = store.event_list(None, first.id).await.unwrap();
    let trail: Vec<_> = events.iter().map(|e| (e.state, e.attempt)).collect();
    assert_eq!(
        trail,
        vec![
            (JobState::Queued, 0),
            (JobState::Running, 1),
            (JobState::Failed, 1),
            (JobState::Queued, 1),
            (JobState::Running, 2),
            (JobState::Succeeded, 2),
        ]
    );
    assert_eq!(events[2].message.as_deref(), Some("io: broken pipe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_node_reaches_the_worker_on_another() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let mut on_b = node_b.subscribe();
    let mut on_a = node_a.subscribe();
    insert(&*node_a, job(ada, t0())).await;
    let running = node_b
        .job_claim(&claim_req("b", 1, at(1)))
        .await
        .unwrap()
        .remove(0);
    let (after, step) = node_a
        .job_cancel(Some(ada), running.id, at(2))
        .await
        .unwrap();
    assert_eq!(step, Step::CancelRequested);
    assert!(after.cancel_requested);
    assert_eq!(after.state, JobState::Running);
    wait_for(&mut on_b, Signal::CancelRequested(running.id)).await;
    // The writing node hears it locally, and only once (its own NOTIFY echo is skipped).
    wait_for(&mut on_a, Signal::CancelRequested(running.id)).await;
    let renewal = node_b
        .lease_renew(&[lease_of(&running)], at(3))
        .await
        .unwrap();
    assert_eq!(renewal.cancel_requested, vec![running.id]);
    let cancelled = node_b
        .job_complete(&lease_of(&running), Outcome::Cancelled, at(4))
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    wait_for(
        &mut on_a,
        Signal::Changed {
            id: running.id,
            owner: ada,
            state: JobState::Cancelled,
        },
    )
    .await;
    // Cancelling a terminal job changes nothing.
    let (same, step) = node_a.job_cancel(None, running.id, at(5)).await.unwrap();
    assert_eq!((step, same.state), (Step::Unchanged, JobState::Cancelled));
    // A queued job is cancelled at once.
    let queued = insert(&*node_a, job(ada, at(6))).await;
    let (after, step) = node_a
        .job_cancel(Some(ada), queued.id, at(7))
        .await
        .unwrap();
    assert_eq!(
        (step, after.state, after.finished_at),
        (
            Step::To(JobState::Cancelled),
            JobState::Cancelled,
            Some(at(7))
        )
    );
    drop((node_a, node_b));
}

/// Waits up to 5 s for `want` on `rx`, skipping other signals.
async fn wait_for(rx: &mut tokio::sync::broadcast::Receiver<Signal>, want: Signal) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Ok(got) if got == want => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("signal channel closed: {e}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {want:?} within 5 s");
}

#[tokio::test]
async fn a_poll_only_store_still_signals_its_own_subscribers() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let quiet = db
        .store_with(PgOptions {
            listen: false,
            ..PgOptions::default()
        })
        .await;
    let mut on_quiet = quiet.subscribe();
    let mut on_a = node_a.subscribe();
    insert(&*quiet, job(ada, t0())).await;
    wait_for(&mut on_quiet, Signal::JobAvailable).await;
    wait_for(&mut on_a, Signal::JobAvailable).await;
    // Another node's writes are not heard without LISTEN.
    insert(&*node_a, job(ada, t0())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(signal) = on_quiet.try_recv() {
        assert!(
            !matches!(signal, Signal::Changed { .. } | Signal::JobAvailable),
            "{signal:?}"
        );
    }
}

#[tokio::test]
async fn leases_are_found_by_expiry_and_node_and_renewed_while_held() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    for i in 0..3 {
        insert(&*store, job(ada, at(i))).await;
    }
    let mut req = claim_req("n1", 2, at(10));
    req.lease_until = at(100);
    let on_n1 = store.job_claim(&req).await.unwrap();
    let mut req = claim_req("n2", 1, at(10));
    req.lease_until = at(200);
    let on_n2 = store.job_claim(&req).await.unwrap();
    let expired = store
        .lease_find(LeaseFilter::ExpiredAt(at(150)))
        .await
        .unwrap();
    let mut expected: Vec<_> = on_n1.iter().map(lease_of).collect();
    expected.sort_by_key(|l| l.job_id);
    let mut expired_sorted = expired.clone();
    expired_sorted.sort_by_key(|l| l.job_id);
    assert_eq!(expired_sorted, expected);
    let of_n2 = store
        .lease_find(LeaseFilter::Node("n2".into()))
        .await
        .unwrap();
    assert_eq!(of_n2, vec![lease_of(&on_n2[0])]);
    // Renew n1's leases plus a stale one.
    let mut leases: Vec<_> = on_n1.iter().map(lease_of).collect();
    let mut stale = lease_of(&on_n2[0]);
    stale.attempt += 1;
    leases.push(stale.clone());
    let renewal = store.lease_renew(&leases, at(500)).await.unwrap();
    assert_eq!(renewal.lost, vec![stale.job_id]);
    assert!(renewal.cancel_requested.is_empty());
    assert!(
        store
            .lease_find(LeaseFilter::ExpiredAt(at(400)))
            .await
            .unwrap()
            .len()
            == 1
    );
    assert_eq!(
        store
            .job_get(None, on_n1[0].id)
            .await
            .unwrap()
            .lease_expires_at,
        Some(at(500))
    );
}

#[tokio::test]
async fn due_work_is_promoted_and_the_next_due_time_is_known() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    assert_eq!(store.job_next_due().await.unwrap(), None);
    let mut ids = Vec::new();
    for delay in [300, 100, 200] {
        let mut new = job(ada, t0());
        new.run_at = at(delay);
        new.state = JobState::Scheduled;
        ids.push(insert(&*store, new).await.id);
    }
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(100)));
    let mut signals = store.subscribe();
    assert_eq!(store.job_promote_due(at(250)).await.unwrap(), 2);
    wait_for(&mut signals, Signal::JobAvailable).await;
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(300)));
    assert_eq!(
        store.job_get(None, ids[1]).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(
        store.job_get(None, ids[0]).await.unwrap().state,
        JobState::Scheduled
    );
    assert_eq!(store.job_promote_due(at(250)).await.unwrap(), 0);
}

async fn finish(store: &dyn Store, node: &str, now: Timestamp) -> kiln_domain::Job {
    let job = store
        .job_claim(&claim_req(node, 1, now))
        .await
        .unwrap()
        .remove(0);
    store
        .job_complete(&lease_of(&job), Outcome::Succeeded(json!(null)), now)
        .await
        .unwrap()
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
    let running = store
        .job_claim(&claim_req("n", 1, at(40)))
        .await
        .unwrap()
        .remove(0);
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
async fn logs_keep_the_newest_bytes_behind_a_drop_marker() {
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
    store.log_append(id, "one\n", t0()).await.unwrap();
    store.log_append(id, "two\n", t0()).await.unwrap();
    assert_eq!(store.log_get(Some(ada), id).await.unwrap(), "one\ntwo\n");
    store.log_append(id, "three\nfour\n", t0()).await.unwrap();
    // 19 bytes, limit 16: at least 3 must go, so the whole first line goes.
    assert_eq!(
        store.log_get(None, id).await.unwrap(),
        "[... 4 bytes dropped ...]\ntwo\nthree\nfour\n"
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

#[tokio::test]
async fn retry_report_and_delete_follow_the_state_machine() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let running = store
        .job_claim(&claim_req("n", 1, at(1)))
        .await
        .unwrap()
        .remove(0);
    let not_terminal = store.job_delete(Some(ada), running.id).await;
    assert!(
        matches!(not_terminal, Err(StoreError::Conflict { .. })),
        "{not_terminal:?}"
    );
    let illegal = store.job_retry(Some(ada), running.id, 3, at(2)).await;
    assert!(
        matches!(illegal, Err(StoreError::Illegal(_))),
        "{illegal:?}"
    );
    let dead = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::permanent("bad", "input"),
                retry_at: None,
            },
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(
        (dead.state, dead.finished_at),
        (JobState::Dead, Some(at(3)))
    );
    let retried = store.job_retry(Some(ada), dead.id, 3, at(4)).await.unwrap();
    assert_eq!(
        (retried.state, retried.max_attempts, retried.run_at),
        (JobState::Queued, 4, at(4))
    );
    assert!(retried.finished_at.is_none());

    let echo_report = store
        .job_report(
            Some(ada),
            dead.id,
            kiln_store::Report {
                state: JobState::Running,
                result: None,
                error: None,
            },
            at(5),
        )
        .await;
    assert!(
        matches!(echo_report, Err(StoreError::Conflict { .. })),
        "{echo_report:?}"
    );
    let ext = insert(
        &*store,
        new_job(ada, "external", json!({"name": "x"}), t0()),
    )
    .await;
    let report = |state, result| kiln_store::Report {
        state,
        result,
        error: None,
    };
    let r = store
        .job_report(Some(ada), ext.id, report(JobState::Running, None), at(6))
        .await
        .unwrap();
    assert_eq!((r.state, r.attempts), (JobState::Running, 1));
    let illegal = store
        .job_report(Some(ada), ext.id, report(JobState::Scheduled, None), at(7))
        .await;
    assert!(
        matches!(illegal, Err(StoreError::Illegal(_))),
        "{illegal:?}"
    );
    let r = store
        .job_report(
            Some(ada),
            ext.id,
            report(JobState::Succeeded, Some(json!(42))),
            at(8),
        )
        .await
        .unwrap();
    assert_eq!((r.state, r.result), (JobState::Succeeded, Some(json!(42))));
    store.log_append(ext.id, "bye\n", at(9)).await.unwrap();
    store.job_delete(Some(ada), ext.id).await.unwrap();
    assert!(matches!(
        store.event_list(None, ext.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.job_delete(Some(ada), ext.id).await,
        Err(StoreError::NotFound)
    ));
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
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
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
    let running = node_b
        .job_claim(&claim_req("b", 1, at(1)))
        .await
        .unwrap()
        .remove(0);
    node_a.job_cancel(None, running.id, at(2)).await.unwrap();
    wait_for(&mut on_b, Signal::CancelRequested(running.id)).await;
    drop((node_a, node_b, admin));
}

#[tokio::test]
async fn a_retryable_failure_after_a_cancel_request_ends_cancelled() {
    let Some((_db, store, ada)) = setup().await else {
        return;
    };
    insert(&*store, job(ada, t0())).await;
    let running = store
        .job_claim(&claim_req("n", 1, at(1)))
        .await
        .unwrap()
        .remove(0);
    store
        .job_cancel(Some(ada), running.id, at(2))
        .await
        .unwrap();
    let ended = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::retryable("io", "interrupted"),
                retry_at: Some(at(10)),
            },
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(
        (ended.state, ended.finished_at, ended.run_at),
        (JobState::Cancelled, Some(at(3)), running.run_at)
    );
    let last = store
        .event_list(None, running.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        last.message.as_deref(),
        Some("cancelled after io: interrupted")
    );
    assert_eq!(store.job_next_due().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capped_inserts_from_two_nodes_stop_exactly_at_the_cap() {
    let Some((db, node_a, ada)) = setup().await else {
        return;
    };
    let node_b = db.store().await;
    let inserts = (0..40).map(|i| {
        let store = if i % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        tokio::spawn(async move {
            let capped = InsertOptions {
                idempotency: None,
                max_queued: Some(10),
            };
            store.job_insert(job(ada, at(i)), capped).await
        })
    });
    let mut created = 0;
    for insert in inserts {
        match insert.await.unwrap() {
            Ok(Inserted::Created(_)) => created += 1,
            Err(StoreError::QueueFull { limit: 10 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(node_a.job_stats().await.unwrap().total_submitted, 10);
    drop((node_a, node_b));
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
