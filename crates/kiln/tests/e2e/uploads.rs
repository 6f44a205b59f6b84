//! Uploaded files through the whole service: a CSV with quoted fields and bad rows is
//! uploaded, aggregated by `csv_aggregate {file_id}`, and checked against an independent
//! computation; a file of another user cannot be named.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_testkit::Part;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;

const LONG: Duration = Duration::from_secs(30);

/// Quotes a CSV field (RFC 4180: double the quotes inside).
fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// A CSV of `region,amount,comment` with awkward group names, plus the good rows as
/// (region, amount in thousandths) and the number of bad rows written.
fn awkward_csv() -> (String, Vec<(String, i64)>, u64) {
    let regions = ["North, upper", "South \"deep\"", "East\nside", "West"];
    let mut text = String::from("id,region,amount,comment\n");
    let mut good = Vec::new();
    let mut bad = 0;
    for i in 0..2_000i64 {
        let region = regions[(i * 7 % 4) as usize];
        let milli = (i * 7919) % 100_000 - 20_000;
        let amount = format!("{}.{:03}", milli / 1000, (milli % 1000).abs());
        // `-0.5` is written as `0.-500` by the naive split above: write negatives properly.
        let amount = if milli < 0 && milli > -1000 {
            format!("-0.{:03}", -milli)
        } else {
            amount
        };
        match i % 50 {
            // A non-numeric amount.
            7 => {
                text.push_str(&format!("{i},{},n/a,bad\n", quoted(region)));
                bad += 1;
            }
            // A missing field.
            13 => {
                text.push_str(&format!("{i},{}\n", quoted(region)));
                bad += 1;
            }
            // An extra field.
            29 => {
                text.push_str(&format!("{i},{},{amount},x,extra\n", quoted(region)));
                bad += 1;
            }
            // A quoted number with a quoted comment holding a comma.
            31 => {
                text.push_str(&format!(
                    "{i},{},{},{}\n",
                    quoted(region),
                    quoted(&amount),
                    quoted("a, b")
                ));
                good.push((region.to_owned(), milli));
            }
            _ => {
                text.push_str(&format!("{i},{},{amount},ok\n", quoted(region)));
                good.push((region.to_owned(), milli));
            }
        }
    }
    (text, good, bad)
}

async fn upload(app: &TestApp, token: &str, name: &str, data: &[u8]) -> Value {
    let resp = app
        .client
        .request(Method::POST, "/api/v1/files")
        .bearer(Some(token))
        .multipart(&[Part::file("file", name, "text/csv", data)])
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()
}

#[tokio::test]
async fn an_uploaded_csv_with_quotes_and_bad_rows_aggregates_like_an_independent_count() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let (text, good, bad) = awkward_csv();
    let file = upload(&app, &alice, "sales.csv", text.as_bytes()).await;
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(text.as_bytes())));
    assert!(app.dir.path().join("objects").is_dir(), "beside kiln.db");

    let id = app
        .submit_ok(
            &alice,
            json!({"type": "csv_aggregate", "payload": {
                "file_id": file["id"], "operation": "group_by",
                "column": "amount", "group_by": "region"}}),
        )
        .await;
    let job = app.wait_state(&alice, &id, "succeeded", LONG).await;
    let result = &job["result"];
    assert_eq!(result["rows"], 2_000);
    assert_eq!(result["bad_rows"], bad);
    assert_eq!(result["count"], good.len());

    // Independent: exact integer thousandths per region, sorted by name.
    let mut expected: BTreeMap<String, (u64, i64, i64, i64)> = BTreeMap::new();
    for (region, milli) in &good {
        let e = expected
            .entry(region.clone())
            .or_insert((0, 0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 += milli;
        e.2 = e.2.min(*milli);
        e.3 = e.3.max(*milli);
    }
    let groups = result["groups"].as_array().unwrap();
    assert_eq!(groups.len(), expected.len());
    for (got, (region, (count, sum, min, max))) in groups.iter().zip(&expected) {
        assert_eq!(got["group"], region.as_str());
        assert_eq!(got["count"], *count, "{region}");
        let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
        assert!(close(&got["sum"], *sum as f64 / 1000.0), "{region}: {got}");
        assert!(
            close(&got["mean"], *sum as f64 / 1000.0 / *count as f64),
            "{region}"
        );
        assert!(close(&got["min"], *min as f64 / 1000.0), "{region}");
        assert!(close(&got["max"], *max as f64 / 1000.0), "{region}");
    }

    // A missing column fails the job permanently, naming it.
    let id = app
        .submit_ok(
            &alice,
            json!({"type": "csv_aggregate", "payload": {
                "file_id": file["id"], "operation": "sum", "column": "price"}}),
        )
        .await;
    let job = app.wait_state(&alice, &id, "dead", LONG).await;
    assert_eq!(job["error"]["code"], "unknown_column");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`price`")
    );
}

