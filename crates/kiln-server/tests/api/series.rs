//! `GET /admin/series`: this node's last hour, minute by minute, for operators and admins.
//!
//! No worker runs here, so the attempts are recorded into the node's metrics directly, as
//! the worker records them; the e2e test `metrics::the_series_counts_the_jobs_the_worker_ran`
//! runs real jobs.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use kiln_metrics::Outcome;
use kiln_server::ServerConfig;
use serde_json::Value;

use crate::helpers::{TestApp, problem};

/// The minute's start, checked to be on the minute.
fn at(minute: &Value) -> DateTime<Utc> {
    let at = minute["at"].as_str().expect("`at` is a string");
    let parsed = DateTime::parse_from_rfc3339(at)
        .expect("`at` is RFC 3339")
        .with_timezone(&Utc);
    assert!(at.ends_with(":00.000Z"), "{at}");
    assert_eq!((parsed.second(), parsed.nanosecond()), (0, 0), "{at}");
    parsed
}

#[tokio::test]
async fn operators_get_the_last_60_minutes_oldest_first_and_clients_403() {
    let app = TestApp::spawn_with(ServerConfig {
        node_id: Some("node-a".to_owned()),
        ..ServerConfig::default()
    })
    .await;
    let carol = app.user("carol", "client").await;
    let olga = app.user("olga", "operator").await;

    problem(
        &app.get(&carol, "/api/v1/admin/series").await,
        403,
        "forbidden",
    );
    let anonymous = app.client.get(None, "/api/v1/admin/series").await;
    assert_eq!(anonymous.status.as_u16(), 401, "{}", anonymous.text());

    // What the worker records for two attempts started 5 ms and 40 ms after they were
    // due: one succeeded, one failed for good.
    let metrics = app.state.metrics();
    metrics.job_started("echo", Duration::from_millis(5));
    metrics.job_started("echo", Duration::from_millis(40));
    metrics.job_ended("echo", Outcome::Succeeded, Duration::from_millis(1));
    metrics.job_ended("echo", Outcome::Dead, Duration::from_millis(1));

    for token in [&olga, &app.admin] {
        let resp = app.get(token, "/api/v1/admin/series").await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
        let body = resp.json();
        assert_eq!(body["node"], "node-a", "{body}");
        let minutes = body["minutes"].as_array().expect("minutes");
        assert_eq!(minutes.len(), 60, "{body}");
        // Oldest first, one minute apart, the last one now.
        for pair in minutes.windows(2) {
            assert_eq!(
                at(&pair[1]) - at(&pair[0]),
                chrono::TimeDelta::minutes(1),
                "{pair:?}"
            );
        }
        let newest = at(&minutes[59]);
        let age = Utc::now() - newest;
        assert!(
            age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(2),
            "the newest minute {newest} is the current one"
        );
        // Every minute has every count; the minute may have turned since the records, so
        // they are in the last two.
        for m in minutes {
            for key in ["started", "succeeded", "failed", "dead", "cancelled"] {
                assert!(m[key].is_u64(), "{key} in {m}");
            }
            assert!(
                m["start_latency_ms"].is_null() || m["start_latency_ms"]["p99"].is_f64(),
                "{m}"
            );
        }
        let sum =
            |key: &str| -> u64 { minutes[58..].iter().map(|m| m[key].as_u64().unwrap()).sum() };
        assert_eq!(
            (
                sum("started"),
                sum("succeeded"),
                sum("failed"),
                sum("dead"),
                sum("cancelled")
            ),
            (2, 1, 0, 1, 0),
            "{body}"
        );
        let all = |key: &str| -> u64 { minutes.iter().map(|m| m[key].as_u64().unwrap()).sum() };
        assert_eq!(all("started"), 2, "nothing else in the hour: {body}");
        // Quiet minutes have no latency.
        assert!(
            minutes[..58]
                .iter()
                .all(|m| m["start_latency_ms"].is_null())
        );
        let latency: Vec<&Value> = minutes[58..]
            .iter()
            .map(|m| &m["start_latency_ms"])
            .filter(|l| !l.is_null())
            .collect();
        assert!(!latency.is_empty(), "{body}");
        if let [one] = latency[..] {
            // Both in one minute: p50 is the 5 ms wait's bucket, capped by the longest
            // wait; p95 and p99 the 40 ms one's (the bucket's bound, 41 ms, is above it).
            assert_eq!(one["p50"], 5.5, "{one}");
            assert_eq!(one["p95"], 40.0, "{one}");
            assert_eq!(one["p99"], 40.0, "{one}");
        }
    }
}

#[tokio::test]
async fn a_server_without_a_node_id_leaves_node_out() {
    let app = TestApp::spawn().await;
    let body = app.get(&app.admin, "/api/v1/admin/series").await.json();
    assert!(body.get("node").is_none(), "{body}");
    let minutes = body["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), 60, "{body}");
    assert!(
        minutes
            .iter()
            .all(|m| m["started"] == 0 && m["succeeded"] == 0 && m["start_latency_ms"].is_null()),
        "{body}"
    );
}
