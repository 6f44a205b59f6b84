//! What hostile input does to the API: SQL in every filter, oversized and deeply nested
//! JSON, forged tokens and header injection, path tricks in names (the access table is in
//! `security.rs`).

use crate::helpers::{TestApp, problem};
use crate::security::World;
use hyper::{Method, StatusCode};
use kiln_objects::Objects;
use kiln_server::ServerConfig;
use kiln_testkit::Part;
use serde_json::json;

#[tokio::test]
async fn sql_in_any_filter_is_refused_or_matches_nothing() {
    let w = World::new().await;
    let attacks = [
        "' OR '1'='1",
        "x'; DROP TABLE jobs; --",
        "\" OR 1=1 --",
        "%' UNION SELECT * FROM users --",
        "1) OR (1=1",
    ];
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    for attack in attacks {
        let a = encode(attack);
        for query in [
            format!("state={a}"),
            format!("type={a}"),
            format!("queue={a}"),
            format!("name={a}"),
            format!("created_after={a}"),
            format!("cursor={a}"),
            format!("limit={a}"),
            format!("sort={a}"),
        ] {
            let resp = w.app.get(&w.bob, &format!("/api/v1/jobs?{query}")).await;
            match resp.status.as_u16() {
                400 => {
                    problem(&resp, 400, resp.json()["code"].as_str().unwrap());
                }
                200 => assert_eq!(resp.json()["items"], json!([]), "{query} leaked jobs"),
                other => panic!("{query}: {other} {}", resp.text()),
            }
            let admin = w
                .app
                .get(
                    &w.app.admin,
                    &format!("/api/v1/admin/jobs?owner={a}&{query}"),
                )
                .await;
            assert!(
                [200, 400, 404].contains(&admin.status.as_u16()),
                "{query}: {}",
                admin.text()
            );
            if admin.status == StatusCode::OK {
                assert_eq!(admin.json()["items"], json!([]), "owner={attack}");
            }
        }
    }
    // Everything is still there.
    let mine = w.app.get(&w.alice, "/api/v1/jobs").await;
    assert_eq!(mine.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        w.app.get(&w.app.admin, "/api/v1/admin/users").await.status,
        200
    );
}

#[tokio::test]
async fn oversized_and_deeply_nested_bodies_are_problems_not_crashes() {
    let w = World::new().await;
    let huge = json!({"type": "echo", "payload": "x".repeat(2 << 20)});
    let resp = w.app.submit(&w.alice, huge).await;
    problem(&resp, 413, resp.json()["code"].as_str().unwrap());
    let nested = format!(
        "{{\"type\": \"echo\", \"payload\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let resp = w
        .app
        .client
        .request(Method::POST, "/api/v1/jobs")
        .bearer(Some(&w.alice))
        .header("content-type", "application/json")
        .raw(nested)
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    problem(&resp, 400, resp.json()["code"].as_str().unwrap());
    // Still serving, nothing half-stored.
    let mine = w.app.get(&w.alice, "/api/v1/jobs").await;
    assert_eq!(mine.json()["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn forged_tokens_and_injected_headers_get_nowhere() {
    let w = World::new().await;
    let mut flipped = w.alice.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    // `{"alg":"none"}.{"sub":"admin"}.` and an HS256 one signed with a guessable key.
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let hs256 = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl";
    for token in [
        flipped.as_str(),
        "kiln_",
        "",
        "null",
        none,
        hs256,
        &"k".repeat(10_000),
    ] {
        let resp = w.app.client.get(Some(token), "/api/v1/me").await;
        problem(&resp, 401, resp.json()["code"].as_str().unwrap());
    }
    for scheme in [
        "Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtMQ==",
        "bearer",
        "Token abc",
    ] {
        let resp = w
            .app
            .client
            .request(Method::GET, "/api/v1/me")
            .header("authorization", scheme)
            .send()
            .await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{scheme}");
    }
    // A request id that would split the response or flood the log is replaced.
    // (A line break cannot reach the server inside a header: HTTP/1.1 ends the header there.)
    for bad in [&"r".repeat(500), "a b<script>", "semi;colon", "ünïcödé"] {
        let resp = w
            .app
            .client
            .request(Method::GET, "/healthz")
            .header("x-request-id", bad)
            .send()
            .await;
        if let Some(echoed) = resp.header("x-request-id") {
            assert_ne!(echoed, bad);
            assert!(
                echoed.len() <= 64 && !echoed.contains(['\r', '\n', ' ', '<']),
                "{echoed}"
            );
        }
        assert_eq!(resp.header("set-cookie"), None);
    }
}

#[tokio::test]
async fn path_tricks_in_names_stay_inside_the_store() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("objects");
    let objects = Objects::local(&store_dir).unwrap();
    let config = ServerConfig {
        objects: Some(objects),
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", "client").await;
    for name in [
        "../../escaped.csv",
        "/etc/kiln-escaped",
        "..\\..\\escaped.csv",
        "a\"; x=\"y.csv",
    ] {
        let resp = app
            .client
            .request(Method::POST, "/api/v1/files")
            .bearer(Some(&alice))
            .multipart(&[Part::file("file", name, "text/csv", b"a\n1\n")])
            .send()
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{name}: {}", resp.text());
        let id = resp.json()["id"].as_str().unwrap().to_owned();
        let content = app
            .get(&alice, &format!("/api/v1/files/{id}/content"))
            .await;
        assert_eq!(content.body.as_ref(), b"a\n1\n");
        let disposition = content.header("content-disposition").unwrap();
        let inner = disposition
            .strip_prefix("attachment; filename=\"")
            .and_then(|d| d.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{disposition}"));
        assert!(!inner.contains(['"', '/', '\\', ';']), "{disposition}");
    }
    // Nothing was written outside the store's directory.
    let outside: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["objects"]);
    assert!(!std::path::Path::new("/etc/kiln-escaped").exists());
    // Artifact names with path tricks are unknown names, whoever asks.
    let job = app
        .submit_ok(&alice, json!({"type": "echo", "payload": 1}))
        .await;
    for name in ["..", "..%2F..%2Fkiln.db", "%2Fetc%2Fpasswd", ".hidden"] {
        let resp = app
            .get(&alice, &format!("/api/v1/jobs/{job}/artifacts/{name}"))
            .await;
        assert!(
            [404, 409].contains(&resp.status.as_u16()),
            "{name}: {}",
            resp.text()
        );
    }
}
