//! Retries with backoff, then dead; manual retry.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);
const FLAKY: &str =
    "[types.sleep]\ntimeout_ms = 40\nmax_attempts = 3\nbackoff_base_ms = 20\nbackoff_cap_ms = 50\n";

#[tokio::test]
async fn a_job_that_keeps_timing_out_is_retried_then_dead() {
    let app = TestApp::spawn_with(Opts {
        toml: Some(FLAKY.into()),
        ..Opts::default()
    })
    .await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 10_000}}),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "dead", LONG).await;
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["error"]["code"], "timeout");
    assert!(!job["finished_at"].is_null());
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
    assert_eq!(
        states,
        [
            "queued", "running", "failed", "queued", "running", "failed", "queued", "running",
            "dead"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn manual_retry_of_a_dead_job_gives_it_a_fresh_budget() {
    let app = TestApp::spawn_with(Opts {
        toml: Some(FLAKY.into()),
        ..Opts::default()
    })
    .await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 10_000}}),
        )
        .await;
    app.wait_state(&app.admin, &id, "dead", LONG).await;
    let resp = app
        .client
        .request(Method::PUT, &format!("/api/v1/jobs/{id}/retry"))
        .bearer(Some(&app.admin))
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let job = app.wait_state(&app.admin, &id, "dead", LONG).await;
    assert_eq!(job["attempts"], 6, "three more attempts after the retry");
    app.stop().await;
}

#[tokio::test]
async fn retry_of_a_job_that_is_not_failed_or_dead_is_a_conflict() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    let resp = app
        .client
        .request(Method::POST, &format!("/api/v1/jobs/{id}/retry"))
        .bearer(Some(&app.admin))
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::CONFLICT);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    app.stop().await;
}
