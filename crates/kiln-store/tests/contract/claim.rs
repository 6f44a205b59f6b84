//! `job_claim`: order, what it skips, what it sets, and a race of many claimers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::{Failure, JobId, JobState, UserId};
use kiln_store::{ClaimRequest, Outcome, QueueDepth, Signal, Store};
use serde_json::json;

use crate::helpers::*;

pub async fn claim_order_is_priority_then_run_at_then_id(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mk = |priority: i64, delay: Option<u64>| {
        let mut s = sub("echo");
        s.priority = Some(priority);
        s.delay_ms = delay;
        s
    };
    // Inserted in an order unlike the claim order.
    let low = insert(&store, alice, mk(-10, None), at(0)).await;
    let mid_late = insert(&store, alice, mk(0, Some(500)), at(0)).await; // run_at 500
    let mid_early_b = insert(&store, alice, mk(0, None), at(100)).await; // run_at 100
    let mid_early_a = insert(&store, alice, mk(0, None), at(100)).await; // same run_at
    let high = insert(&store, alice, mk(50, None), at(200)).await;
    let (tie_first, tie_second) = if mid_early_a.id.0 < mid_early_b.id.0 {
        (mid_early_a.id, mid_early_b.id)
    } else {
        (mid_early_b.id, mid_early_a.id)
    };

    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(claim_one(&store, "n1", at(1_000)).await.id);
    }
    assert_eq!(
        order,
        vec![high.id, tie_first, tie_second, mid_late.id, low.id]
    );
    assert!(
        store
            .job_claim(&claim_req("n1", 10, at(1_000)))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn claim_sets_running_attempts_started_at_and_lease(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let req = ClaimRequest {
        lease: Duration::from_secs(59),
        per_owner: None,
        per_owner_exempt: Vec::new(),
        ..claim_req("node-a", 5, at(1_000))
    };
    let claimed = store.job_claim(&req).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.id, job.id);
    assert_eq!(c.state, JobState::Running);
    assert_eq!(c.attempts, 1);
    assert_eq!(c.started_at, Some(at(1_000)));
    assert_eq!(c.node.as_deref(), Some("node-a"));
    assert!(c.lease_expires_at.is_some(), "a lease: {c:?}");
    assert_eq!(c.finished_at, None);
    assert!(!c.cancel_requested);
    assert_eq!(
        &get(&store, job.id).await,
        c,
        "returned job is the stored one"
    );

    let events = store.event_list(None, job.id).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].seq, 2);
    assert_eq!(events[1].state, JobState::Running);
    assert_eq!(events[1].attempt, 1);
    assert_eq!(events[1].at, at(1_000));
    assert_eq!(events[1].node.as_deref(), Some("node-a"));

    // A second attempt (after a retryable failure) counts up again.
    store
        .job_complete(
            &lease_of(c),
            Outcome::Failed {
                failure: Failure::retryable("io", "flaky"),
                retry_at: Some(at(2_000)),
            },
            at(1_500),
        )
        .await
        .unwrap();
    let again = claim_one(&store, "node-b", at(2_000)).await;
    assert_eq!(again.id, job.id);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.started_at, Some(at(2_000)));
    assert_eq!(again.node.as_deref(), Some("node-b"));
}

pub async fn claim_skips_future_jobs_excluded_queues_and_unknown_types(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.delay_ms = Some(10_000);
    let future = insert(&store, alice, s, at(0)).await;
    let mut s = sub("echo");
    s.queue = Some("paused".to_owned());
    s.priority = Some(100);
    let paused = insert(&store, alice, s, at(0)).await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    let mut s = sub("sleep");
    s.priority = Some(90);
    let sleeper = insert(&store, alice, s, at(0)).await;
    let plain = echo(&store, alice, at(0)).await;

    // A failed job whose retry is not yet due.
    let mut s = sub("echo");
    s.priority = Some(-100);
    let flaky = insert(&store, alice, s, at(0)).await;
    let req = ClaimRequest {
        types: vec!["echo".to_owned()],
        exclude_queues: vec!["paused".to_owned()],
        exclude_owners: Vec::new(),
        ..claim_req("n1", 100, at(1_000))
    };
    let claimed: Vec<JobId> = store
        .job_claim(&req)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, vec![plain.id, flaky.id]);
    let flaky = get(&store, flaky.id).await;
    store
        .job_complete(
            &lease_of(&flaky),
            Outcome::Failed {
                failure: Failure::retryable("io", "flaky"),
                retry_at: Some(at(50_000)),
            },
            at(1_100),
        )
        .await
        .unwrap();

    assert!(store.job_claim(&req).await.unwrap().is_empty());
    assert_eq!(get(&store, future.id).await.state, JobState::Scheduled);
    assert_eq!(get(&store, flaky.id).await.state, JobState::Failed);
    assert_eq!(get(&store, paused.id).await.state, JobState::Queued);
    assert_eq!(get(&store, ext.id).await.state, JobState::Queued);
    assert_eq!(get(&store, sleeper.id).await.state, JobState::Queued);

    // Asking for `sleep` (and not excluding `paused`) takes those, never `external`.
    let req = ClaimRequest {
        types: vec!["sleep".to_owned(), "echo".to_owned(), "nonsense".to_owned()],
        ..claim_req("n1", 100, at(2_000))
    };
    let claimed: Vec<JobId> = store
        .job_claim(&req)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, vec![paused.id, sleeper.id]);
    assert_eq!(get(&store, ext.id).await.state, JobState::Queued);
}

