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
