//! Correct across nodes with no configuration: the default object store in the database,
//! and the registry of nodes (one live process per id, one object store per cluster).

use std::process::Command;

use hyper::{Method, StatusCode};
use kiln_testkit::Part;
use kiln_testkit::pg::TempPostgres;
use serde_json::json;

use super::*;

/// With no object store configured, a PostgreSQL deployment keeps files and artifacts in
/// the database: a CSV uploaded through A is read by a job B runs, B's artifact is served
/// by A, and A lists both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_every_node_reaches_every_upload_and_artifact() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let (a, b, client, token, _blocker) = a_busy_b_free(&db).await;
    let csv = b"region,amount\nnorth,1.5\nsouth,2\nnorth,3\n";
    let resp = client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(&token))
        .multipart(&[Part::file("file", "sales.csv", "text/csv", csv)])
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let file = resp.json()["id"].as_str().unwrap().to_owned();
    let sum = submit(
        &client,
        &token,
        json!({"type": "csv_aggregate", "payload": {
            "file_id": file, "operation": "sum", "column": "amount"}}),
    )
    .await;
    let done = wait_state(&client, &token, &sum, "succeeded").await;
    assert_eq!(runners(&client, &token, &sum).await, ["node-b"]);
    assert_eq!(done["result"]["sum"], 6.5, "{done}");

    let primes = submit(
        &client,
        &token,
        json!({"type": "primes", "payload": {"n": 1_000}}),
    )
    .await;
    let done = wait_state(&client, &token, &primes, "succeeded").await;
    assert_eq!(runners(&client, &token, &primes).await, ["node-b"]);
    let npy = client
        .get(
            Some(&token),
            &format!("/api/v1/jobs/{primes}/artifacts/primes.npy"),
        )
        .await;
    assert_eq!(npy.status, StatusCode::OK, "{}", npy.text());
    let last = u32::from_le_bytes(npy.body[npy.body.len() - 4..].try_into().unwrap());
    assert_eq!(done["result"]["nth"], last);
    assert_eq!(last, 7_919);

    let nodes = client.get(Some(&token), "/api/v1/admin/nodes").await;
    assert_eq!(nodes.status, StatusCode::OK, "{}", nodes.text());
    let nodes = nodes.json();
    let seen: Vec<(&str, &str, u64, u64, bool, &str)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                n["role"].as_str().unwrap(),
                n["slots"].as_u64().unwrap(),
                n["running"].as_u64().unwrap(),
                n["live"].as_bool().unwrap(),
                n["objects"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("node-a", "serve", 1, 1, true, "database"),
            ("node-b", "worker", 4, 0, true, "database"),
        ]
    );
    drop((a, b));
}

/// Starts `kiln worker` and waits for it to exit; returns its exit success and its log.
fn refused(db: &TempPostgres, node_id: &str, objects: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.env_clear();
    if let Some(url) = objects {
        command.env("KILN_OBJECT_STORE", url);
    }
    let out = command
        .arg("worker")
        .env("DATABASE_URL", &db.url)
        .env("KILN_NODE_ID", node_id)
        .env("KILN_LEASE", "2s")
        .env("KILN_LOG", "warn")
        .output()
        .expect("kiln runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

/// A second process with a live node's id refuses to start (it would rescue the live
/// node's running jobs as its own), and so does a node with another object store than the
/// live ones; once the first node stops, its id is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_would_clash_with_a_live_one_refuses_to_start() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let (a, client, token, blocker) = a_busy(&db).await;

    let (ok, log) = refused(&db, "node-a", None);
    assert!(!ok, "a second node-a started: {log}");
    assert!(
        log.contains("node id `node-a` is held by a live node"),
        "{log}"
    );
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let (ok, log) = refused(&db, "node-b", Some(&url));
    assert!(!ok, "a node with its own object store started: {log}");
    assert!(
        log.contains("every node must share one object store"),
        "{log}"
    );
    // Neither touched node A's job.
    let job = job(&client, &token, &blocker).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("running"), Some(1))
    );
    assert_eq!(runners(&client, &token, &blocker).await, ["node-a"]);
    drop(a);
}
