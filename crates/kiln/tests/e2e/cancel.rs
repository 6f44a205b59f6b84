//! Cancel in every state, as `docs/design.md` ("Cancel") describes it.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);

async fn one_slot() -> TestApp {
    TestApp::spawn_with(Opts {
        flags: vec!["--max-concurrency".into(), "1".into()],
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn cancel_of_a_running_sleep_stops_it_within_the_response() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    app.wait_state(&app.admin, &id, "running", LONG).await;
    // 200 with `cancelled` (not 202) means the server saw the attempt stop within its own
    // one-second wait; no wall-clock limit here.
    let resp = app.cancel(&app.admin, &id).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["state"], "cancelled");
    let events = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/events"))
        .await
        .json();
    let states: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"queued"));
    assert_eq!(states.last(), Some(&"cancelled"));
    app.stop().await;
}

#[tokio::test]
async fn cancel_of_a_queued_job_is_immediate_and_it_never_runs() {
    let app = one_slot().await;
    let blocker = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    app.wait_state(&app.admin, &blocker, "running", LONG).await;
    let queued = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    assert_eq!(app.job(&app.admin, &queued).await["state"], "queued");
    let resp = app.cancel(&app.admin, &queued).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["state"], "cancelled");
    app.cancel(&app.admin, &blocker).await;
    app.wait_state(&app.admin, &blocker, "cancelled", LONG)
        .await;
    let job = app.job(&app.admin, &queued).await;
    assert_eq!(job["state"], "cancelled");
    assert!(
        job["started_at"].is_null(),
        "a cancelled queued job never starts"
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_of_a_scheduled_job_is_immediate() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    assert_eq!(app.job(&app.admin, &id).await["state"], "scheduled");
    let resp = app.cancel(&app.admin, &id).await;
    assert_eq!(
        (resp.status, resp.json()["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_of_a_failed_job_is_immediate() {
    let toml = "[types.sleep]\ntimeout_ms = 30\nmax_attempts = 3\nbackoff_base_ms = 600000\nbackoff_cap_ms = 600000\n";
    let app = TestApp::spawn_with(Opts {
        toml: Some(toml.into()),
        ..Opts::default()
    })
    .await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 5000}}),
        )
        .await;
    app.wait_state(&app.admin, &id, "failed", LONG).await;
    let resp = app.cancel(&app.admin, &id).await;
    assert_eq!(
        (resp.status, resp.json()["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_of_a_terminal_job_changes_nothing() {
    let toml = "[types.sleep]\ntimeout_ms = 30\nmax_attempts = 1\n";
    let app = TestApp::spawn_with(Opts {
        toml: Some(toml.into()),
        ..Opts::default()
    })
    .await;
    let succeeded = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    let dead = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 5000}}),
        )
        .await;
    let cancelled = app
        .submit_ok(&app.admin, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    app.cancel(&app.admin, &cancelled).await;
    for (id, state) in [
        (&succeeded, "succeeded"),
        (&dead, "dead"),
        (&cancelled, "cancelled"),
    ] {
        let before = app.wait_state(&app.admin, id, state, LONG).await;
        let resp = app.cancel(&app.admin, id).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.json(),
            before,
            "cancel of a {state} job changes nothing"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn another_users_job_cannot_be_cancelled() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let id = app
        .submit_ok(&alice, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    let resp = app.cancel(&bob, &id).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(app.job(&alice, &id).await["state"], "scheduled");
    app.stop().await;
}
