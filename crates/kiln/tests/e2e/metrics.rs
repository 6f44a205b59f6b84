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
    // Nothing waits or runs any more: the default queue's depth is 0 in every state.
    for state in ["scheduled", "queued", "failed", "running"] {
        let series = format!("kiln_jobs{{queue=\"default\",state=\"{state}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in:\n{text}");
    }

    // The listener serves the metrics and nothing else: no API, no token accepted or needed.
    let api = scraper.get(Some(&app.admin), "/api/v1/me").await;
    assert_eq!(api.status.as_u16(), 404, "{}", api.text());
    assert_eq!(api.header("content-type"), Some("application/problem+json"));
    app.stop().await;
}

/// The repository's `deploy/` directory.
fn deploy(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

/// The `kiln_…` metric names a PromQL expression reads.
fn kiln_series(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("kiln_"))
        .map(str::to_owned)
        .collect()
}

/// Every string under an `expr`, `query` or `definition` key of the dashboard.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_series_a_node_serves() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/kiln.json")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let alerts = std::fs::read_to_string(deploy("alerts.yml")).unwrap();
    let rules: Vec<String> = alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(rules.len(), 7, "{alerts}");
    let mut wanted: Vec<String> = queries
        .iter()
        .chain(&rules)
        .flat_map(|q| kiln_series(q))
        .collect();
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() >= 15, "{wanted:?}");

    // On PostgreSQL, so the pool's series are there too (SQLite has no pool); the SQLite
    // writer's commit histograms carry no label and are always there.
    let Some(db) = kiln_testkit::pg::TempPostgres::create().await else {
        return;
    };
    let app = TestApp::spawn_with(Opts {
        flags: vec!["--metrics-addr".into(), "127.0.0.1:0".into()],
        database: Some(db.url.clone()),
        ..Opts::default()
    })
    .await;
    // Nothing has run: every series must be there all the same (known types and queues
    // start at zero), or a fresh cluster's dashboard would be empty and its alerts blind.
    let text = Client::new(app.metrics_addr())
        .get(None, "/metrics")
        .await
        .text();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    for series in &wanted {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .filter(|base| families.contains(base))
            .unwrap_or(series);
        assert!(
            families.contains(&family),
            "{series} is queried by deploy/ but no node serves it; families: {families:?}"
        );
    }
    app.stop().await;
    drop(db);
}

/// `promtool` (Debian's `prometheus` package, which `.ci/run` installs) checks the
/// Prometheus configuration and runs the alerts' unit tests. Without it the test says so
/// loudly, and fails under CI.
#[test]
fn promtool_accepts_the_configuration_and_the_alerts_fire_as_tested() {
    let Ok(version) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing under CI (.ci/run installs Debian's prometheus package)"
        );
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    };
    assert!(version.status.success());
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(deploy(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The sum of `key` over `minutes`.
fn total(minutes: &[serde_json::Value], key: &str) -> u64 {
    minutes.iter().map(|m| m[key].as_u64().unwrap()).sum()
}

/// `GET /admin/series` counts the attempts this node's worker ran in the current minute.
/// An `external` job is not run by a worker: its reports (here `running`, then `dead`) are
/// not in any node's series.
#[tokio::test]
async fn the_series_counts_the_jobs_the_worker_ran() {
    let app = TestApp::spawn().await;
    for n in 0..3 {
        let id = app
            .submit_ok(&app.admin, json!({"type": "echo", "payload": n}))
            .await;
        app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    }
    let external = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "x"}}),
        )
        .await;
    for report in [
        json!({"state": "running"}),
        json!({"state": "dead", "error": "x"}),
    ] {
        let resp = app
            .client
            .send_json(
                hyper::Method::PATCH,
                Some(&app.admin),
                &format!("/api/v1/jobs/{external}"),
                &report,
            )
            .await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
    }
    assert_eq!(app.job(&app.admin, &external).await["state"], "dead");

    let client = app.user("carol", "client").await;
    let denied = app.client.get(Some(&client), "/api/v1/admin/series").await;
    assert_eq!(denied.status.as_u16(), 403, "{}", denied.text());

    // The worker counts an attempt right after the store has it, so wait for the count.
    // The minute may turn during the test: the jobs are in the last two.
    let body = wait_until("the three echo jobs to be counted", LONG, || async {
        let resp = app
            .client
            .get(Some(&app.admin), "/api/v1/admin/series")
            .await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
        let body = resp.json();
        let minutes = body["minutes"].as_array().unwrap();
        if total(&minutes[58..], "succeeded") >= 3 {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(body["node"], "test-node", "{body}");
    let minutes = body["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60, "{body}");
    let last = &minutes[58..];
    assert_eq!(total(last, "started"), 3, "{body}");
    assert_eq!(total(last, "succeeded"), 3, "{body}");
    assert!(
        last.iter()
            .any(|m| m["start_latency_ms"]["p50"].as_f64().is_some()),
        "{body}"
    );
    // Nothing else in the hour: in particular the external job's `dead` is not counted.
    assert_eq!(total(minutes, "started"), 3, "{body}");
    assert_eq!(total(minutes, "dead"), 0, "{body}");
    assert_eq!(total(minutes, "failed") + total(minutes, "cancelled"), 0);
    app.stop().await;
}
