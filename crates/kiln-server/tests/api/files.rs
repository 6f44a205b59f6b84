//! `/api/v1/files`: uploads streamed to a local object store, owner-only reads and deletes,
//! the size limit, and `csv_aggregate {file_id}` submissions checked against the files.

use hyper::{Method, StatusCode};
use kiln_objects::Objects;
use kiln_server::ServerConfig;
use kiln_testkit::{Part, TestResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::helpers::TestApp;

/// An app whose uploads go to a temp dir, limited to `limit` bytes.
async fn spawn(limit: u64) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        objects: Some(Objects::local(&dir.path().join("objects")).unwrap()),
        upload_limit: limit,
        ..ServerConfig::default()
    };
    (TestApp::spawn_with(config).await, dir)
}

async fn upload(app: &TestApp, token: &str, parts: &[Part<'_>]) -> TestResponse {
    app.client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(token))
        .multipart(parts)
        .send()
        .await
}

/// Every regular file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn an_upload_is_stored_with_its_sha256_and_downloads_byte_exact() {
    let (app, _dir) = spawn(4 << 20).await;
    let alice = app.user("alice", "client").await;
    // Over the 1 MiB JSON body limit: uploads have their own.
    let data = sample(1_500_000);
    let resp = upload(
        &app,
        &alice,
        &[
            Part::text("note", "ignored"),
            Part::file("file", "dir/data.bin", "application/x-test", &data),
        ],
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let meta = resp.json();
    let id = meta["id"].as_str().unwrap().to_owned();
    assert_eq!(
        resp.header("location"),
        Some(&*format!("/api/v1/files/{id}"))
    );
    assert_eq!(meta["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(meta["size"], data.len() as u64);
    assert_eq!(meta["name"], "data.bin");
    assert_eq!(meta["content_type"], "application/x-test");
    assert!(meta["created_at"].as_str().unwrap().ends_with('Z'));

    let got = app.get(&alice, &format!("/api/v1/files/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), meta);

    let content = app
        .get(&alice, &format!("/api/v1/files/{id}/content"))
        .await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(content.header("content-type"), Some("application/x-test"));
    assert_eq!(content.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        content.header("content-disposition"),
        Some("attachment; filename=\"data.bin\"")
    );
    assert_eq!(
        content.header("content-length"),
        Some(&*data.len().to_string())
    );
    assert_eq!(content.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn over_the_limit_is_413_and_nothing_is_stored() {
    let (app, dir) = spawn(10_000).await;
    let alice = app.user("alice", "client").await;
    let data = sample(10_001);
    let resp = upload(
        &app,
        &alice,
        &[Part::file(
            "file",
            "big.bin",
            "application/octet-stream",
            &data,
        )],
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        resp.text()
    );
    assert_eq!(resp.json()["code"], "payload_too_large");
    assert!(files_under(&dir.path().join("objects")).is_empty());
    // A declared length far over the limit is refused before reading.
    let huge = sample(200_000);
    let resp = upload(
        &app,
        &alice,
        &[Part::file(
            "file",
            "huge.bin",
            "application/octet-stream",
            &huge,
        )],
    )
    .await;
    assert_eq!(
        resp.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        resp.text()
    );
    assert!(files_under(&dir.path().join("objects")).is_empty());
    // Exactly the limit is accepted.
    let resp = upload(
        &app,
        &alice,
        &[Part::file(
            "file",
            "ok.bin",
            "application/octet-stream",
            &data[..10_000],
        )],
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
}

#[tokio::test]
async fn a_non_multipart_body_is_415_and_a_missing_file_field_is_400() {
    let (app, _dir) = spawn(1 << 20).await;
    let alice = app.user("alice", "client").await;
    let resp = app
        .send(Method::POST, &alice, "/api/v1/files", &json!({"file": "x"}))
        .await;
    assert_eq!(resp.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(resp.json()["code"], "unsupported_media_type");
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let resp = upload(&app, &alice, &[Part::text("other", "value")]).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert_eq!(resp.json()["field"], "file");
    let resp = app
        .client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(&alice))
        .header("content-type", "multipart/form-data; boundary=x")
        .raw("garbage")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
}

#[tokio::test]
async fn another_users_file_is_404_everywhere_and_a_deleted_file_is_gone() {
    let (app, dir) = spawn(1 << 20).await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let resp = upload(
        &app,
        &alice,
        &[Part::file("file", "a.csv", "text/csv", b"a\n1\n")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}/content"),
    ] {
        let resp = app.get(&bob, &path).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.json()["code"], "not_found");
    }
    let resp = app
        .call(Method::DELETE, &bob, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let unknown = app
        .get(&alice, "/api/v1/files/0190f5e2-7c4a-7b1e-9f00-1234567890ab")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&alice, "/api/v1/files/not-an-id").await.status,
        StatusCode::NOT_FOUND
    );

    let resp = app
        .call(Method::DELETE, &alice, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    for path in [
        format!("/api/v1/files/{id}"),
        format!("/api/v1/files/{id}/content"),
    ] {
        assert_eq!(app.get(&alice, &path).await.status, StatusCode::NOT_FOUND);
    }
    let again = app
        .call(Method::DELETE, &alice, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(files_under(&dir.path().join("objects")).is_empty());
}

#[tokio::test]
async fn a_csv_job_must_name_a_file_of_its_submitter() {
    let (app, _dir) = spawn(1 << 20).await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let resp = upload(
        &app,
        &alice,
        &[Part::file("file", "a.csv", "text/csv", b"g,v\nx,1\n")],
    )
    .await;
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let job = |file_id: &str| json!({"type": "csv_aggregate", "payload": {"file_id": file_id, "operation": "sum", "column": "v"}});
    app.submit_ok(&alice, job(&id)).await;
    for (token, file_id) in [
        (&bob, id.as_str()),
        (&alice, "0190f5e2-7c4a-7b1e-9f00-1234567890ab"),
    ] {
        let resp = app.submit(token, job(file_id)).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
        assert_eq!(resp.json()["field"], "payload.file_id");
    }
    let resp = app.submit(&alice, job("nope")).await;
    assert_eq!(resp.json()["field"], "payload.file_id");
}

#[tokio::test]
async fn without_object_storage_uploads_are_503() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let resp = upload(&app, &alice, &[Part::file("file", "a", "text/plain", b"x")]).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.json()["code"], "uploads_disabled");
}

#[tokio::test]
async fn uploads_past_the_storage_quota_are_507_and_a_delete_makes_room() {
    let dir = TempDir::new().unwrap();
    let config = ServerConfig {
        objects: Some(Objects::local(dir.path()).unwrap()),
        storage_quota: Some(1000),
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", "client").await;
    let file = |name, size: usize| (name, vec![b'x'; size]);
    let (name, data) = file("a.bin", 600);
    let first = upload(
        &app,
        &alice,
        &[Part::file("file", name, "application/octet-stream", &data)],
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // 600 + 500 > 1000: refused, and nothing of it kept.
    let (name, data) = file("b.bin", 500);
    let over = upload(
        &app,
        &alice,
        &[Part::file("file", name, "application/octet-stream", &data)],
    )
    .await;
    let body = crate::helpers::problem(&over, 507, "storage_quota");
    assert!(body["detail"].as_str().unwrap().contains("600"), "{body}");
    let listed = app.get(&alice, "/api/v1/files").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Another user has a quota of their own.
    let bob = app.user("bob", "client").await;
    let ok = upload(
        &app,
        &bob,
        &[Part::file("file", name, "application/octet-stream", &data)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // A delete makes room again.
    let deleted = app
        .call(Method::DELETE, &alice, &format!("/api/v1/files/{id}"))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let now_fits = upload(
        &app,
        &alice,
        &[Part::file("file", name, "application/octet-stream", &data)],
    )
    .await;
    assert_eq!(now_fits.status, StatusCode::CREATED, "{}", now_fits.text());
}