pub async fn claim_promotes_due_scheduled_and_failed_jobs(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.delay_ms = Some(5_000);
    let scheduled = insert(&store, alice, s, at(0)).await;
    assert!(
        store
            .job_claim(&claim_req("n1", 10, at(4_999)))
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = claim_one(&store, "n1", at(5_000)).await;
    assert_eq!(claimed.id, scheduled.id);
    let states: Vec<JobState> = store
        .event_list(None, scheduled.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        states,
        vec![JobState::Scheduled, JobState::Queued, JobState::Running]
    );

    store
        .job_complete(
            &lease_of(&claimed),
            Outcome::Failed {
                failure: Failure::retryable("io", "flaky"),
                retry_at: Some(at(9_000)),
            },
            at(6_000),
        )
        .await
        .unwrap();
    assert!(
        store
            .job_claim(&claim_req("n1", 10, at(8_999)))
            .await
            .unwrap()
            .is_empty()
    );
    let again = claim_one(&store, "n1", at(9_000)).await;
    assert_eq!(again.id, scheduled.id);
    assert_eq!(again.attempts, 2);
}

pub async fn claim_with_zero_limit_or_no_types_claims_nothing(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    assert!(
        store
            .job_claim(&claim_req("n1", 0, at(1)))
            .await
            .unwrap()
            .is_empty()
    );
    let req = ClaimRequest {
        types: Vec::new(),
        ..claim_req("n1", 10, at(1))
    };
    assert!(store.job_claim(&req).await.unwrap().is_empty());
    assert_eq!(get(&store, job.id).await.state, JobState::Queued);
}

pub async fn concurrent_claimers_claim_each_job_exactly_once(store: Arc<dyn Store>) {
    const JOBS: usize = 500;
    const CLAIMERS: usize = 16;
    let alice = user(&store, "alice").await;
    let mut all = HashSet::new();
    for i in 0..JOBS {
        let mut s = sub("echo");
        s.priority = Some((i % 7) as i64);
        all.insert(insert(&store, alice, s, at(0)).await.id);
    }

    let mut tasks = Vec::new();
    for c in 0..CLAIMERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{c}");
            let mut mine = Vec::new();
            let mut now = at(1_000);
            loop {
                let claimed = store
                    .job_claim(&claim_req(&node, 1 + (c as u32 % 4), now))
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return mine;
                }
                for job in claimed {
                    assert_eq!(job.state, JobState::Running);
                    assert_eq!(job.attempts, 1, "claimed twice: {job:?}");
                    assert_eq!(job.node.as_deref(), Some(node.as_str()));
                    mine.push(job.id);
                }
                now += TimeDelta::milliseconds(1);
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for task in tasks {
        for id in task.await.expect("claimer task") {
            total += 1;
            assert!(seen.insert(id), "job {id:?} claimed more than once");
        }
    }
    assert_eq!(total, JOBS);
    assert_eq!(seen, all, "every job claimed");
    let stats = store.job_stats().await.unwrap();
    let running = stats
        .by_state
        .iter()
        .find(|(s, _)| *s == JobState::Running)
        .map(|(_, n)| *n);
    assert_eq!(running, Some(JOBS as u64));
}

pub async fn claimers_racing_promotion_and_inserts_claim_each_job_once(store: Arc<dyn Store>) {
    const SCHEDULED: usize = 200;
    const LATE: usize = 100;
    let alice = user(&store, "alice").await;
    let mut all = HashSet::new();
    for i in 0..SCHEDULED {
        let mut s = sub("echo");
        s.delay_ms = Some(1 + (i as u64 % 50));
        all.insert(insert(&store, alice, s, at(0)).await.id);
    }
    // Jobs keep arriving while the claimers and a promoter run.
    let inserter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..LATE {
                ids.push(echo(&store, alice, at(10)).await.id);
            }
            ids
        })
    };
    let promoter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut n = 0;
            for step in 0..60 {
                n += store.job_promote_due(at(step)).await.expect("promote");
            }
            n
        })
    };
    let mut claimers = Vec::new();
    for c in 0..8 {
        let store = Arc::clone(&store);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut idle = 0;
            // Keep claiming until the work has dried up for a while (time is at 1000,
            // past every run_at, so all that remains is what is not inserted yet).
            while idle < 200 {
                let got = store
                    .job_claim(&claim_req(&format!("n{c}"), 2, at(1_000)))
                    .await
                    .expect("claim");
                if got.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                } else {
                    idle = 0;
                    mine.extend(got.into_iter().map(|j| j.id));
                }
            }
            mine
        }));
    }
    all.extend(inserter.await.expect("inserter"));
    let promoted = promoter.await.expect("promoter");
    assert!(promoted <= SCHEDULED as u64);
    let mut seen = HashSet::new();
    for claimer in claimers {
        for id in claimer.await.expect("claimer") {
            assert!(seen.insert(id), "claimed twice: {id:?}");
        }
    }
    // Whatever the claimers gave up on before it arrived is still queued, never lost.
    let leftovers = store
        .job_claim(&claim_req("sweeper", 1_000, at(1_000)))
        .await
        .unwrap();
    for job in leftovers {
        assert!(seen.insert(job.id), "claimed twice: {:?}", job.id);
    }
    assert_eq!(seen, all);
    for id in &all {
        let job = get(&store, *id).await;
        assert_eq!((job.state, job.attempts), (JobState::Running, 1));
    }
}

