//! Every kind of bad input gets an RFC 9457 problem, never a crash or a bare status.

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .request(Method::POST, "/api/v1/jobs")
        .bearer(Some(&app.admin))
        .header("content-type", "application/json")
        .raw("{\"type\": \"echo\",")
        .send()
        .await;
    let body = problem(&resp, 400, "invalid_json");
    assert!(
        body["detail"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
}

#[tokio::test]
async fn invalid_submissions_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"payload": {}}), "type"),
        (json!({"type": 7}), "type"),
        (json!({"type": "fork_bomb"}), "type"),
        (
            json!({"type": "sleep", "payload": {"ms": "soon"}}),
            "payload.ms",
        ),
        (
            json!({"type": "sleep", "payload": {"ms": 99_999_999}}),
            "payload.ms",
        ),
        (json!({"type": "echo", "priority": 1000}), "priority"),
        (json!({"type": "echo", "queue": "No Spaces"}), "queue"),
        (json!({"type": "echo", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        let resp = app.submit(&app.admin, body.clone()).await;
        let problem = problem(&resp, 400, "invalid_request");
        assert_eq!(problem["field"], field, "{body} → {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    let unknown = app
        .submit(&app.admin, json!({"type": "fork_bomb"}))
        .await
        .json();
    assert!(
        unknown["detail"]
            .as_str()
            .unwrap()
            .contains("unknown job type")
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = TestApp::spawn().await;
    for content_type in [Some("text/plain"), None] {
        let mut req = app
            .client
            .request(Method::POST, "/api/v1/jobs")
            .bearer(Some(&app.admin))
            .raw("{\"type\": \"echo\"}");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        problem(&req.send().await, 415, "unsupported_media_type");
    }
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(1024 * 1024 + 10);
    let resp = app
        .submit(&app.admin, json!({"type": "echo", "payload": big}))
        .await;
    problem(&resp, 413, "payload_too_large");
    // Just under the limit is fine.
    let ok = "x".repeat(1000 * 1000);
    let resp = app
        .submit(&app.admin, json!({"type": "echo", "payload": ok}))
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    let unknown = app
        .get(
            &app.admin,
            "/api/v1/jobs/0190b6a2-0000-7000-8000-000000000000",
        )
        .await;
    problem(&unknown, 404, "not_found");
    let not_uuid = app.get(&app.admin, "/api/v1/jobs/not-a-uuid").await;
    assert_eq!(problem(&not_uuid, 400, "invalid_request")["field"], "id");
    let no_route = app.get(&app.admin, "/api/v1/nothing-here").await;
    problem(&no_route, 404, "not_found");
    let wrong_method = app.call(Method::DELETE, &app.admin, "/api/v1/jobs").await;
    problem(&wrong_method, 405, "method_not_allowed");
    assert!(wrong_method.header("allow").is_some());
}

#[tokio::test]
async fn request_ids_are_echoed_and_named_in_problems() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .request(Method::GET, "/api/v1/jobs/not-a-uuid")
        .bearer(Some(&app.admin))
        .header("x-request-id", "req-abc-123")
        .send()
        .await;
    assert_eq!(resp.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(resp.json()["request_id"], "req-abc-123");
    let generated = app.get(&app.admin, "/api/v1/me").await;
    let id = generated.header("x-request-id").expect("a generated id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // A client's id that is not a short token is replaced, not echoed into logs and
    // problems.
    let long = "x".repeat(65);
    for bad in ["has space", "quote\"d", "<script>", long.as_str()] {
        let resp = app
            .client
            .request(Method::GET, "/api/v1/jobs/not-a-uuid")
            .bearer(Some(&app.admin))
            .header("x-request-id", bad)
            .send()
            .await;
        let echoed = resp.header("x-request-id").expect("an id").to_owned();
        assert_eq!(echoed.len(), 36, "{bad:?} replaced by a UUID: {echoed}");
        assert_eq!(resp.json()["request_id"], echoed.as_str());
    }
}

/// Responses that carry a token secret tell every cache not to keep them.
#[tokio::test]
async fn token_responses_are_not_stored_by_caches() {
    let app = TestApp::spawn().await;
    let login = app
        .client
        .send_json(
            Method::POST,
            None,
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": crate::helpers::ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let token = app
        .send(
            Method::POST,
            &app.admin,
            "/api/v1/tokens",
            &json!({"name": "ci"}),
        )
        .await;
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.text());
    assert_eq!(token.header("cache-control"), Some("no-store"));
}

/// Every response, a success, a problem, an unknown route, the docs, carries the standard
/// security headers.
#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    let responses = [
        app.get(&app.admin, "/api/v1/me").await,
        app.client.get(None, "/api/v1/me").await,
        app.client.get(None, "/no/such/route").await,
        app.client.get(None, "/healthz").await,
        app.client.get(None, "/docs").await,
    ];
    for resp in &responses {
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("x-frame-options"), Some("DENY"));
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    }
    // What a token unlocked is not stored by any cache; a job read may be kept by the
    // browser alone, revalidated by its ETag.
    assert_eq!(responses[0].header("cache-control"), Some("no-store"));
    assert_eq!(
        responses[3].header("cache-control"),
        None,
        "healthz is public"
    );
    let id = app
        .send(
            Method::POST,
            &app.admin,
            "/api/v1/jobs",
            &json!({"type": "echo", "payload": {}}),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = app.get(&app.admin, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job.header("cache-control"), Some("private, no-cache"));
    let list = app.get(&app.admin, "/api/v1/jobs").await;
    assert_eq!(list.header("cache-control"), Some("no-store"));
}
