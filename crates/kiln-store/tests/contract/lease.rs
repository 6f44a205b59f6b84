//! Fenced writes of an attempt (completion, progress, renewal) and the lease lookup.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::{Failure, JobState, Lease};
use kiln_store::{ClaimRequest, LeaseFilter, Outcome, Renewal, Store};
use serde_json::json;

use crate::helpers::*;

pub async fn stale_attempt_or_wrong_node_is_lease_lost_and_changes_nothing(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let first = claim_one(&store, "n1", at(10)).await;
    // The first attempt fails; a second attempt on another node takes over.
    store
        .job_complete(
            &lease_of(&first),
            Outcome::Failed {
                failure: Failure::lease_lost(),
                retry_at: Some(at(20)),
            },
            at(15),
        )
        .await
        .unwrap();
    let second = claim_one(&store, "n2", at(20)).await;
    assert_eq!(second.attempts, 2);
    store
        .job_progress(&lease_of(&second), 0.25, at(21))
        .await
        .unwrap();
    let before = get(&store, job.id).await;
    let events_before = store.event_list(None, job.id).await.unwrap();

    let stale = lease_of(&first); // attempt 1 on n1
    let wrong_node = Lease {
        node: "n1".to_owned(),
        ..lease_of(&second)
    };
    let future_attempt = Lease {
        attempt: 3,
        ..lease_of(&second)
    };
    for lease in [&stale, &wrong_node, &future_attempt] {
        assert_lease_lost(
            store
                .job_complete(lease, Outcome::Succeeded(json!("stale")), at(30))
                .await,
        );
        assert_lease_lost(
            store
                .job_complete(
                    lease,
                    Outcome::Failed {
                        failure: Failure::permanent("x", "y"),
                        retry_at: None,
                    },
                    at(30),
                )
                .await,
        );
        assert_lease_lost(store.job_complete(lease, Outcome::Cancelled, at(30)).await);
        assert_lease_lost(store.job_progress(lease, 0.9, at(30)).await);
    }
    assert_eq!(get(&store, job.id).await, before, "the row is unchanged");
    assert_eq!(store.event_list(None, job.id).await.unwrap(), events_before);

    // The current holder still completes; afterwards its own lease is gone too.
    let done = store
        .job_complete(&lease_of(&second), Outcome::Succeeded(json!(1)), at(40))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_lease_lost(
        store
            .job_complete(&lease_of(&second), Outcome::Succeeded(json!(2)), at(41))
            .await,
    );
    assert_lease_lost(store.job_progress(&lease_of(&second), 0.5, at(41)).await);
    assert_eq!(get(&store, job.id).await.result, Some(json!(1)));
}

pub async fn complete_succeeded(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(100)).await;
    let done = store
        .job_complete(
            &lease_of(&running),
            Outcome::Succeeded(result_value()),
            at(350),
        )
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(result_value()));
    assert_eq!(done.progress, 1.0);
    assert_eq!(done.finished_at, Some(at(350)));
    assert_eq!(done.updated_at, at(350));
    assert_eq!(done.attempts, 1);
    assert_eq!(done.node, None);
    assert_eq!(done.lease_expires_at, None);
    assert_eq!(get(&store, done.id).await, done);
    let events = store.event_list(None, done.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.seq, last.state, last.at, last.attempt),
        (3, JobState::Succeeded, at(350), 1)
    );
    assert_eq!(last.node.as_deref(), Some("n1"));
}

pub async fn complete_failed_with_retry_at_is_failed(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(100)).await;
    let failure = Failure::retryable("upstream_503", "try later");
    let failed = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: failure.clone(),
                retry_at: Some(at(5_000)),
            },
            at(200),
        )
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error, Some(failure));
    assert_eq!(failed.run_at, at(5_000));
    assert_eq!(failed.finished_at, None, "failed is not terminal");
    assert_eq!(failed.node, None);
    assert_eq!(failed.lease_expires_at, None);
    assert_eq!(failed.attempts, 1);
    assert_eq!(get(&store, failed.id).await, failed);
    let last = store
        .event_list(None, failed.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.state, last.at, last.attempt),
        (JobState::Failed, at(200), 1)
    );
    assert_eq!(store.job_next_due().await.unwrap(), Some(at(5_000)));
}

