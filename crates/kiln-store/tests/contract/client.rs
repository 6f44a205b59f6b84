//! Client-side transitions (cancel, retry, report, delete) and the event history.

use std::sync::Arc;

use kiln_domain::{Failure, Job, JobState, Step};
use kiln_store::{Outcome, Report, Signal, Store};
use serde_json::json;

use crate::helpers::*;

/// A job of `owner` brought to `state` (through real transitions) at around `at(1_000)`.
async fn job_in(store: &Arc<dyn Store>, owner: kiln_domain::UserId, state: JobState) -> Job {
    let mut s = sub("echo");
    if state == JobState::Scheduled {
        s.delay_ms = Some(1_000_000);
    }
    let job = insert(store, owner, s, at(0)).await;
    if matches!(state, JobState::Scheduled | JobState::Queued) {
        return job;
    }
    // The caller keeps no other queued job around, so the claim takes this one.
    let running = claim_one(store, "n1", at(100)).await;
    assert_eq!(
        running.id, job.id,
        "job_in needs a store without other queued jobs"
    );
    let lease = lease_of(&running);
    let outcome = match state {
        JobState::Running => return running,
        JobState::Succeeded => Outcome::Succeeded(json!("ok")),
        JobState::Failed => Outcome::Failed {
            failure: Failure::retryable("io", "flaky"),
            retry_at: Some(at(1_000_000)),
        },
        JobState::Dead => Outcome::Failed {
            failure: Failure::permanent("bad", "no"),
            retry_at: None,
        },
        JobState::Cancelled => {
            store.job_cancel(None, job.id, at(150)).await.unwrap();
            Outcome::Cancelled
        }
        JobState::Scheduled | JobState::Queued => unreachable!(),
    };
    let done = store.job_complete(&lease, outcome, at(200)).await.unwrap();
    assert_eq!(done.state, state);
    done
}

pub async fn cancel_of_waiting_jobs_is_immediate(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for state in [JobState::Scheduled, JobState::Queued, JobState::Failed] {
        let job = job_in(&store, alice, state).await;
        let events_before = store.event_list(None, job.id).await.unwrap().len();
        let (after, step) = store
            .job_cancel(Some(alice), job.id, at(5_000))
            .await
            .unwrap();
        assert_eq!(step, Step::To(JobState::Cancelled), "from {state:?}");
        assert_eq!(after.state, JobState::Cancelled);
        assert_eq!(after.finished_at, Some(at(5_000)));
        assert_eq!(after.updated_at, at(5_000));
        assert_eq!(get(&store, job.id).await, after);
        let events = store.event_list(None, job.id).await.unwrap();
        assert_eq!(events.len(), events_before + 1);
        assert_eq!(events.last().unwrap().state, JobState::Cancelled);
        assert_eq!(events.last().unwrap().at, at(5_000));
    }
}

pub async fn cancel_of_running_job_requests_and_signals(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let running = job_in(&store, alice, JobState::Running).await;
    let mut signals = store.subscribe();
    let (after, step) = store
        .job_cancel(Some(alice), running.id, at(500))
        .await
        .unwrap();
    assert_eq!(step, Step::CancelRequested);
    assert_eq!(after.state, JobState::Running);
    assert!(after.cancel_requested);
    assert_eq!(after.node.as_deref(), Some("n1"), "the lease is kept");
    assert_eq!(get(&store, running.id).await, after);
    let got = signals.recv().await.unwrap();
    let mut all = vec![got];
    while let Ok(s) = signals.try_recv() {
        all.push(s);
    }
    assert!(
        all.contains(&Signal::CancelRequested(running.id)),
        "signals: {all:?}"
    );
    let events = store.event_list(None, running.id).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].state, JobState::Running);
    assert_eq!(events[2].at, at(500));
    // A repeated request changes nothing more (but signals again).
    let (again, step) = store.job_cancel(None, running.id, at(600)).await.unwrap();
    assert_eq!(step, Step::CancelRequested);
    assert!(again.cancel_requested);
    assert_eq!(store.event_list(None, running.id).await.unwrap().len(), 3);
    assert_eq!(
        signals.recv().await.unwrap(),
        Signal::CancelRequested(running.id)
    );
}