pub async fn complete_and_claim_completes_then_claims_the_next_job(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let first = echo(&store, alice, at(0)).await;
    let second = echo(&store, alice, at(1)).await;
    let third = echo(&store, alice, at(2)).await;
    let running = claim_one(&store, "n1", at(10)).await;
    assert_eq!(running.id, first.id);

    // Completion and claim together: the first succeeds, the second runs on n1.
    let (done, next) = store
        .job_complete_and_claim(
            &lease_of(&running),
            Outcome::Succeeded(json!("ok")),
            at(20),
            Some(&claim_req("n1", 1, at(20))),
        )
        .await
        .unwrap();
    let done = done.unwrap();
    assert_eq!((done.id, done.state), (first.id, JobState::Succeeded));
    assert_eq!(done.result, Some(json!("ok")));
    assert_eq!(next.len(), 1);
    let next = &next[0];
    assert_eq!(
        (next.id, next.state, next.attempts),
        (second.id, JobState::Running, 1)
    );
    assert_eq!(next.node.as_deref(), Some("n1"));
    assert_eq!(next.started_at, Some(at(20)));
    let states: Vec<_> = store
        .event_list(None, first.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(states.last(), Some(&JobState::Succeeded));

    // A stale lease is refused (nothing written for it) and the claim still happens.
    let (stale, claimed) = store
        .job_complete_and_claim(
            &lease_of(&running),
            Outcome::Succeeded(json!("late")),
            at(30),
            Some(&claim_req("n2", 1, at(30))),
        )
        .await
        .unwrap();
    assert_lease_lost(stale);
    assert_eq!(get(&store, first.id).await.result, Some(json!("ok")));
    assert_eq!(
        claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![third.id]
    );

    // Without a claim request nothing is claimed; with nothing queued, nothing either.
    let (done, none) = store
        .job_complete_and_claim(&lease_of(next), Outcome::Cancelled, at(40), None)
        .await
        .unwrap();
    assert_eq!(done.unwrap().state, JobState::Cancelled);
    assert!(none.is_empty());
    let (done, none) = store
        .job_complete_and_claim(
            &lease_of(&claimed[0]),
            Outcome::Succeeded(json!(3)),
            at(50),
            Some(&claim_req("n1", 1, at(50))),
        )
        .await
        .unwrap();
    assert_eq!(done.unwrap().state, JobState::Succeeded);
    assert!(none.is_empty());
}

/// Claimable jobs behind a long run of unclaimable ones at the head of the order (types the
/// node does not run, excluded queues) are still found, in order, for small and large limits.
pub async fn claim_finds_jobs_behind_many_unclaimable_ones(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for i in 0..60 {
        let mut s = if i % 2 == 0 {
            sub("external")
        } else {
            let mut s = sub("echo");
            s.queue = Some("paused".to_owned());
            s
        };
        s.priority = Some(50);
        insert(&store, alice, s, at(0)).await;
    }
    let wanted: Vec<JobId> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(echo(&store, alice, at(0)).await.id);
        }
        ids
    };
    let req = |limit| ClaimRequest {
        types: vec!["echo".to_owned()],
        exclude_queues: vec!["paused".to_owned()],
        exclude_owners: Vec::new(),
        ..claim_req("n1", limit, at(1_000))
    };
    let ids = |jobs: Vec<kiln_domain::Job>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.job_claim(&req(1)).await.unwrap()), wanted[..1]);
    assert_eq!(ids(store.job_claim(&req(100)).await.unwrap()), wanted[1..]);
    assert!(store.job_claim(&req(100)).await.unwrap().is_empty());
}

