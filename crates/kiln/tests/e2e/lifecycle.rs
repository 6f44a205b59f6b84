//! The basic lifecycle end to end through the real HTTP API (`docs/design.md`,
//! "Lifecycle"): submit → running → succeeded with its events, concurrency limits, a failing
//! job's log, `/metrics`, and jobs surviving a graceful restart.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_testkit::wait_until;
use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);

fn ms(job: &Value, field: &str) -> i64 {
    let text = job[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is set: {job}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn submit_answers_202_with_a_unique_id_and_runs_to_succeeded() {
    let app = TestApp::spawn().await;
    let mut ids = std::collections::HashSet::new();
    for i in 0..5 {
        let resp = app
            .submit(
                &app.admin,
                json!({"type": "echo", "payload": {"message": "hello", "i": i}}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
        let job = resp.json();
        assert!(["queued", "running", "succeeded"].contains(&job["state"].as_str().unwrap()));
        assert!(
            resp.header("location")
                .unwrap()
                .ends_with(job["id"].as_str().unwrap())
        );
        ids.insert(job["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 5, "ids are unique");
    for id in &ids {
        let job = app.wait_state(&app.admin, id, "succeeded", LONG).await;
        assert_eq!(job["result"]["message"], "hello");
        assert!(ms(&job, "created_at") <= ms(&job, "started_at"));
        assert!(ms(&job, "started_at") <= ms(&job, "finished_at"));
    }
    app.stop().await;
}

#[tokio::test]
async fn the_event_history_shows_queued_running_succeeded() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "sleep", "payload": {"ms": 50}}))
        .await;
    app.wait_state(&app.admin, &id, "succeeded", LONG).await;
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
    assert_eq!(states, ["queued", "running", "succeeded"]);
    let status = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/status"))
        .await
        .json();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["result"], "ok");
    assert_eq!(status["progress"], 1.0);
    app.stop().await;
}

/// The largest number of `[started_at, finished_at]` intervals that overlap.
fn max_overlap(jobs: &[Value]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for job in jobs {
        edges.push((ms(job, "started_at"), 1));
        edges.push((ms(job, "finished_at"), -1));
    }
    // Ends sort before starts at the same millisecond: a slot freed and reused is no overlap.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test]
async fn concurrent_sleep_jobs_respect_max_concurrency() {
    let opts = Opts {
        flags: vec!["--max-concurrency".into(), "2".into()],
        ..Opts::default()
    };
    let app = TestApp::spawn_with(opts).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            app.submit_ok(
                &app.admin,
                json!({"type": "sleep", "payload": {"ms": 600_000}}),
            )
            .await,
        );
    }
    // Jobs that run until cancelled: each slot is released only when the test says so, so
    // "both slots used" is observed, not hoped for.
    let mut jobs = Vec::new();
    while jobs.len() < ids.len() {
        let running = wait_until("two running jobs", LONG, || async {
            let mut running = Vec::new();
            for id in &ids {
                if app.job(&app.admin, id).await["state"] == "running" {
                    running.push(id.clone());
                }
            }
            let queued_left = ids.len() - jobs.len() - running.len();
            if running.len() == 2 || (queued_left == 0 && !running.is_empty()) {
                Ok(running)
            } else {
                Err(running)
            }
        })
        .await;
        let id = &running[0];
        assert!(app.cancel(&app.admin, id).await.status.is_success());
        jobs.push(app.wait_state(&app.admin, id, "cancelled", LONG).await);
    }
    assert_eq!(max_overlap(&jobs), 2, "two slots, both used, never three");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_job_shows_failed_with_a_non_empty_log() {
    let toml = "[types.sleep]\ntimeout_ms = 50\nmax_attempts = 2\nbackoff_base_ms = 60000\nbackoff_cap_ms = 60000\n";
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
    let job = app.wait_state(&app.admin, &id, "failed", LONG).await;
    assert_eq!(job["error"]["code"], "timeout");
    assert_eq!(job["error"]["retryable"], true);
    let log = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/logs"))
        .await;
    assert_eq!(log.status, StatusCode::OK);
    assert!(
        log.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(log.text().contains("timed out"), "log: {}", log.text());
    app.stop().await;
}

#[tokio::test]
async fn metrics_reflect_job_counts_and_latencies() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            app.submit_ok(&app.admin, json!({"type": "echo", "payload": i}))
                .await,
        );
    }
    let scheduled = app
        .submit_ok(&app.admin, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    for id in &ids {
        app.wait_state(&app.admin, id, "succeeded", LONG).await;
    }
    app.cancel(&app.admin, &scheduled).await;
    let resp = app
        .client
        .request(Method::GET, "/metrics")
        .bearer(Some(&app.admin))
        .header("accept", "application/json")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let m = resp.json();
    assert_eq!(m["total_submitted"], 9);
    assert_eq!(m["succeeded"], 8);
    assert_eq!(m["cancelled"], 1);
    assert_eq!(m["queued"], 0);
    assert_eq!(m["running"], 0);
    assert!(m["p95_start_latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(m["avg_duration_ms"].as_f64().unwrap() >= 0.0);
    let client = app.user("metrics-client", "client").await;
    let denied = app.client.get(Some(&client), "/metrics").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test]
async fn jobs_survive_a_graceful_restart_on_the_same_database() {
    let app = TestApp::spawn().await;
    let done = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": "kept"}))
        .await;
    app.wait_state(&app.admin, &done, "succeeded", LONG).await;
    let later = app
        .submit_ok(&app.admin, json!({"type": "echo", "delay_ms": 600_000}))
        .await;
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir, Opts::default()).await;
    let job = app.job(&app.admin, &done).await;
    assert_eq!(
        (job["state"].as_str(), job["result"].as_str()),
        (Some("succeeded"), Some("kept"))
    );
    assert_eq!(app.job(&app.admin, &later).await["state"], "scheduled");
    let events = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{done}/events"))
        .await
        .json();
    assert_eq!(events.as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_running_job_interrupted_by_shutdown_runs_again_after_restart() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    app.wait_state(&app.admin, &id, "running", LONG).await;
    // The grace period (2 s) is far shorter than the job: it is interrupted, not lost.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, Opts::default()).await;
    wait_until("attempt 2 to run", LONG, || async {
        let job = app.job(&app.admin, &id).await;
        if job["state"] == "running" && job["attempts"] == 2 {
            Ok(job)
        } else {
            Err(job)
        }
    })
    .await;
    assert!(app.cancel(&app.admin, &id).await.status.is_success());
    app.stop().await;
}

#[tokio::test]
async fn a_second_node_on_the_same_sqlite_file_is_refused_until_the_first_is_gone() {
    let app = TestApp::spawn().await;
    let config = crate::helpers::config(&app.dir, &Opts::default());
    for role in [kiln::node::Role::Serve, kiln::node::Role::Worker] {
        let second = kiln::node::start(&config, role).await;
        let err = format!("{:#}", second.err().expect("a second node is refused"));
        assert!(err.contains("another kiln process"), "{err}");
    }
    // The first goes on serving.
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, Opts::default()).await;
    assert_eq!(app.job(&app.admin, &id).await["state"], "succeeded");
    app.stop().await;
}