pub async fn cancel_of_terminal_jobs_changes_nothing(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for state in [JobState::Succeeded, JobState::Dead, JobState::Cancelled] {
        let job = job_in(&store, alice, state).await;
        let events_before = store.event_list(None, job.id).await.unwrap();
        let (after, step) = store
            .job_cancel(Some(alice), job.id, at(9_000))
            .await
            .unwrap();
        assert_eq!(step, Step::Unchanged, "from {state:?}");
        assert_eq!(after, job);
        assert_eq!(get(&store, job.id).await, job);
        assert_eq!(store.event_list(None, job.id).await.unwrap(), events_before);
    }
}

pub async fn retry_of_failed_and_dead_jobs(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for state in [JobState::Failed, JobState::Dead] {
        let job = job_in(&store, alice, state).await;
        assert_eq!(job.attempts, 1);
        let retried = store
            .job_retry(Some(alice), job.id, 3, at(7_000))
            .await
            .unwrap();
        assert_eq!(retried.state, JobState::Queued, "from {state:?}");
        assert_eq!(retried.attempts, 1, "attempts never go back");
        assert_eq!(retried.max_attempts, 4, "three more attempts allowed");
        assert_eq!(retried.run_at, at(7_000));
        assert_eq!(retried.finished_at, None);
        assert_eq!(retried.updated_at, at(7_000));
        assert!(!retried.cancel_requested);
        assert_eq!(get(&store, job.id).await, retried);
        let last = store.event_list(None, job.id).await.unwrap().pop().unwrap();
        assert_eq!((last.state, last.at), (JobState::Queued, at(7_000)));
        // It runs again as attempt 2.
        let again = claim_one(&store, "n2", at(7_001)).await;
        assert_eq!(again.id, job.id);
        assert_eq!(again.attempts, 2);
        store
            .job_complete(&lease_of(&again), Outcome::Succeeded(json!(1)), at(7_002))
            .await
            .unwrap();
    }
}

/// A retry's budget counts from the attempts made (the fencing token never goes back), so
/// the job may start exactly `budget` more attempts; a queued job runs at least once, so a
/// budget of 0 still allows the one attempt the retry queues (before: `max_attempts` was
/// left at `attempts`, a record allowing no attempt for a job about to run one).
pub async fn retry_gives_exactly_a_fresh_budget_of_attempts(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for (budget, allowed) in [(2, 2), (1, 1), (0, 1)] {
        let job = job_in(&store, alice, JobState::Dead).await;
        let retried = store
            .job_retry(Some(alice), job.id, budget, at(7_000))
            .await
            .unwrap();
        assert_eq!(retried.attempts, job.attempts, "budget {budget}");
        assert_eq!(
            retried.max_attempts - retried.attempts,
            allowed,
            "budget {budget}"
        );
        assert_eq!(get(&store, job.id).await, retried);
        // Leave nothing claimable behind for the next job_in.
        store.job_cancel(None, job.id, at(7_001)).await.unwrap();
    }
}

pub async fn retry_in_other_states_is_illegal(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for state in [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Cancelled,
    ] {
        let job = job_in(&store, alice, state).await;
        let before = get(&store, job.id).await;
        assert_illegal(store.job_retry(Some(alice), job.id, 1, at(9_000)).await);
        assert_eq!(get(&store, job.id).await, before, "{state:?} unchanged");
        // Leave nothing claimable behind for the next job_in.
        if matches!(state, JobState::Queued | JobState::Scheduled) {
            store.job_cancel(None, job.id, at(9_001)).await.unwrap();
        }
    }
}

