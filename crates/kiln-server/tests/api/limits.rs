//! Per-user limits: the active-job quota, and the limits an admin sets for one user.

use hyper::{Method, StatusCode};
use kiln_objects::Objects;
use kiln_server::ServerConfig;
use kiln_server::rate::SubmitRate;
use kiln_testkit::Part;
use serde_json::{Value, json};

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

/// A server with the usual defaults and a local object store.
async fn spawn_with_defaults() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        objects: Some(Objects::local(dir.path()).unwrap()),
        submit_rate: Some(SubmitRate::parse("100/s", 1000).unwrap()),
        max_active: Some(10_000),
        slot_share: Some(0.5),
        storage_quota: Some(1 << 30),
        ..ServerConfig::default()
    };
    (TestApp::spawn_with(config).await, dir)
}

/// Uploads `data` as `token`'s file.
async fn upload(app: &TestApp, token: &str, data: &[u8]) -> kiln_testkit::TestResponse {
    app.client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(token))
        .multipart(&[Part::file(
            "file",
            "a.bin",
            "application/octet-stream",
            data,
        )])
        .send()
        .await
}

async fn put_limits(app: &TestApp, id: i64, body: &Value) -> kiln_testkit::TestResponse {
    let path = format!("/api/v1/admin/users/{id}/limits");
    app.send(Method::PUT, &app.admin, &path, body).await
}

#[tokio::test]
async fn an_admin_reads_and_sets_a_users_limits() {
    let (app, _dir) = spawn_with_defaults().await;
    let ada = app.user("ada", "client").await;
    let id = app.get(&ada, "/api/v1/me").await.json()["id"]
        .as_i64()
        .unwrap();
    let path = format!("/api/v1/admin/users/{id}/limits");

    let read = app.get(&app.admin, &path).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    let read = read.json();
    assert_eq!(read["overrides"]["max_active"], Value::Null);
    assert_eq!(
        read["effective"],
        json!({"submit_rate": "100/s", "submit_burst": 1000, "max_active": 10_000,
               "slot_share": 0.5, "storage": 1u64 << 30})
    );

    let body = json!({"submit_rate": "1/h", "submit_burst": 1, "max_active": 2,
                      "slot_share": 0.25, "storage": 0});
    let set = put_limits(&app, id, &body).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let set = set.json();
    assert_eq!(set["overrides"]["submit_rate"], "1/h");
    assert_eq!(
        set["effective"],
        json!({"submit_rate": "1/h", "submit_burst": 1, "max_active": 2,
               "slot_share": 0.25, "storage": null})
    );
    assert_eq!(app.get(&app.admin, &path).await.json(), set);

    // They hold at once: one submission an hour.
    app.submit_ok(&ada, json!({"type": "echo"})).await;
    let limited = app.submit(&ada, json!({"type": "echo"})).await;
    problem(&limited, 429, "rate_limited");

    // An empty object gives every default back.
    let cleared = put_limits(&app, id, &json!({})).await.json();
    assert_eq!(cleared["effective"]["submit_rate"], "100/s");
    app.submit_ok(&ada, json!({"type": "echo"})).await;

    // Only admins; an unknown user is 404; bad values name their field and change nothing.
    let refused = app.send(Method::PUT, &ada, &path, &json!({})).await;
    problem(&refused, 403, "forbidden");
    problem(&app.get(&ada, &path).await, 403, "forbidden");
    problem(&put_limits(&app, 9_999, &json!({})).await, 404, "not_found");
    for (bad, field) in [
        (json!({"submit_rate": "fast"}), "submit_rate"),
        (json!({"submit_burst": 0}), "submit_burst"),
        (json!({"slot_share": 0}), "slot_share"),
        (json!({"slot_share": 2.5}), "slot_share"),
        (json!({"max_active": -1}), "max_active"),
        (json!({"speed": 1}), "speed"),
    ] {
        let resp = put_limits(&app, id, &bad).await;
        let body = problem(&resp, 400, "invalid_request");
        assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
    }
    assert_eq!(app.get(&app.admin, &path).await.json(), cleared);
}

