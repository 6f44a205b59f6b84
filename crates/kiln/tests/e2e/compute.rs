//! Compute job types through the whole service: results, progress, cancel, and artifacts
//! downloaded byte-exact by their owner only.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_kernels::npy;
use serde_json::json;

use crate::helpers::TestApp;

const LONG: Duration = Duration::from_secs(30);

fn first_primes(n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut k = 2u32;
    while out.len() < n {
        if (2..k)
            .take_while(|d| d * d <= k)
            .all(|d| !k.is_multiple_of(d))
        {
            out.push(k);
        }
        k += 1;
    }
    out
}

#[tokio::test]
async fn primes_artifact_downloads_byte_exact_for_its_owner_only() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "primes", "payload": {"n": 1000}}),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    assert_eq!(job["result"]["nth"], 7919);
    assert_eq!(job["result"]["count"], 1000);
    assert_eq!(job["progress"], 1.0);

    let list = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/artifacts"))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    let mut expected = npy::header("<u4", false, &[1000]);
    npy::write_u32(&mut expected, &first_primes(1000)).unwrap();
    let links = json!([{"name": "primes.npy", "bytes": expected.len(),
            "content_type": "application/octet-stream",
            "url": format!("/api/v1/jobs/{id}/artifacts/primes.npy")}]);
    assert_eq!(list.json(), links);
    // The result links the same files.
    assert_eq!(job["result"]["artifacts"], links);

    let path = format!("/api/v1/jobs/{id}/artifacts/primes.npy");
    let file = app.client.get(Some(&app.admin), &path).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(
        file.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        file.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(&file.body[..], &expected[..]);

    let other = app.user("mallory", "client").await;
    for path in [path.clone(), format!("/api/v1/jobs/{id}/artifacts")] {
        let resp = app.client.get(Some(&other), &path).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(resp.json()["code"], "not_found");
    }
    for bad in ["missing.npy", "..", ".primes.npy", "a%2F..%2Fkiln.db"] {
        let resp = app
            .client
            .get(
                Some(&app.admin),
                &format!("/api/v1/jobs/{id}/artifacts/{bad}"),
            )
            .await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{bad}: {}", resp.text());
    }

    // Deleting the job deletes its artifacts (kept in the local object store).
    let dir = app.dir.path().join("objects/artifacts").join(&id);
    assert!(dir.join("1/primes.npy").exists(), "{}", dir.display());
    assert!(
        !app.dir
            .path()
            .join("scratch")
            .join(id.replace('-', "") + ".1")
            .exists(),
        "the scratch copy was moved, not left behind"
    );
    let deleted = app
        .client
        .request(Method::DELETE, &format!("/api/v1/jobs/{id}"))
        .bearer(Some(&app.admin))
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(!dir.exists());
    let gone = app.client.get(Some(&app.admin), &path).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn csv_aggregate_result_matches_its_own_csv_artifact() {
    let app = TestApp::spawn().await;
    let body = json!({"type": "csv_aggregate",
        "payload": {"rows": 5000, "groups": 7, "operation": "group_by", "seed": 3}});
    let id = app.submit_ok(&app.admin, body).await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let result = &job["result"];
    assert_eq!(
        (result["rows"].as_u64(), result["bad_rows"].as_u64()),
        (Some(5000), Some(0))
    );

    let csv = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{id}/artifacts/data.csv"),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    // Aggregate the downloaded file independently, in thousandths (exact integers).
    let mut sums = std::collections::BTreeMap::<String, (u64, i64)>::new();
    let text = csv.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,group,value,timestamp"));
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let (int, frac) = fields[2].split_once('.').unwrap();
        let milli = int.parse::<i64>().unwrap() * 1000 + frac.parse::<i64>().unwrap();
        let e = sums.entry(fields[1].to_owned()).or_default();
        e.0 += 1;
        e.1 += milli;
    }
    let groups = result["groups"].as_array().unwrap();
    assert_eq!(groups.len(), sums.len());
    for (g, (name, (count, milli))) in groups.iter().zip(&sums) {
        assert_eq!(g["group"], name.as_str());
        assert_eq!(g["count"], *count);
        let sum = g["sum"].as_f64().unwrap();
        assert!((sum - *milli as f64 / 1000.0).abs() < 1e-6, "{name}: {sum}");
    }
    app.stop().await;
}

#[tokio::test]
async fn matrix_product_artifact_has_the_npy_shape() {
    let app = TestApp::spawn().await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "matrix_multiply", "payload": {"n": 8, "seed": 1}}),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    assert_eq!(job["result"]["n"], 8);
    let file = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{id}/artifacts/product.npy"),
        )
        .await;
    let header = npy::header("<f8", true, &[8, 8]);
    assert_eq!(&file.body[..header.len()], &header[..]);
    assert_eq!(file.body.len(), header.len() + 8 * 8 * 8);
    // The checksum in the result is the sum of the stored product.
    let sum: f64 = file.body[header.len()..]
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .sum();
    let checksum = job["result"]["checksum"].as_f64().unwrap();
    assert!((sum - checksum).abs() < 1e-9, "{sum} vs {checksum}");
    app.stop().await;
}

#[tokio::test]
async fn a_running_compute_job_shows_progress_and_stops_on_cancel() {
    let app = TestApp::spawn().await;
    // The largest product: over a second of work on a fast host, where the largest `primes`
    // (~0.2 s) may finish before its first progress is even stored.
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "matrix_multiply", "payload": {"n": 4096}}),
        )
        .await;
    let status = kiln_testkit::wait_until("progress above zero", LONG, || async {
        let s = app
            .client
            .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/status"))
            .await
            .json();
        let p = s["progress"].as_f64().unwrap_or(0.0);
        if s["state"] == "running" && p > 0.0 {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await;
    assert!(status["progress"].as_f64().unwrap() < 1.0);
    let busy = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/artifacts"))
        .await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    let cancelled = app.cancel(&app.admin, &id).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    assert_eq!(cancelled.json()["state"], "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn a_result_over_64_kib_is_stored_as_an_artifact_with_a_summary_inline() {
    let app = TestApp::spawn().await;
    let body = json!({"type": "csv_aggregate",
        "payload": {"rows": 200_000, "groups": 10_000, "operation": "group_by"}});
    let id = app.submit_ok(&app.admin, body).await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let result = &job["result"];
    assert_eq!(result["rows"], 200_000);
    assert_eq!(result["result_artifact"], "result.json");
    assert!(
        result.get("groups").is_none(),
        "the big array is not inline"
    );
    let full = app
        .client
        .get(
            Some(&app.admin),
            &format!("/api/v1/jobs/{id}/artifacts/result.json"),
        )
        .await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.header("content-type"), Some("application/json"));
    assert_eq!(
        full.body.len() as u64,
        result["result_bytes"].as_u64().unwrap()
    );
    let full = full.json();
    assert_eq!(full["groups"].as_array().unwrap().len(), 10_000);
    assert_eq!(full["rows"], 200_000);

    let small = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {"k": "v"}}))
        .await;
    let small = app.wait_state(&app.admin, &small, "succeeded", LONG).await;
    assert_eq!(small["result"], json!({"k": "v"}));
    app.stop().await;
}
