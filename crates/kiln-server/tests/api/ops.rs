//! Health, readiness, metrics, shutdown and CORS.

use hyper::{Method, StatusCode};
use kiln_server::ServerConfig;
use serde_json::json;

use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn metrics_are_for_operators_and_count_jobs() {
    let app = TestApp::spawn().await;
    let client = app.user("carol", "client").await;
    let operator = app.user("oscar", "operator").await;
    app.submit_ok(&client, json!({"type": "echo"})).await;
    let id = app.submit_ok(&client, json!({"type": "echo"})).await;
    app.call(Method::POST, &client, &format!("/api/v1/jobs/{id}/cancel"))
        .await;
    problem(&app.get(&client, "/metrics").await, 403, "forbidden");
    problem(&app.client.get(None, "/metrics").await, 401, "unauthorized");
    let resp = app
        .client
        .request(Method::GET, "/metrics")
        .bearer(Some(&operator))
        .header("accept", "application/json")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let m = resp.json();
    assert_eq!(
        (
            &m["total_submitted"],
            &m["queued"],
            &m["cancelled"],
            &m["running"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(0))
    );
    let text = app
        .client
        .request(Method::GET, "/metrics")
        .bearer(Some(&operator))
        .header("accept", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        .send()
        .await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let body = text.text();
    for line in [
        "kiln_jobs_submitted_total{type=\"echo\"} 2\n",
        "kiln_job_cancel_requests_total 1\n",
        "kiln_jobs{queue=\"default\",state=\"queued\"} 1\n",
        "kiln_http_requests_total{method=\"POST\",route=\"/api/v1/jobs\",status=\"2xx\"} 2\n",
        "kiln_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"4xx\"} 2\n",
    ] {
        assert!(body.contains(line), "{line:?} missing from:\n{body}");
    }
    // No `Accept` at all (curl's `*/*`): text too.
    let plain = app.get(&operator, "/metrics").await;
    assert!(plain.text().contains("# TYPE kiln_jobs gauge\n"));
    // A route label is the router's template, never the raw path (which would let any
    // client add series).
    app.get(
        &operator,
        "/api/v1/jobs/0190a0a0-0000-7000-8000-000000000000",
    )
    .await;
    app.get(&operator, "/no/such/path/3f2a").await;
    let body = app.get(&operator, "/metrics").await.text();
    assert!(body.contains("route=\"/api/v1/jobs/{id}\""), "{body}");
    assert!(
        body.contains("route=\"unmatched\",status=\"4xx\"} 1\n"),
        "{body}"
    );
    assert!(
        !body.contains("3f2a") && !body.contains("0190a0a0"),
        "{body}"
    );
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.client.get(None, "/healthz").await.status,
        StatusCode::OK
    );
    assert_eq!(app.client.get(None, "/readyz").await.status, StatusCode::OK);
    // A background task that died: not ready until it runs again.
    app.state.metrics().task_down("heartbeat");
    let down = app.client.get(None, "/readyz").await;
    let body = problem(&down, 503, "not_ready");
    assert!(
        body["detail"].as_str().unwrap().contains("heartbeat"),
        "{body}"
    );
    app.state.metrics().task_up("heartbeat");
    assert_eq!(app.client.get(None, "/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn after_begin_shutdown_everything_but_healthz_is_503() {
    let app = TestApp::spawn().await;
    app.state.begin_shutdown();
    problem(
        &app.get(&app.admin, "/api/v1/jobs").await,
        503,
        "shutting_down",
    );
    let ready = app.client.get(None, "/readyz").await;
    problem(&ready, 503, "shutting_down");
    let submit = app.submit(&app.admin, json!({"type": "echo"})).await;
    problem(&submit, 503, "shutting_down");
    let health = app.client.get(None, "/healthz").await;
    assert_eq!(
        (health.status, health.text()),
        (StatusCode::OK, "ok".to_owned())
    );
}

#[tokio::test]
async fn cors_headers_only_for_allowed_origins() {
    let app = TestApp::spawn_with(ServerConfig {
        cors_origins: vec!["https://ui.example".into()],
        ..ServerConfig::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, "/api/v1/jobs")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://ui.example").await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://ui.example")
    );
    let denied = preflight("https://evil.example").await;
    assert_eq!(denied.header("access-control-allow-origin"), None);

    let plain = TestApp::spawn().await;
    let resp = plain
        .client
        .request(Method::GET, "/healthz")
        .header("origin", "https://ui.example")
        .send()
        .await;
    assert_eq!(resp.header("access-control-allow-origin"), None);
}

/// `KILN_CORS_ORIGINS=*` allows any origin (it used to panic at start-up).
#[tokio::test]
async fn a_wildcard_cors_origin_allows_any_origin() {
    let app = TestApp::spawn_with(ServerConfig {
        cors_origins: vec!["*".into()],
        ..ServerConfig::default()
    })
    .await;
    let preflight = app
        .client
        .request(Method::OPTIONS, "/api/v1/jobs")
        .header("origin", "https://anywhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await;
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        app.client.get(None, "/healthz").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_over_the_timeout_is_a_408_problem() {
    let app = TestApp::spawn_with(ServerConfig {
        request_timeout: std::time::Duration::from_secs(1),
        cancel_wait: std::time::Duration::from_secs(10),
        ..ServerConfig::default()
    })
    .await;
    let id = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    app.claim_all().await;
    // Nobody stops the running job, so the cancel would wait 10 s: the timeout cuts it.
    let resp = app
        .call(
            Method::POST,
            &app.admin,
            &format!("/api/v1/jobs/{id}/cancel"),
        )
        .await;
    problem(&resp, 408, "request_timeout");
}