/// Nothing runs an `external` job in Kiln, so a cancel request would never be finished:
/// a running one is cancelled at once, in one write with one event (before: it stayed
/// `running` with `cancel_requested`, and the API reported `cancelled` in a second write).
pub async fn cancel_of_a_running_external_job_cancels_it_at_once(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    store
        .job_report(Some(alice), ext.id, report(JobState::Running), at(10))
        .await
        .unwrap();
    let mut signals = store.subscribe();
    let (after, step) = store.job_cancel(Some(alice), ext.id, at(20)).await.unwrap();
    assert_eq!(step, Step::To(JobState::Cancelled));
    assert_eq!(after.state, JobState::Cancelled);
    assert_eq!(after.finished_at, Some(at(20)));
    assert!(!after.cancel_requested);
    assert_eq!(get(&store, ext.id).await, after);
    let events = store.event_list(None, ext.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!((last.state, last.at), (JobState::Cancelled, at(20)));
    assert_eq!(last.message.as_deref(), Some("cancelled"));
    let mut heard = Vec::new();
    while let Ok(signal) = signals.try_recv() {
        heard.push(signal);
    }
    assert!(
        !heard.contains(&Signal::CancelRequested(ext.id)),
        "no attempt to interrupt: {heard:?}"
    );
    // Cancelled is terminal: a second cancel changes nothing.
    let (again, step) = store.job_cancel(None, ext.id, at(30)).await.unwrap();
    assert_eq!((step, again), (Step::Unchanged, after));
}

fn report(state: JobState) -> Report {
    Report {
        state,
        result: None,
        error: None,
    }
}

pub async fn report_moves_external_jobs(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    let running = store
        .job_report(Some(alice), ext.id, report(JobState::Running), at(10))
        .await
        .unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.attempts, 1);
    assert_eq!(running.started_at, Some(at(10)));
    let failed = store
        .job_report(
            Some(alice),
            ext.id,
            Report {
                error: Some(Failure::retryable("x", "y")),
                ..report(JobState::Failed)
            },
            at(20),
        )
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error, Some(Failure::retryable("x", "y")));
    assert_eq!(failed.finished_at, None);
    let done = store
        .job_report(
            None,
            ext.id,
            Report {
                result: Some(json!({"ok": true})),
                ..report(JobState::Succeeded)
            },
            at(30),
        )
        .await;
    // failed → succeeded is not a legal move.
    assert_illegal(done);
    // failed → queued (the owner retries it) keeps the attempt count.
    let requeued = store
        .job_report(Some(alice), ext.id, report(JobState::Queued), at(40))
        .await
        .unwrap();
    assert_eq!(requeued.state, JobState::Queued);
    assert_eq!(requeued.attempts, 1);
    assert_eq!(requeued.run_at, at(40));
    assert_eq!(get(&store, ext.id).await, requeued);
    let ext2 = insert(&store, alice, sub("external"), at(50)).await;
    store
        .job_report(Some(alice), ext2.id, report(JobState::Running), at(60))
        .await
        .unwrap();
    let done = store
        .job_report(
            Some(alice),
            ext2.id,
            Report {
                result: Some(json!({"ok": true})),
                ..report(JobState::Succeeded)
            },
            at(70),
        )
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert_eq!(done.finished_at, Some(at(70)));
    assert_eq!(get(&store, ext2.id).await, done);
    let states: Vec<JobState> = store
        .event_list(None, ext2.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(
        states,
        vec![JobState::Queued, JobState::Running, JobState::Succeeded]
    );

    // A running external job reported cancelled stops at once.
    let ext3 = insert(&store, alice, sub("external"), at(80)).await;
    store
        .job_report(None, ext3.id, report(JobState::Running), at(81))
        .await
        .unwrap();
    let cancelled = store
        .job_report(None, ext3.id, report(JobState::Cancelled), at(82))
        .await
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.finished_at, Some(at(82)));
}

