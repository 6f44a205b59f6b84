//! `/api/v1/jobs/{id}/artifacts[/{name}]` over a non-local object store (`memory:///`):
//! served from the store by the job's current attempt, owner only, and deleted with the job.

use hyper::{Method, StatusCode};
use kiln_domain::JobId;
use kiln_objects::Objects;
use kiln_server::ServerConfig;
use kiln_store::Outcome;
use serde_json::json;

use crate::helpers::{TestApp, problem};

async fn spawn() -> (TestApp, Objects) {
    let objects = Objects::from_url("memory:///", Vec::<(String, String)>::new()).unwrap();
    let config = ServerConfig {
        objects: Some(objects.clone()),
        ..ServerConfig::default()
    };
    (TestApp::spawn_with(config).await, objects)
}

/// Stores `data` as artifact `name` of the job's attempt, as the worker would.
async fn put(objects: &Objects, id: JobId, attempt: u32, name: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    objects
        .artifact_put_file(id, attempt, name, &path)
        .await
        .unwrap();
}

#[tokio::test]
async fn artifacts_are_served_from_the_object_store_to_the_owner_and_deleted_with_the_job() {
    let (app, objects) = spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    let job_id: JobId = id.parse().unwrap();
    let leases = app.claim_all().await;
    assert_eq!(leases[0].attempt, 1);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put(&objects, job_id, 1, "data.csv", &data).await;
    // Another attempt's file (a stale attempt that uploaded late) is never served.
    put(&objects, job_id, 7, "stale.csv", b"old").await;

    let list_path = format!("/api/v1/jobs/{id}/artifacts");
    let running = app.get(&app.admin, &list_path).await;
    problem(&running, 409, "job_running");
    app.store()
        .job_complete(&leases[0], Outcome::Succeeded(json!(1)), chrono::Utc::now())
        .await
        .unwrap();

    let list = app.get(&app.admin, &list_path).await;
    assert_eq!(
        list.json(),
        json!([{"name": "data.csv", "bytes": data.len(), "content_type": "text/csv; charset=utf-8",
                "url": format!("/api/v1/jobs/{id}/artifacts/data.csv")}])
    );
    let path = format!("/api/v1/jobs/{id}/artifacts/data.csv");
    let file = app.get(&app.admin, &path).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.header("content-type"), Some("text/csv; charset=utf-8"));
    let length = data.len().to_string();
    assert_eq!(file.header("content-length"), Some(length.as_str()));
    assert!(file.body[..] == data[..], "the bytes differ");
    for name in ["stale.csv", "missing.csv", "..", "a%2Fb"] {
        let resp = app
            .get(&app.admin, &format!("/api/v1/jobs/{id}/artifacts/{name}"))
            .await;
        problem(&resp, 404, "not_found");
    }
    let other = app.user("mallory", "client").await;
    for p in [&path, &list_path] {
        problem(&app.get(&other, p).await, 404, "not_found");
    }

    let deleted = app
        .call(Method::DELETE, &app.admin, &format!("/api/v1/jobs/{id}"))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(objects.artifact_jobs().await.unwrap().is_empty());
    for attempt in [1, 7] {
        assert!(
            objects
                .artifact_list(job_id, attempt)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_job_that_stays_queued_or_a_server_without_storage_lists_no_artifacts() {
    let (app, _objects) = spawn().await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": 1}))
        .await;
    let list = app
        .get(&app.admin, &format!("/api/v1/jobs/{id}/artifacts"))
        .await;
    assert_eq!(list.json(), json!([]));

    let bare = TestApp::spawn().await;
    let id = bare
        .submit_ok(&bare.admin, json!({"type": "echo", "payload": 1}))
        .await;
    let list = bare
        .get(&bare.admin, &format!("/api/v1/jobs/{id}/artifacts"))
        .await;
    assert_eq!(list.json(), json!([]));
    let file = bare
        .get(&bare.admin, &format!("/api/v1/jobs/{id}/artifacts/x.csv"))
        .await;
    problem(&file, 404, "not_found");
}

/// An `external` job's reported result over 64 KiB becomes the artifact `result.json`, as a
/// worker's does; a smaller one stays inline; without object storage it is a 400.
#[tokio::test]
async fn a_large_reported_result_is_kept_as_an_artifact() {
    let (app, _objects) = spawn().await;
    let ext = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "etl"}}),
        )
        .await;
    let path = format!("/api/v1/jobs/{ext}");
    let running = json!({"state": "running"});
    let running = app.send(Method::PATCH, &app.admin, &path, &running).await;
    assert_eq!(running.status, StatusCode::OK);
    let rows: Vec<u32> = (0..20_000).collect();
    let result = json!({"count": 20_000, "rows": rows});
    let body = json!({"state": "succeeded", "result": result});
    let done = app.send(Method::PATCH, &app.admin, &path, &body).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    let kept = done.json()["result"].clone();
    let bytes = serde_json::to_vec(&result).unwrap().len();
    assert!(bytes > 64 * 1024);
    assert_eq!(
        kept,
        json!({"count": 20_000, "result_artifact": "result.json", "result_bytes": bytes})
    );
    let file = app
        .get(&app.admin, &format!("{path}/artifacts/result.json"))
        .await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.json(), result);

    // A small result stays inline.
    let small = app
        .submit_ok(
            &app.admin,
            json!({"type": "external", "payload": {"name": "s"}}),
        )
        .await;
    let small_path = format!("/api/v1/jobs/{small}");
    let running = json!({"state": "running"});
    app.send(Method::PATCH, &app.admin, &small_path, &running)
        .await;
    let done = app
        .send(
            Method::PATCH,
            &app.admin,
            &small_path,
            &json!({"state": "succeeded", "result": {"rows": 3}}),
        )
        .await;
    assert_eq!(done.json()["result"], json!({"rows": 3}));

    // No object storage: nowhere to keep it.
    let bare = TestApp::spawn().await;
    let ext = bare
        .submit_ok(
            &bare.admin,
            json!({"type": "external", "payload": {"name": "x"}}),
        )
        .await;
    let refused = bare
        .send(
            Method::PATCH,
            &bare.admin,
            &format!("/api/v1/jobs/{ext}"),
            &json!({"state": "succeeded", "result": result}),
        )
        .await;
    problem(&refused, 400, "invalid_request");
    let job = bare.get(&bare.admin, &format!("/api/v1/jobs/{ext}")).await;
    assert_eq!(job.json()["state"], "queued", "nothing half-done");
}
