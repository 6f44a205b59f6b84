//! A database outage while a worker stores an attempt's outcome.
//!
//! The store below wraps a real SQLite store and refuses completions with a transient error
//! for longer than a worker used to retry (5 tries). The finished attempt's outcome must be
//! kept and stored once the store answers again: the job succeeds with its first attempt's
//! result, instead of the outcome being dropped, the lease expiring, and the job being
//! rescued and run a second time.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

#[path = "common/flaky.rs"]
mod flaky;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flaky::Flaky;
use kiln_domain::job::Submission;
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, JobState, NewJob, Role, SystemClock, UserId};
use kiln_kernels::Registry;
use kiln_store::{InsertOptions, NewUser, Store};
use kiln_testkit::db::TempSqlite;
use kiln_testkit::wait::wait_until;
use kiln_worker::{Worker, WorkerConfig};
use serde_json::json;

#[test]
fn the_outage_error_is_transient() {
    let flaky = Flaky::new(TempSqlite::new().store, 1);
    let err = flaky.outage().unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        flaky.outage().is_ok(),
        "one failure, then the store answers"
    );
}

/// The user who owns the tests' jobs.
async fn owner(store: &Arc<dyn Store>) -> UserId {
    let user = NewUser {
        username: "ada".into(),
        password_hash: "x".into(),
        role: Role::Admin,
    };
    store.user_insert(user, SystemClock.now()).await.unwrap().id
}

/// An `echo` job of `owner`'s with `payload`.
fn echo(owner: UserId, payload: serde_json::Value) -> NewJob {
    let submission = Submission {
        job_type: "echo".into(),
        payload,
        ..Submission::default()
    };
    NewJob::parse(
        submission,
        owner,
        Role::Admin,
        &Catalogue::default(),
        SystemClock.now(),
    )
    .unwrap()
}

/// Runs on Tokio's real clock: the SQLite store answers from its own OS thread, and a paused
/// clock would auto-advance through timers (this test's deadline among them) while the
/// runtime idles waiting for it.
#[tokio::test]
async fn an_outcome_survives_a_store_outage_longer_than_a_few_retries() {
    // More failures than the 5 tries a worker used to make before dropping the outcome, and
    // few enough that the worker's doubling pauses from 50 ms (50 + 100 + … + 3200 ms ≈ 6.4 s)
    // keep the test short.
    const FAILURES: u32 = 7;

    let db = TempSqlite::new();
    let flaky = Arc::new(Flaky::new(db.store.clone(), FAILURES));
    let store: Arc<dyn Store> = Arc::clone(&flaky) as Arc<dyn Store>;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let owner = owner(&store).await;
    let catalogue = Catalogue::default();
    let config = WorkerConfig {
        node_id: "node-a".into(),
        heartbeat_interval: Duration::from_millis(100),
        rescue_interval: Duration::from_millis(100),
        progress_flush: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        config,
        Arc::clone(&store),
        Registry::default(),
        Arc::new(catalogue.clone()),
        Arc::clone(&clock),
    )
    .start()
    .await
    .unwrap();

    let payload = json!({"kept": "through the outage"});
    let job = echo(owner, payload.clone());
    let id = job.id;
    store
        .job_insert(job, InsertOptions::default())
        .await
        .unwrap();

    let job = wait_until(
        &format!("job {id} to be succeeded"),
        Duration::from_secs(60),
        || async {
            let job = store.job_get(None, id).await.unwrap();
            if job.state == JobState::Succeeded {
                Ok(job)
            } else {
                Err((job.state, job.attempts))
            }
        },
    )
    .await;

    assert_eq!(job.result, Some(payload));
    assert_eq!(job.attempts, 1, "the work was redone: {job:?}");
    let calls = flaky.complete_and_claim_calls.load(Ordering::SeqCst);
    assert!(
        calls > FAILURES,
        "job_complete_and_claim called {calls} times: the worker stopped retrying"
    );
    assert_eq!(flaky.fail_completions.load(Ordering::SeqCst), 0);
    let states: Vec<JobState> = store
        .event_list(None, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert!(
        !states.contains(&JobState::Failed),
        "the attempt was rescued: {states:?}"
    );

    worker.shutdown(Duration::from_secs(1)).await;
}

/// An executor that panics (here: on the completion path) frees its slot and stores the
/// attempt as a retryable failure: the job runs again, and the node keeps working.
#[tokio::test]
async fn a_panicking_executor_frees_its_slot_and_the_job_runs_again() {
    let db = TempSqlite::new();
    let flaky = Arc::new(Flaky::new(db.store.clone(), 0));
    flaky.panic_completions.store(1, Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::clone(&flaky) as Arc<dyn Store>;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let owner = owner(&store).await;
    let catalogue = Catalogue::default();
    let metrics = Arc::new(kiln_metrics::Metrics::default());
    let config = WorkerConfig {
        node_id: "node-a".into(),
        max_concurrency: 1,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        config,
        Arc::clone(&store),
        Registry::default(),
        Arc::new(catalogue.clone()),
        Arc::clone(&clock),
    )
    .with_metrics(Arc::clone(&metrics))
    .start()
    .await
    .unwrap();
    let first = echo(owner, json!(1));
    let id = first.id;
    store
        .job_insert(first, InsertOptions::default())
        .await
        .unwrap();

    let job = wait_until(
        &format!("job {id} to succeed"),
        Duration::from_secs(60),
        || async {
            let job = store.job_get(None, id).await.unwrap();
            if job.state == JobState::Succeeded {
                Ok(job)
            } else {
                Err((job.state, job.attempts))
            }
        },
    )
    .await;
    assert_eq!(job.attempts, 2, "the panicked attempt is retried: {job:?}");
    assert_eq!(
        job.error.as_ref().map(|e| e.code.as_str()),
        Some("worker_panic")
    );
    // The only slot is free again: another job runs.
    let second = echo(owner, json!(2));
    let id = second.id;
    store
        .job_insert(second, InsertOptions::default())
        .await
        .unwrap();
    wait_until(
        "the next job to succeed",
        Duration::from_secs(60),
        || async {
            let job = store.job_get(None, id).await.unwrap();
            (job.state == JobState::Succeeded)
                .then_some(())
                .ok_or(job.state)
        },
    )
    .await;
    worker.shutdown(Duration::from_secs(1)).await;
}
