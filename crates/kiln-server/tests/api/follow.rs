//! A log follower that cannot keep up is dropped with a final event, and the appends that
//! outran it never waited for it.

use hyper::{Method, StatusCode};
use kiln_domain::{Clock, JobId, SystemClock};
use kiln_server::ServerConfig;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_follower_that_falls_behind_is_dropped_and_the_writes_never_wait() {
    // Two appends buffered per follower; a socket holds a few MiB at most.
    let config = ServerConfig {
        log_follow_buffer: 2,
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with(config).await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "sleep", "payload": {"ms": 600_000}}),
        )
        .await;
    let stream = app
        .client
        .request(Method::GET, &format!("/api/v1/jobs/{id}/logs?follow=true"))
        .bearer(Some(&app.admin))
        .header("accept", "text/event-stream")
        .open()
        .await;
    assert_eq!(stream.status, StatusCode::OK);

    // 40 MiB of lines while the follower reads nothing: every append returns on its own.
    let job: JobId = id.parse().expect("a job id");
    let chunk = format!("{}\n", "x".repeat(1023)).repeat(1024);
    for _ in 0..40 {
        app.store()
            .log_append(job, &chunk, SystemClock.now())
            .await
            .expect("an append");
    }
    let text = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.rest_until("event: dropped"),
    )
    .await
    .expect("the follower is dropped, not left streaming");
    let lines = text.matches("data: xxx").count();
    assert!(
        lines < 40 * 1024,
        "the follower got every line: it was not behind"
    );
    assert!(
        text.contains("event: dropped\ndata: this follower fell too far behind"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
}