/// A paused queue keeps accepting jobs, but neither a claim nor a completion's next claim
/// takes them; resuming wakes the workers and its jobs are claimed again. The control says
/// who changed it and when, and queue depths see the waiting job.
pub async fn a_paused_queue_is_skipped_by_claims_until_resumed(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.queue = Some("reports".to_owned());
    s.priority = Some(100);
    let report = insert(&store, alice, s, at(0)).await;
    let first = echo(&store, alice, at(1)).await;
    let second = echo(&store, alice, at(2)).await;
    assert!(store.queue_controls().await.unwrap().is_empty());

    let control = store
        .queue_set_paused("reports", true, "oscar", at(5))
        .await
        .unwrap();
    assert_eq!(
        (
            control.name.as_str(),
            control.paused,
            control.changed_by.as_str()
        ),
        ("reports", true, "oscar")
    );
    assert_eq!(control.changed_at, at(5));
    assert_eq!(store.queue_controls().await.unwrap(), vec![control]);
    // A job of a paused queue is still accepted.
    let mut s = sub("echo");
    s.queue = Some("reports".to_owned());
    let accepted = insert(&store, alice, s, at(6)).await;
    assert_eq!(accepted.state, JobState::Queued);

    let running = claim_one(&store, "n1", at(10)).await;
    assert_eq!(
        running.id, first.id,
        "the paused queue's higher priority is skipped"
    );
    let (_, next) = store
        .job_complete_and_claim(
            &lease_of(&running),
            Outcome::Succeeded(json!("ok")),
            at(11),
            Some(&claim_req("n1", 5, at(11))),
        )
        .await
        .unwrap();
    let next: Vec<JobId> = next.iter().map(|j| j.id).collect();
    assert_eq!(next, vec![second.id], "a completion's claim skips it too");
    assert!(
        store
            .job_claim(&claim_req("n1", 5, at(12)))
            .await
            .unwrap()
            .is_empty()
    );
    let depths = store.queue_depths().await.unwrap();
    assert!(
        depths.contains(&QueueDepth {
            queue: "reports".to_owned(),
            state: JobState::Queued,
            n: 2
        }),
        "{depths:?}"
    );

    let mut signals = store.subscribe();
    let resumed = store
        .queue_set_paused("reports", false, "olga", at(20))
        .await
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.changed_by, "olga");
    assert_eq!(signals.recv().await.unwrap(), Signal::JobAvailable);
    let claimed: Vec<JobId> = store
        .job_claim(&claim_req("n1", 5, at(21)))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, vec![report.id, accepted.id]);
    assert_eq!(store.queue_controls().await.unwrap(), vec![resumed]);
}

pub async fn claim_skips_the_jobs_of_excluded_owners(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    // Alice's jobs come first in the claim order (priority), then Bob's.
    let mut mine = Vec::new();
    for _ in 0..3 {
        let mut s = sub("echo");
        s.priority = Some(50);
        mine.push(insert(&store, alice, s, at(0)).await.id);
    }
    let bobs = echo(&store, bob, at(1)).await;
    let req = |limit, exclude: Vec<UserId>| ClaimRequest {
        exclude_owners: exclude,
        ..claim_req("n1", limit, at(10))
    };
    let claimed = store.job_claim(&req(2, vec![alice])).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![bobs.id], "only Bob's job; Alice's wait");
    // Nobody excluded: Alice's jobs in order.
    let claimed = store.job_claim(&req(5, Vec::new())).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids, mine);
}

pub async fn claim_takes_at_most_per_owner_of_one_owner_but_any_of_the_exempt(
    store: Arc<dyn Store>,
) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    // In claim order: three of Alice's, then three of Carol's, then Bob's.
    let mut ids = std::collections::HashMap::new();
    for (i, owner) in [alice, alice, alice, carol, carol, carol, bob, bob]
        .into_iter()
        .enumerate()
    {
        let job = echo(&store, owner, at(i as i64)).await;
        ids.entry(owner).or_insert_with(Vec::new).push(job.id);
    }
    let req = ClaimRequest {
        per_owner: Some(2),
        per_owner_exempt: vec![carol],
        ..claim_req("n1", 6, at(100))
    };
    let claimed = store.job_claim(&req).await.unwrap();
    let got: Vec<JobId> = claimed.iter().map(|j| j.id).collect();
    let want: Vec<JobId> = [&ids[&alice][..2], &ids[&carol][..], &ids[&bob][..1]].concat();
    assert_eq!(
        got, want,
        "two of Alice's, all of Carol's, then Bob's up to the limit"
    );
    // The one of Alice's left behind is still queued, first in line.
    let next = store.job_claim(&claim_req("n1", 1, at(101))).await.unwrap();
    assert_eq!(next[0].id, ids[&alice][2]);
}
