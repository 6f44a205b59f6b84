//! Prometheus metrics of a whole node: what its worker, store and API record, served on the
//! token-free metrics listener.

use std::time::Duration;

use kiln_testkit::http::Client;
use kiln_testkit::wait::wait_until;
use serde_json::json;

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(10);

/// The value of the sample `series` (name and labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_metrics_listener_serves_what_the_node_recorded_without_a_token() {
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--metrics-addr".into(), "127.0.0.1:0".into()],
        // A job that always times out: two retried attempts, then dead.
        toml: Some(
            "[types.sleep]\ntimeout_ms = 40\nmax_attempts = 3\nbackoff_base_ms = 20\n\
             backoff_cap_ms = 50\n"
                .into(),
        ),
        ..Opts::default()
    })
    .await;
    for n in 0..3 {
        let id = app
            .submit_ok(&app.admin, json!({"type": "echo", "payload": n}))
            .await;
        app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    }
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 10_000}}),
        )
        .await;
    app.wait_state(&app.admin, &id, "dead", LONG).await;

    let scraper = Client::new(app.metrics_addr());
    // The worker counts an attempt right after the store has it, so wait for the count.
    let text = wait_until("the dead attempt to be counted", LONG, || async {
        let resp = scraper.get(None, "/metrics").await;
        let text = resp.text();
        match sample(
            &text,
            "kiln_jobs_completed_total{type=\"sleep\",outcome=\"dead\"}",
        ) {
            Some(1.0) => Ok((resp, text)),
            _ => Err(text),
        }
    })
    .await;
    let (resp, text) = text;
    assert_eq!(resp.status.as_u16(), 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        resp.header("content-type")
    );
    for (series, want) in [
        ("kiln_build_info{version=\"0.1.0\"}", 1.0),
        ("kiln_jobs_submitted_total{type=\"echo\"}", 3.0),
        ("kiln_jobs_submitted_total{type=\"sleep\"}", 1.0),
        (
            "kiln_jobs_completed_total{type=\"echo\",outcome=\"succeeded\"}",
            3.0,
        ),
        (
            "kiln_jobs_completed_total{type=\"sleep\",outcome=\"retried\"}",
            2.0,
        ),
        ("kiln_job_queue_wait_seconds_count{type=\"echo\"}", 3.0),
        ("kiln_job_queue_wait_seconds_count{type=\"sleep\"}", 3.0),
        ("kiln_job_run_duration_seconds_count{type=\"sleep\"}", 3.0),
        ("kiln_worker_slots", 4.0),
        ("kiln_worker_slots_busy", 0.0),
        ("kiln_stream_followers", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    // Every run of a `sleep` attempt lasted at least its 40 ms timeout.
    assert_eq!(
        sample(
            &text,
            "kiln_job_run_duration_seconds_bucket{type=\"sleep\",le=\"0.025\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let commits = sample(&text, "kiln_store_commit_batch_size_count").unwrap_or(0.0);
    assert!(
        commits >= 1.0,
        "the SQLite writer's commits are counted: {text}"
    );
    // Nothing waits or runs any more: no depth series.
    assert!(!text.contains("kiln_jobs{queue="), "{text}");

    // The listener serves the metrics and nothing else: no API, no token accepted or needed.
    let api = scraper.get(Some(&app.admin), "/api/v1/me").await;
    assert_eq!(api.status.as_u16(), 404, "{}", api.text());
    assert_eq!(api.header("content-type"), Some("application/problem+json"));
    app.stop().await;
}