pub async fn complete_failed_without_retry_at_is_dead(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(100)).await;
    let failure = Failure::permanent("bad_input", "no");
    let dead = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: failure.clone(),
                retry_at: None,
            },
            at(200),
        )
        .await
        .unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.error, Some(failure));
    assert_eq!(dead.finished_at, Some(at(200)));
    assert_eq!(dead.node, None);
    assert_eq!(get(&store, dead.id).await, dead);
    let last = store
        .event_list(None, dead.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.state, JobState::Dead);
    assert_eq!(store.job_next_due().await.unwrap(), None);
}

pub async fn complete_cancelled(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(100)).await;
    let (requested, _) = store
        .job_cancel(Some(alice), running.id, at(150))
        .await
        .unwrap();
    assert!(requested.cancel_requested);
    let cancelled = store
        .job_complete(&lease_of(&running), Outcome::Cancelled, at(200))
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.finished_at, Some(at(200)));
    assert_eq!(cancelled.node, None);
    assert_eq!(get(&store, cancelled.id).await, cancelled);
    let last = store
        .event_list(None, cancelled.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((last.state, last.at), (JobState::Cancelled, at(200)));
}

pub async fn progress_is_fenced_and_clamped(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(100)).await;
    let lease = lease_of(&running);
    store.job_progress(&lease, 0.5, at(110)).await.unwrap();
    let job = get(&store, running.id).await;
    assert_eq!(job.progress, 0.5);
    assert_eq!(job.updated_at, at(110));
    store.job_progress(&lease, 7.0, at(120)).await.unwrap();
    assert_eq!(get(&store, running.id).await.progress, 1.0);
    store.job_progress(&lease, -3.0, at(130)).await.unwrap();
    assert_eq!(get(&store, running.id).await.progress, 0.0);
    // Progress is not a state change: no event.
    assert_eq!(store.event_list(None, running.id).await.unwrap().len(), 2);
}

pub async fn lease_renew_extends_and_reports_lost_and_cancel_requested(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for _ in 0..3 {
        echo(&store, alice, at(0)).await;
    }
    let claimed = store
        .job_claim(&ClaimRequest {
            lease: Duration::from_secs(1),
            per_owner: None,
            per_owner_exempt: Vec::new(),
            ..claim_req("n1", 3, at(10))
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let (keep, cancel, lose) = (&claimed[0], &claimed[1], &claimed[2]);
    store.job_cancel(None, cancel.id, at(20)).await.unwrap();
    store
        .job_complete(&lease_of(lose), Outcome::Succeeded(json!(null)), at(30))
        .await
        .unwrap();
    let leases: Vec<Lease> = claimed.iter().map(lease_of).collect();
    let mut stale = lease_of(keep);
    stale.attempt += 1;
    let mut all = leases.clone();
    all.push(stale);

    let day = Duration::from_secs(86_400);
    let mut renewal = store.lease_renew(&all, at(40), day).await.unwrap();
    renewal.lost.sort_by_key(|id| id.0);
    let mut lost = vec![lose.id, keep.id];
    lost.sort_by_key(|id| id.0);
    assert_eq!(
        renewal,
        Renewal {
            lost,
            cancel_requested: vec![cancel.id],
        }
    );
    // A day from now by the store's clock: later than the claim's one-second lease,
    // whichever clock that is (the caller's on SQLite, the database's on PostgreSQL).
    for held in [keep, cancel] {
        let renewed = get(&store, held.id).await.lease_expires_at.unwrap();
        let claimed_until = held.lease_expires_at.unwrap();
        assert!(
            renewed >= claimed_until + chrono::TimeDelta::hours(23),
            "{renewed} after {claimed_until}"
        );
    }
    assert_eq!(get(&store, lose.id).await.lease_expires_at, None);
    assert_eq!(
        store.lease_renew(&[], at(50), day).await.unwrap(),
        Renewal::default()
    );
}

/// The leases that have expired by `now` (by the store's clock: see
/// [`ClaimRequest::lease`]).
async fn expired(store: &Arc<dyn Store>, now: kiln_domain::Timestamp) -> Vec<Lease> {
    let mut leases = store.lease_find(LeaseFilter::Expired(now)).await.unwrap();
    leases.sort_by_key(|l| l.job_id.0);
    leases
}

pub async fn lease_find_expired_and_by_node(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for _ in 0..3 {
        echo(&store, alice, at(0)).await;
    }
    // A lease that has ended by the next instant of any clock, and two that last a day.
    let claim = |node: &'static str, lease: Duration| {
        let store = Arc::clone(&store);
        async move {
            store
                .job_claim(&ClaimRequest {
                    lease,
                    per_owner: None,
                    per_owner_exempt: Vec::new(),
                    ..claim_req(node, 1, at(10))
                })
                .await
                .unwrap()
                .remove(0)
        }
    };
    let day = Duration::from_secs(86_400);
    let a = claim("n1", Duration::ZERO).await;
    let b = claim("n2", day).await;
    let c = claim("n1", day).await;

    assert_eq!(expired(&store, at(11)).await, vec![lease_of(&a)]);
    assert_eq!(expired(&store, at(3_600_000)).await, vec![lease_of(&a)]);

    let mut by_n1 = store
        .lease_find(LeaseFilter::Node("n1".to_owned()))
        .await
        .unwrap();
    by_n1.sort_by_key(|l| l.job_id.0);
    let mut want = vec![lease_of(&a), lease_of(&c)];
    want.sort_by_key(|l| l.job_id.0);
    assert_eq!(by_n1, want);
    assert_eq!(
        store
            .lease_find(LeaseFilter::Node("n2".to_owned()))
            .await
            .unwrap(),
        vec![lease_of(&b)]
    );
    assert!(
        store
            .lease_find(LeaseFilter::Node("n9".to_owned()))
            .await
            .unwrap()
            .is_empty()
    );

    // An external job reported running has no lease for anyone to rescue.
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
            at(5),
        )
        .await
        .unwrap();
    assert_eq!(expired(&store, at(3_600_000)).await, vec![lease_of(&a)]);

    // Finished jobs hold no lease.
    store
        .job_complete(&lease_of(&a), Outcome::Succeeded(json!(null)), at(20))
        .await
        .unwrap();
    assert!(expired(&store, at(3_600_000)).await.is_empty());
    assert_eq!(
        store
            .lease_find(LeaseFilter::Node("n1".to_owned()))
            .await
            .unwrap(),
        vec![lease_of(&c)]
    );
}