pub async fn report_of_illegal_move_is_illegal(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let ext = insert(&store, alice, sub("external"), at(0)).await;
    // queued → succeeded skips running.
    assert_illegal(
        store
            .job_report(Some(alice), ext.id, report(JobState::Succeeded), at(1))
            .await,
    );
    assert_illegal(
        store
            .job_report(Some(alice), ext.id, report(JobState::Scheduled), at(1))
            .await,
    );
    assert_eq!(get(&store, ext.id).await, ext);
    store
        .job_report(Some(alice), ext.id, report(JobState::Running), at(2))
        .await
        .unwrap();
    store
        .job_report(Some(alice), ext.id, report(JobState::Succeeded), at(3))
        .await
        .unwrap();
    let before = get(&store, ext.id).await;
    // Terminal: nothing leaves it by report.
    for to in [
        JobState::Running,
        JobState::Failed,
        JobState::Dead,
        JobState::Queued,
    ] {
        assert_illegal(
            store
                .job_report(Some(alice), ext.id, report(to), at(4))
                .await,
        );
    }
    assert_eq!(get(&store, ext.id).await, before);
    assert_eq!(store.event_list(None, ext.id).await.unwrap().len(), 3);
}

pub async fn report_of_non_external_job_is_a_conflict(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let job = echo(&store, alice, at(0)).await;
    assert_conflict(
        store
            .job_report(Some(alice), job.id, report(JobState::Running), at(1))
            .await,
    );
    assert_eq!(get(&store, job.id).await, job);
}

pub async fn delete_of_terminal_job_cascades(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let idem = kiln_store::InsertOptions {
        idempotency: Some(kiln_store::Idempotency {
            key: "once".to_owned(),
            request_hash: vec![1; 32],
        }),
        max_queued: None,
        owner_max_active: None,
    };
    let job = store
        .job_insert(new_job(sub("echo"), alice, at(0)), idem.clone())
        .await
        .unwrap()
        .job()
        .clone();
    store.log_append(job.id, "hello\n", at(1)).await.unwrap();
    let running = claim_one(&store, "n1", at(2)).await;
    store
        .job_complete(&lease_of(&running), Outcome::Succeeded(json!(1)), at(3))
        .await
        .unwrap();
    assert_eq!(store.event_list(None, job.id).await.unwrap().len(), 3);

    store.job_delete(Some(alice), job.id).await.unwrap();
    assert_not_found(store.job_get(None, job.id).await);
    assert_not_found(store.event_list(None, job.id).await);
    assert_not_found(store.log_get(None, job.id).await);
    assert_not_found(store.job_delete(None, job.id).await);
    // The idempotency key went with it: the same key makes a new job.
    let again = store
        .job_insert(new_job(sub("echo"), alice, at(10)), idem)
        .await
        .unwrap();
    assert!(
        matches!(&again, kiln_store::Inserted::Created(j) if j.id != job.id),
        "{again:?}"
    );
    // A fresh job with the deleted one's history does not resurrect events.
    assert_eq!(
        store.event_list(None, again.job().id).await.unwrap().len(),
        1
    );
    let stats = store.job_stats().await.unwrap();
    assert_eq!(
        stats.total_submitted, 2,
        "deletes do not un-count submissions"
    );
}

pub async fn delete_of_non_terminal_job_is_a_conflict(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    for state in [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Failed,
    ] {
        let job = job_in(&store, alice, state).await;
        let before = get(&store, job.id).await;
        assert_conflict(store.job_delete(Some(alice), job.id).await);
        assert_eq!(get(&store, job.id).await, before);
        assert!(!store.event_list(None, job.id).await.unwrap().is_empty());
        if state == JobState::Queued {
            store.job_cancel(None, job.id, at(9_000)).await.unwrap();
        }
    }
}

