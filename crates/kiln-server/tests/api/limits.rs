//! Per-client limits: the active-job quota.

use hyper::Method;
use kiln_server::ServerConfig;
use serde_json::json;

use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn a_client_past_the_active_quota_gets_429_and_others_do_not() {
    let app = TestApp::spawn_with(ServerConfig {
        max_active: Some(2),
        ..ServerConfig::default()
    })
    .await;
    let ada = app.user("ada", "client").await;
    let bob = app.user("bob", "client").await;
    let first = app.submit_ok(&ada, json!({"type": "echo"})).await;
    app.submit_ok(&ada, json!({"type": "echo", "delay_ms": 60_000}))
        .await;
    let refused = app.submit(&ada, json!({"type": "echo"})).await;
    problem(&refused, 429, "active_quota");
    assert_eq!(refused.header("retry-after"), Some("5"));
    // Nothing was stored for the refused submission.
    let page = app.get(&ada, "/api/v1/jobs").await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    // Another client, and an operator or admin, are not held back by ada's jobs.
    app.submit_ok(&bob, json!({"type": "echo"})).await;
    for _ in 0..3 {
        app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    }
    // A finished (here: cancelled) job frees its place.
    let cancel = app
        .call(Method::POST, &ada, &format!("/api/v1/jobs/{first}/cancel"))
        .await;
    assert_eq!(cancel.json()["state"], "cancelled");
    app.submit_ok(&ada, json!({"type": "echo"})).await;
}