pub async fn retryable_failure_after_a_cancel_request_cancels_the_job(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(1)).await;
    let (_, step) = store.job_cancel(Some(alice), job.id, at(2)).await.unwrap();
    assert_eq!(step, kiln_domain::Step::CancelRequested);
    // The attempt fails retryably before it noticed the cancel request.
    let failure = Failure::retryable("io", "interrupted");
    let ended = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: failure.clone(),
                retry_at: Some(at(10)),
            },
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(ended.state, JobState::Cancelled, "the cancel request wins");
    assert_eq!(ended.finished_at, Some(at(3)));
    assert_eq!(ended.error, Some(failure));
    assert_eq!(get(&store, job.id).await, ended);
    let last = store.event_list(None, job.id).await.unwrap().pop().unwrap();
    assert_eq!((last.state, last.at), (JobState::Cancelled, at(3)));
    // Nothing runs it again.
    assert_eq!(store.job_next_due().await.unwrap(), None);
    assert!(
        store
            .job_claim(&claim_req("n2", 10, at(100)))
            .await
            .unwrap()
            .is_empty()
    );

    // Without a cancel request the same failure is an ordinary retry.
    let other = echo(&store, alice, at(0)).await;
    let running = claim_one(&store, "n1", at(200)).await;
    assert_eq!(running.id, other.id);
    let failed = store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::retryable("io", "x"),
                retry_at: Some(at(300)),
            },
            at(201),
        )
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.run_at, at(300));
}