#[tokio::test]
async fn a_users_own_quota_and_storage_hold_for_them_alone_even_an_operator() {
    let (app, _dir) = spawn_with_defaults().await;
    let op = app.user("op", "operator").await;
    let ada = app.user("ada", "client").await;
    let id_of = |me: Value| me["id"].as_i64().unwrap();
    let op_id = id_of(app.get(&op, "/api/v1/me").await.json());
    let ada_id = id_of(app.get(&ada, "/api/v1/me").await.json());

    // Operators have no quota by default; one set for them holds.
    put_limits(&app, op_id, &json!({"max_active": 1})).await;
    app.submit_ok(&op, json!({"type": "echo"})).await;
    problem(
        &app.submit(&op, json!({"type": "echo"})).await,
        429,
        "active_quota",
    );
    app.submit_ok(&app.admin, json!({"type": "echo"})).await;

    // A storage quota of 10 bytes: an 11-byte upload is refused, and nothing is kept.
    put_limits(&app, ada_id, &json!({"storage": 10})).await;
    problem(
        &upload(&app, &ada, b"01234567890").await,
        507,
        "storage_quota",
    );
    let kept = app.get(&ada, "/api/v1/files").await.json();
    assert_eq!(kept.as_array().map(Vec::len), Some(0), "{kept}");
    assert_eq!(
        upload(&app, &ada, b"0123456789").await.status,
        StatusCode::CREATED
    );
}

/// A database that cannot grow (its cap reached, as a full disk would): submissions get 507
/// with nothing half-stored, and reads keep working.
#[tokio::test]
async fn a_full_database_answers_507_and_keeps_what_it_had() {
    let db = kiln_testkit::TempSqlite::with(kiln_store::sqlite::SqliteOptions {
        // A fresh database is ~300 KB; this leaves room for a few dozen big jobs.
        max_size: Some(600 * 1024),
        ..Default::default()
    });
    let app = TestApp::spawn_on(
        db,
        ServerConfig::default(),
        std::sync::Arc::new(kiln_domain::SystemClock),
    )
    .await;
    let big = "x".repeat(8 * 1024);
    let mut accepted = Vec::new();
    let full = loop {
        let resp = app
            .submit(&app.admin, json!({"type": "echo", "payload": {"pad": big}}))
            .await;
        if resp.status != StatusCode::ACCEPTED {
            break resp;
        }
        accepted.push(resp.json()["id"].as_str().unwrap().to_owned());
        assert!(accepted.len() < 100, "the database never filled up");
    };
    let body = problem(&full, 507, "storage_full");
    assert!(full.header("retry-after").is_some(), "{body}");
    assert!(!accepted.is_empty());
    // Every accepted job is whole; the refused one left nothing behind.
    let page = app.get(&app.admin, "/api/v1/jobs?limit=100").await.json();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), accepted.len());
    let last = accepted.last().unwrap();
    let job = app.get(&app.admin, &format!("/api/v1/jobs/{last}")).await;
    assert_eq!(job.status, StatusCode::OK);
    assert_eq!(
        job.json()["payload"]["pad"].as_str().map(str::len),
        Some(8 * 1024)
    );
}

/// The storage quota counts a user's jobs' artifacts with their files: for uploads, and for
/// an `external` job's large reported result.
#[tokio::test]
async fn artifacts_count_against_the_storage_quota() {
    let (app, _dir) = spawn_with_defaults().await;
    let ada = app.user("ada", "client").await;
    let me = app.get(&ada, "/api/v1/me").await.json();
    let id = me["id"].as_i64().unwrap();
    put_limits(&app, id, &json!({"storage": 100_000})).await;
    let job = app
        .submit_ok(&ada, json!({"type": "external", "payload": {"name": "x"}}))
        .await;
    let job_id: kiln_domain::JobId = job.parse().unwrap();
    // A worker stored 99,990 bytes of artifacts for one of ada's jobs.
    app.store()
        .job_artifacts_set(None, job_id, 99_990)
        .await
        .unwrap();
    problem(&upload(&app, &ada, &[1; 11]).await, 507, "storage_quota");
    assert_eq!(
        upload(&app, &ada, &[1; 10]).await.status,
        StatusCode::CREATED
    );

    // A reported result over 64 KiB that does not fit either: 507, and the job unchanged.
    let path = format!("/api/v1/jobs/{job}");
    let running = json!({"state": "running"});
    app.send(Method::PATCH, &ada, &path, &running).await;
    let rows: Vec<u32> = (0..20_000).collect();
    let body = json!({"state": "succeeded", "result": {"rows": rows}});
    let refused = app.send(Method::PATCH, &ada, &path, &body).await;
    problem(&refused, 507, "storage_quota");
    assert_eq!(app.get(&ada, &path).await.json()["state"], "running");
    // With room, it is kept, and counts from then on.
    put_limits(&app, id, &json!({"storage": 1_000_000})).await;
    let done = app.send(Method::PATCH, &ada, &path, &body).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    let bytes = done.json()["result"]["result_bytes"].as_u64().unwrap();
    let used = app
        .store()
        .owner_artifact_bytes(kiln_domain::UserId(id))
        .await;
    assert_eq!(used.unwrap(), bytes);
}