#[tokio::test]
async fn a_file_of_another_user_cannot_be_aggregated() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice", "client").await;
    let bob = app.user("bob", "client").await;
    let file = upload(&app, &alice, "a.csv", b"g,v\nx,1\n").await;
    let resp = app
        .submit(
            &bob,
            json!({"type": "csv_aggregate", "payload": {
                "file_id": file["id"], "operation": "sum", "column": "v"}}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert_eq!(resp.json()["field"], "payload.file_id");
}

#[tokio::test]
async fn a_non_local_object_store_gives_the_kernel_a_scratch_copy() {
    let opts = crate::helpers::Opts {
        flags: vec!["--object-store".into(), "memory:///kiln".into()],
        ..Default::default()
    };
    let app = TestApp::spawn_with(opts).await;
    let file = upload(&app, &app.admin, "m.csv", b"k,v\n\"a,b\",1.5\nc,2\nc,x\n").await;
    assert!(!app.dir.path().join("objects").exists());
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "csv_aggregate", "payload": {
                "file_id": file["id"], "operation": "mean", "column": "v"}}),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    assert_eq!(
        (&job["result"]["count"], &job["result"]["bad_rows"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(job["result"]["mean"], 1.75);
}

#[tokio::test]
async fn binary_junk_after_a_header_is_counted_as_bad_rows_not_a_crash() {
    let app = TestApp::spawn().await;
    let mut data = b"v,g\n1,a\n".to_vec();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push((x >> 32) as u8);
    }
    data.extend_from_slice(b"\n2,a\n");
    let file = upload(&app, &app.admin, "junk.csv", &data).await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "csv_aggregate", "payload": {
                "file_id": file["id"], "operation": "sum", "column": "v"}}),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let result = &job["result"];
    assert!(result["bad_rows"].as_u64().unwrap() > 0, "{result}");
    assert_eq!(
        result["rows"].as_u64().unwrap(),
        result["count"].as_u64().unwrap() + result["bad_rows"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn uploads_beyond_the_cap_answer_503_until_one_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn_with(crate::helpers::Opts {
        flags: vec!["--max-uploads".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let alice = app.user("alice", "client").await;
    // A slow client: the request line, headers and half of the body, then nothing.
    let (content_type, body) =
        kiln_testkit::multipart_body(&[Part::file("file", "slow.csv", "text/csv", b"a,b\n1,2\n")]);
    let start_slow = || async {
        let mut slow = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
        let head = format!(
            "POST /api/v1/files HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {alice}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&body[..body.len() / 2]).await.unwrap();
        slow
    };
    let mut slow = start_slow().await;

    // Once the server is inside the slow upload, the next one is refused.
    let deadline = tokio::time::Instant::now() + LONG;
    let busy = loop {
        let resp = app
            .client
            .request(Method::POST, "/api/v1/files")
            .bearer(Some(&alice))
            .multipart(&[Part::file("file", "b.csv", "text/csv", b"x\n1\n")])
            .send()
            .await;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE {
            break resp;
        }
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upload was ever refused"
        );
        // This one got the place before the slow one: if the slow one was refused
        // meanwhile (it has an answer), start it again.
        let mut peek = [0u8; 1];
        if slow.try_read(&mut peek).is_ok() {
            slow = start_slow().await;
        }
    };
    assert_eq!(busy.json()["code"], "uploads_busy");
    assert_eq!(busy.header("retry-after"), Some("1"));

    // The slow client finishes: its upload is stored, and the place is free again.
    slow.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 201");
    upload(&app, &alice, "after.csv", b"x\n1\n").await;
}