pub async fn rescue_of_an_expired_lease_fences_out_the_old_worker(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let running = store
        .job_claim(&ClaimRequest {
            lease: Duration::ZERO,
            per_owner: None,
            per_owner_exempt: Vec::new(),
            ..claim_req("dead-node", 1, at(10))
        })
        .await
        .unwrap()
        .remove(0);
    // Another node sees the lease expire and fails the attempt (retry due at 2000).
    let expired = expired(&store, at(1_500)).await;
    assert_eq!(expired, vec![lease_of(&running)]);
    let rescued = store
        .job_complete(
            &expired[0],
            Outcome::Failed {
                failure: Failure::lease_lost(),
                retry_at: Some(at(2_000)),
            },
            at(1_500),
        )
        .await
        .unwrap();
    assert_eq!(rescued.state, JobState::Failed);
    assert_eq!(rescued.error, Some(Failure::lease_lost()));
    assert!(self::expired(&store, at(1_500)).await.is_empty());
    // The next attempt runs elsewhere; the old worker comes back and is fenced out.
    let second = claim_one(&store, "n2", at(2_000)).await;
    assert_eq!((second.id, second.attempts), (job.id, 2));
    let renewal = store
        .lease_renew(&[lease_of(&running)], at(2_050), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(renewal.lost, vec![job.id]);
    assert_lease_lost(
        store
            .job_complete(
                &lease_of(&running),
                Outcome::Succeeded(json!("late")),
                at(2_100),
            )
            .await,
    );
    let stored = get(&store, job.id).await;
    assert_eq!(stored, second);
    assert_eq!(stored.lease_expires_at, second.lease_expires_at);
}

pub async fn release_queues_an_unstarted_attempt_again_in_its_place(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let first = echo(&store, alice, at(0)).await;
    let second = echo(&store, alice, at(1)).await;
    let mut claimed = store.job_claim(&claim_req("n1", 2, at(10))).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let (a, b) = (claimed.remove(0), claimed.remove(0));
    assert_eq!((a.id, b.id), (first.id, second.id));

    // Another node's lease, or a stale attempt, releases nothing.
    let wrong = Lease {
        node: "n2".to_owned(),
        ..lease_of(&a)
    };
    assert_lease_lost(store.job_release(&wrong, at(20)).await);
    assert_eq!(get(&store, a.id).await.state, JobState::Running);

    // Released: queued again, the attempt not spent, first in line again.
    let released = store.job_release(&lease_of(&a), at(20)).await.unwrap();
    assert_eq!(released.state, JobState::Queued);
    assert_eq!(
        (released.attempts, released.max_attempts),
        (1, a.max_attempts + 1)
    );
    assert_eq!((released.node, released.started_at), (None, None));
    let events = store.event_list(None, a.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.state, last.message.as_deref()),
        (JobState::Queued, Some("released before it started"))
    );
    assert_eq!(last.node.as_deref(), Some("n1"));
    assert_lease_lost(store.job_release(&lease_of(&a), at(21)).await);
    let again = echo(&store, alice, at(2)).await;
    let next = claim_one(&store, "n2", at(30)).await;
    assert_eq!(next.id, a.id, "it keeps its place ahead of later jobs");
    assert_eq!(next.attempts, 2);
    assert_lease_lost(
        store
            .job_complete(&lease_of(&a), Outcome::Succeeded(json!(1)), at(31))
            .await,
    );

    // A cancel requested while it waited ends it instead.
    store.job_cancel(None, b.id, at(40)).await.unwrap();
    let cancelled = store.job_release(&lease_of(&b), at(41)).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.finished_at, Some(at(41)));
    assert_eq!(get(&store, again.id).await.state, JobState::Queued);
}

/// A deferred attempt: `scheduled` for later with its attempt not spent, claimed again only
/// once due; a cancel requested meanwhile ends it; a stale lease defers nothing.
pub async fn defer_schedules_an_attempt_again_without_spending_it(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    let a = claim_one(&store, "n1", at(10)).await;
    assert_eq!(a.id, job.id);
    let wrong = Lease {
        node: "n2".to_owned(),
        ..lease_of(&a)
    };
    assert_lease_lost(store.job_defer(&wrong, at(5_000), "x", at(20)).await);

    let deferred = store
        .job_defer(&lease_of(&a), at(5_000), "model_unavailable: open", at(20))
        .await
        .unwrap();
    assert_eq!(deferred.state, JobState::Scheduled);
    assert_eq!(deferred.run_at, at(5_000));
    assert_eq!(
        (deferred.attempts, deferred.max_attempts),
        (1, a.max_attempts + 1)
    );
    let events = store.event_list(None, a.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.state, last.message.as_deref()),
        (
            JobState::Scheduled,
            Some("deferred: model_unavailable: open")
        )
    );
    assert!(
        store
            .job_claim(&claim_req("n1", 1, at(4_000)))
            .await
            .unwrap()
            .is_empty(),
        "not before it is due"
    );
    let again = claim_one(&store, "n1", at(5_000)).await;
    assert_eq!((again.id, again.attempts), (a.id, 2));

    // Asked to cancel while running: a deferral ends it.
    store
        .job_cancel(Some(alice), a.id, at(5_001))
        .await
        .unwrap();
    let ended = store
        .job_defer(&lease_of(&again), at(9_000), "x", at(5_002))
        .await
        .unwrap();
    assert_eq!(ended.state, JobState::Cancelled);
}
