//! Artifacts in object storage: a non-local backend (`memory:///`) serves them byte-exact
//! like the local directory does (deletion from it is checked in kiln-server's API tests), and
//! pruning a job removes its stored artifacts.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_kernels::npy;
use serde_json::json;

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(30);

fn memory_store() -> Opts {
    Opts {
        flags: vec!["--object-store".into(), "memory:///kiln".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn with_a_memory_object_store_artifacts_download_byte_exact_and_leave_no_local_files() {
    let app = TestApp::spawn_with(memory_store()).await;
    let body = json!({"type": "csv_aggregate",
        "payload": {"rows": 40_000, "groups": 9, "operation": "sum", "seed": 5}});
    let csv_job = app.submit_ok(&app.admin, body).await;
    let body = json!({"type": "matrix_multiply", "payload": {"n": 16, "seed": 2}});
    let matrix_job = app.submit_ok(&app.admin, body).await;
    let csv = app
        .wait_state(&app.admin, &csv_job, "succeeded", LONG)
        .await;
    app.wait_state(&app.admin, &matrix_job, "succeeded", LONG)
        .await;

    // The CSV the kernel generated and aggregated, regenerated here independently.
    let mut expected = Vec::new();
    let (ctx, _log) = kiln_kernels::test_context(json!(null));
    let check = kiln_kernels::cpu::Check::new(&ctx);
    kiln_kernels::csv_aggregate::generate(&mut expected, 40_000, 9, 5, &check, (0.0, 1.0)).unwrap();
    assert_eq!(csv["result"]["bytes"], expected.len());
    let list = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{csv_job}/artifacts"),
        )
        .await;
    let links = json!([{"name": "data.csv", "bytes": expected.len(),
            "content_type": "text/csv; charset=utf-8",
            "url": format!("/api/v1/jobs/{csv_job}/artifacts/data.csv")}]);
    assert_eq!(list.json(), links);
    assert_eq!(csv["result"]["artifacts"], links);
    let path = format!("/api/v1/jobs/{csv_job}/artifacts/data.csv");
    let file = app.client.get(Some(&app.admin), &path).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.header("content-type"), Some("text/csv; charset=utf-8"));
    let length = expected.len().to_string();
    assert_eq!(file.header("content-length"), Some(length.as_str()));
    assert!(file.body[..] == expected[..], "the CSV differs");

    let product = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{matrix_job}/artifacts/product.npy"),
        )
        .await;
    let header = npy::header("<f8", true, &[16, 16]);
    assert_eq!(product.body.len(), header.len() + 16 * 16 * 8);
    assert_eq!(&product.body[..header.len()], &header[..]);

    let mallory = app.user("mallory", "client").await;
    let resp = app.client.get(Some(&mallory), &path).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);

    let deleted = app
        .client
        .request(Method::DELETE, &format!("/api/v1/jobs/{csv_job}"))
        .bearer(Some(&app.admin))
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.client.get(Some(&app.admin), &path).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!app.dir.path().join("objects").exists(), "nothing on disk");
    assert!(
        std::fs::read_dir(app.dir.path().join("scratch"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no scratch files left"
    );
    app.stop().await;
}

#[tokio::test]
async fn pruning_a_job_removes_its_stored_artifacts_and_keeps_the_others() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in [100, 200] {
        let body = json!({"type": "primes", "payload": {"n": n}});
        let id = app.submit_ok(&app.admin, body).await;
        app.wait_state(&app.admin, &id, "succeeded", LONG).await;
        ids.push(id);
    }
    let stored = |dir: &std::path::Path, id: &str| {
        dir.join("objects/artifacts")
            .join(id)
            .join("1/primes.npy")
            .exists()
    };
    let dir = app.stop().await;
    assert!(stored(dir.path(), &ids[0]) && stored(dir.path(), &ids[1]));

    // Keeping one finished job prunes the older one at start-up, with its artifacts.
    let opts = Opts {
        flags: vec!["--max-jobs".into(), "1".into()],
        ..Default::default()
    };
    let app = TestApp::spawn_in(dir, opts).await;
    kiln_testkit::wait_until("the older job's artifacts to go", LONG, || async {
        if stored(app.dir.path(), &ids[0]) {
            Err("still stored")
        } else {
            Ok(())
        }
    })
    .await;
    let old = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{}", ids[0]))
        .await;
    assert_eq!(old.status, StatusCode::NOT_FOUND);
    assert!(
        stored(app.dir.path(), &ids[1]),
        "the kept job's artifacts stay"
    );
    let kept = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{}/artifacts/primes.npy", ids[1]),
        )
        .await;
    assert_eq!(kept.status, StatusCode::OK);
    app.stop().await;
}
