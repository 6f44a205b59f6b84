//! The operator API: everyone's jobs (read, cancel, retry, delete, filtered by owner) and
//! the queues (depths, pause and resume).

use hyper::{Method, StatusCode};
use kiln_server::ServerConfig;
use serde_json::json;

use crate::helpers::{TestApp, ids, problem};

#[tokio::test]
async fn clients_get_403_on_every_operator_route() {
    let app = TestApp::spawn().await;
    let carol = app.user("carol", "client").await;
    let id = app.submit_ok(&carol, json!({"type": "echo"})).await;
    for (method, path) in [
        (Method::GET, "/api/v1/admin/jobs".to_owned()),
        (Method::GET, format!("/api/v1/admin/jobs/{id}")),
        (Method::POST, format!("/api/v1/admin/jobs/{id}/cancel")),
        (Method::POST, format!("/api/v1/admin/jobs/{id}/retry")),
        (Method::DELETE, format!("/api/v1/admin/jobs/{id}")),
        (Method::GET, "/api/v1/admin/queues".to_owned()),
        (
            Method::POST,
            "/api/v1/admin/queues/default/pause".to_owned(),
        ),
        (
            Method::POST,
            "/api/v1/admin/queues/default/resume".to_owned(),
        ),
    ] {
        let resp = app.call(method.clone(), &carol, &path).await;
        problem(&resp, 403, "forbidden");
    }
    // Nothing changed.
    let job = app.get(&carol, &format!("/api/v1/jobs/{id}")).await.json();
    assert_eq!(job["state"], "queued");
    let queues = app.get(&app.admin, "/api/v1/admin/queues").await.json();
    assert_eq!(queues[0]["paused"], false);
}

#[tokio::test]
async fn an_operator_reads_cancels_retries_and_deletes_anyones_job_and_is_named() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let oscar = app.user("oscar", "operator").await;
    let waiting = app.submit_ok(&alice, json!({"type": "echo"})).await;
    let job = app
        .get(&oscar, &format!("/api/v1/admin/jobs/{waiting}"))
        .await;
    assert_eq!(job.status, StatusCode::OK);
    assert_eq!(job.json()["id"], waiting.as_str());
    // Still 404 through the owner-scoped route.
    problem(
        &app.get(&oscar, &format!("/api/v1/jobs/{waiting}")).await,
        404,
        "not_found",
    );

    let cancelled = app
        .call(
            Method::POST,
            &oscar,
            &format!("/api/v1/admin/jobs/{waiting}/cancel"),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    assert_eq!(cancelled.json()["state"], "cancelled");
    let events = app
        .get(&alice, &format!("/api/v1/jobs/{waiting}/events"))
        .await
        .json();
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["message"], "cancelled by oscar", "{events}");

    let broken = app.submit_ok(&alice, json!({"type": "echo"})).await;
    app.kill(&broken).await;
    let retried = app
        .call(
            Method::POST,
            &oscar,
            &format!("/api/v1/admin/jobs/{broken}/retry"),
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text());
    assert_eq!(retried.json()["state"], "queued");
    let events = app
        .get(&alice, &format!("/api/v1/jobs/{broken}/events"))
        .await
        .json();
    assert_eq!(
        events.as_array().unwrap().last().unwrap()["message"],
        "retry requested by oscar"
    );
    // The state machine still rules: retrying a queued job is a conflict.
    problem(
        &app.call(
            Method::POST,
            &oscar,
            &format!("/api/v1/admin/jobs/{broken}/retry"),
        )
        .await,
        409,
        "illegal_transition",
    );

    let deleted = app
        .call(
            Method::DELETE,
            &oscar,
            &format!("/api/v1/admin/jobs/{waiting}"),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    problem(
        &app.get(&alice, &format!("/api/v1/jobs/{waiting}")).await,
        404,
        "not_found",
    );
    problem(
        &app.get(&oscar, "/api/v1/admin/jobs/not-a-uuid").await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn the_admin_list_filters_by_owner_id_or_name() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let a = app.submit_ok(&alice, json!({"type": "echo"})).await;
    let b = app.submit_ok(&bob, json!({"type": "echo"})).await;
    let everyone = app.get(&app.admin, "/api/v1/admin/jobs").await.json();
    assert_eq!(ids(&everyone).len(), 2);
    let by_name = app
        .get(&app.admin, "/api/v1/admin/jobs?owner=alice")
        .await
        .json();
    assert_eq!(ids(&by_name), [a]);
    let me = app.get(&bob, "/api/v1/me").await.json();
    let by_id = app
        .get(
            &app.admin,
            &format!("/api/v1/admin/jobs?owner={}&state=queued", me["id"]),
        )
        .await
        .json();
    assert_eq!(ids(&by_id), [b]);
    let nobody = app
        .get(&app.admin, "/api/v1/admin/jobs?owner=nobody")
        .await
        .json();
    assert!(ids(&nobody).is_empty());
    problem(
        &app.get(&app.admin, "/api/v1/admin/jobs?owner=").await,
        400,
        "invalid_request",
    );
    // The own list is the caller's: no owner filter there.
    problem(
        &app.get(&alice, "/api/v1/jobs?owner=bob").await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn queues_show_depths_limits_and_pauses_and_a_paused_queue_is_not_claimed() {
    let mut config = ServerConfig::default();
    config.queue_limits.insert("reports".to_owned(), 2);
    let app = TestApp::spawn_with(config).await;
    let oscar = app.user("oscar", "operator").await;
    app.submit_ok(&app.admin, json!({"type": "echo", "queue": "reports"}))
        .await;
    app.submit_ok(
        &app.admin,
        json!({"type": "echo", "queue": "mail", "delay_ms": 600_000}),
    )
    .await;
    let queues = app.get(&oscar, "/api/v1/admin/queues").await.json();
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "mail", "reports"]);
    assert_eq!(
        queues[2],
        json!({
            "name": "reports", "paused": false, "changed_by": null, "changed_at": null,
            "jobs": {"scheduled": 0, "queued": 1, "failed": 0, "running": 0},
            "concurrency_limit": 2
        })
    );
    assert_eq!(queues[1]["jobs"]["scheduled"], 1);

    let paused = app
        .call(Method::POST, &oscar, "/api/v1/admin/queues/reports/pause")
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    let paused = paused.json();
    assert_eq!(
        (&paused["paused"], &paused["changed_by"]),
        (&json!(true), &json!("oscar"))
    );
    assert!(paused["changed_at"].is_string());
    // Still accepted while paused, but no claim takes it.
    app.submit_ok(&app.admin, json!({"type": "echo", "queue": "reports"}))
        .await;
    assert!(app.claim_all().await.is_empty());
    // A queue with nothing in it may be paused too (before its first job).
    let empty = app
        .call(Method::POST, &oscar, "/api/v1/admin/queues/new-queue/pause")
        .await
        .json();
    assert_eq!(
        empty["jobs"],
        json!({"scheduled": 0, "queued": 0, "failed": 0, "running": 0})
    );

    let resumed = app
        .call(Method::POST, &oscar, "/api/v1/admin/queues/reports/resume")
        .await
        .json();
    assert_eq!(resumed["paused"], false);
    assert_eq!(app.claim_all().await.len(), 2);
    problem(
        &app.call(
            Method::POST,
            &oscar,
            "/api/v1/admin/queues/bad%20name!/pause",
        )
        .await,
        400,
        "invalid_request",
    );
}
