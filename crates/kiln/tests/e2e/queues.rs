//! Pausing a queue on a live node: its jobs wait while others run, and run once resumed.

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use crate::helpers::TestApp;

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_paused_queue_waits_while_others_run_and_runs_once_resumed() {
    let app = TestApp::spawn().await;
    let pause = |action: &'static str| {
        app.client
            .request(
                Method::POST,
                &format!("/api/v1/admin/queues/reports/{action}"),
            )
            .bearer(Some(&app.admin))
            .send()
    };
    assert_eq!(pause("pause").await.status.as_u16(), 200);
    // Submitted first and ahead in priority: a worker that ignored the pause would run it
    // before the default queue's job.
    let held = app
        .submit_ok(
            &app.admin,
            json!({"type": "echo", "queue": "reports", "priority": 100}),
        )
        .await;
    let other = app.submit_ok(&app.admin, json!({"type": "echo"})).await;
    app.wait_state(&app.admin, &other, "succeeded", LONG).await;
    let job = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{held}"))
        .await
        .json();
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0);

    assert_eq!(pause("resume").await.status.as_u16(), 200);
    app.wait_state(&app.admin, &held, "succeeded", LONG).await;
    app.stop().await;
}

/// `GET /admin/nodes` shows the node itself (operators only); a clean stop leaves the
/// registry, so a restart on the same database finds its id free.
#[tokio::test]
async fn the_node_lists_itself_for_operators_and_leaves_the_registry_when_it_stops() {
    let app = TestApp::spawn().await;
    let client = app.user("carol", "client").await;
    let denied = app.client.get(Some(&client), "/api/v1/admin/nodes").await;
    assert_eq!(denied.status.as_u16(), 403, "{}", denied.text());
    let nodes = app
        .client
        .get(Some(&app.admin), "/api/v1/admin/nodes")
        .await;
    assert_eq!(nodes.status.as_u16(), 200, "{}", nodes.text());
    let nodes = nodes.json();
    let node = &nodes.as_array().unwrap()[..];
    assert_eq!(node.len(), 1, "{nodes}");
    let node = &node[0];
    assert_eq!(node["role"], "serve", "{node}");
    assert_eq!(node["live"], true, "{node}");
    assert_eq!(node["pid"], std::process::id(), "{node}");
    assert_eq!(node["running"], 0, "{node}");
    assert!(
        node["objects"].as_str().unwrap().starts_with("local:"),
        "{node}"
    );
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, crate::helpers::Opts::default()).await;
    let nodes = app
        .client
        .get(Some(&app.admin), "/api/v1/admin/nodes")
        .await
        .json();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    assert_eq!(nodes[0]["live"], true, "{nodes}");
}
