//! Scheduling and priorities.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);

fn ms(job: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn a_scheduled_job_never_starts_before_run_at() {
    let app = TestApp::spawn().await;
    let delayed = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": "d", "delay_ms": 400}),
        )
        .await;
    let run_at = (chrono::Utc::now() + chrono::TimeDelta::milliseconds(300)).to_rfc3339();
    let at = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "payload": "a", "run_at": run_at}),
        )
        .await;
    for id in [&delayed, &at] {
        let job = app.job(&app.admin, id).await;
        assert_eq!(job["state"], "scheduled");
    }
    for id in [&delayed, &at] {
        let done = app.wait_state(&app.admin, id, "succeeded", LONG).await;
        assert!(ms(&done, "started_at") >= ms(&done, "run_at"), "{done}");
        assert!(ms(&done, "run_at") > ms(&done, "created_at"));
    }
    app.stop().await;
}

#[tokio::test]
async fn higher_priority_runs_first_when_slots_are_scarce() {
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--max-concurrency".into(), "1".into()],
        ..Opts::default()
    })
    .await;
    let blocker = app
        .submit_ok(&app.admin, json!({"type": "sleep", "payload": {"ms": 300}}))
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
