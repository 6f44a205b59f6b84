//! Scheduling and priorities.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kiln_domain::{Clock, ManualClock, SystemClock};
use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);

fn ms(job: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// The node's time stands still until the test moves it, so "not yet due" does not depend
/// on how fast this machine submits and polls.
#[tokio::test]
async fn a_scheduled_job_starts_when_the_clock_reaches_run_at_and_not_before() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(Opts {
        clock: Some(clock.clone()),
        ..Opts::default()
    })
    .await;
    let delayed = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": "d", "delay_ms": 400}),
        )
        .await;
    let run_at = (clock.now() + TimeDelta::milliseconds(300)).to_rfc3339();
    let at = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": "a", "run_at": run_at}),
        )
        .await;
    // A job submitted later and due now has run: the worker has looked at the queue since.
    let probe = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": "p"}))
        .await;
    app.wait_state(&app.admin, &probe, "succeeded", LONG).await;
    for id in [&delayed, &at] {
        assert_eq!(app.job(&app.admin, id).await["state"], "scheduled");
    }

    clock.advance(TimeDelta::milliseconds(300));
    let done = app.wait_state(&app.admin, &at, "succeeded", LONG).await;
    assert_eq!(ms(&done, "started_at"), ms(&done, "run_at"), "{done}");
    assert_eq!(app.job(&app.admin, &delayed).await["state"], "scheduled");

    clock.advance(TimeDelta::milliseconds(100));
    let done = app
        .wait_state(&app.admin, &delayed, "succeeded", LONG)
        .await;
    assert_eq!(ms(&done, "started_at"), ms(&done, "run_at"), "{done}");
    assert_eq!(ms(&done, "run_at") - ms(&done, "created_at"), 400);
    app.stop().await;
}

#[tokio::test]
async fn higher_priority_runs_first_when_slots_are_scarce() {
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--max-concurrency".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    // The one slot stays busy until every job below is queued.
    let blocker = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    app.wait_state(&app.admin, &blocker, "running", LONG).await;
    let mut ids = Vec::new();
    // Each job sleeps 5 ms, so the one slot's jobs start in distinct milliseconds (no-op
    // jobs run several per millisecond, and `started_at` could not order them).
    for priority in [-10, 50, 0, 100, -100] {
        let id = app
            .submit_ok(
                &app.admin,
                json!({"type": "sleep", "payload": {"ms": 5}, "priority": priority}),
            )
            .await;
        ids.push((priority, id));
    }
    assert!(app.cancel(&app.admin, &blocker).await.status.is_success());
    let mut started = Vec::new();
    for (priority, id) in &ids {
        let job = app.wait_state(&app.admin, id, "succeeded", LONG).await;
        started.push((ms(&job, "started_at"), *priority));
    }
    started.sort();
    let order: Vec<i64> = started.into_iter().map(|(_, p)| p).collect();
    assert_eq!(order, [100, 50, 0, -10, -100]);
    app.stop().await;
}