pub async fn every_transition_appends_exactly_one_event(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let mut s = sub("echo");
    s.delay_ms = Some(100);
    let job = insert(&store, alice, s, at(0)).await;
    let mut want: Vec<(JobState, i64, u32)> = vec![(JobState::Scheduled, 0, 0)];

    let check = |want: Vec<(JobState, i64, u32)>| {
        let store = Arc::clone(&store);
        async move {
            let events = store.event_list(Some(alice), job.id).await.unwrap();
            let got: Vec<(JobState, i64, u32)> = events
                .iter()
                .map(|e| {
                    (
                        e.state,
                        e.at.timestamp_millis() - at(0).timestamp_millis(),
                        e.attempt,
                    )
                })
                .collect();
            assert_eq!(got, want);
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
            // The current state is the last event's.
            assert_eq!(get(&store, job.id).await.state, want.last().unwrap().0);
        }
    };
    check(want.clone()).await;

    assert_eq!(store.job_promote_due(at(100)).await.unwrap(), 1);
    want.push((JobState::Queued, 100, 0));
    check(want.clone()).await;

    let running = claim_one(&store, "n1", at(200)).await;
    want.push((JobState::Running, 200, 1));
    check(want.clone()).await;

    store
        .job_progress(&lease_of(&running), 0.5, at(250))
        .await
        .unwrap();
    store
        .lease_renew(
            &[lease_of(&running)],
            at(250),
            std::time::Duration::from_secs(90),
        )
        .await
        .unwrap();
    store.log_append(job.id, "x\n", at(260)).await.unwrap();
    check(want.clone()).await; // none of these is a state change

    store
        .job_complete(
            &lease_of(&running),
            Outcome::Failed {
                failure: Failure::retryable("io", "x"),
                retry_at: Some(at(400)),
            },
            at(300),
        )
        .await
        .unwrap();
    want.push((JobState::Failed, 300, 1));
    check(want.clone()).await;

    // A refused write adds nothing.
    assert_lease_lost(
        store
            .job_complete(&lease_of(&running), Outcome::Cancelled, at(310))
            .await,
    );
    let retried = store.job_retry(None, job.id, 1, at(310)).await.unwrap();
    assert_eq!(retried.attempts, 1);
    want.push((JobState::Queued, 310, 1));
    check(want.clone()).await;

    let again = claim_one(&store, "n2", at(500)).await;
    want.push((JobState::Running, 500, 2));
    check(want.clone()).await;

    store.job_cancel(None, job.id, at(600)).await.unwrap();
    want.push((JobState::Running, 600, 2)); // the cancel request
    check(want.clone()).await;

    store
        .job_complete(&lease_of(&again), Outcome::Cancelled, at(700))
        .await
        .unwrap();
    want.push((JobState::Cancelled, 700, 2));
    check(want.clone()).await;

    store.job_cancel(None, job.id, at(800)).await.unwrap();
    check(want.clone()).await; // terminal cancel: unchanged, no event
}

/// An operator cancels or retries anyone's job; the event names the operator, and the job
/// changes exactly as its owner's own request would change it.
pub async fn operator_cancel_and_retry_name_the_operator_in_the_event(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let queued = job_in(&store, alice, JobState::Queued).await;
    let (cancelled, step) = store
        .job_cancel_by("oscar", queued.id, at(5_000))
        .await
        .unwrap();
    assert_eq!(step, Step::To(JobState::Cancelled));
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.owner, alice, "the job stays its owner's");
    let last = store
        .event_list(None, queued.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.state, last.message.as_deref()),
        (JobState::Cancelled, Some("cancelled by oscar"))
    );

    let dead = job_in(&store, alice, JobState::Dead).await;
    let retried = store
        .job_retry_by("oscar", dead.id, 2, at(6_000))
        .await
        .unwrap();
    assert_eq!((retried.state, retried.max_attempts), (JobState::Queued, 3));
    let last = store
        .event_list(None, dead.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.message.as_deref(), Some("retry requested by oscar"));

    // The state machine still decides: a queued job cannot be retried.
    assert_illegal(store.job_retry_by("oscar", dead.id, 2, at(6_001)).await);
    assert_not_found(
        store
            .job_cancel_by("oscar", kiln_domain::JobId::new(), at(6_002))
            .await,
    );
}
