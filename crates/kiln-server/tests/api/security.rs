//! The access rules, walked as a table: every route × every kind of caller × their own or
//! somebody else's resource, each with the exact status it must answer. Then what hostile
//! input does to the API: SQL in every filter, oversized and deeply nested JSON, path
//! tricks in names, forged tokens, header injection.
//!
//! Another user's job, file or artifact must be indistinguishable from one that does not
//! exist: the same 404 problem document, byte for byte once the id is set aside.

use hyper::{Method, StatusCode};
use kiln_domain::JobId;
use kiln_objects::Objects;
use kiln_server::ServerConfig;
use kiln_store::Outcome;
use kiln_testkit::Part;
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    /// Alice, a client: the owner of every resource in the table.
    Owner,
    /// Bob, another client.
    Other,
    /// Olga, an operator (not the owner).
    Operator,
    /// The admin (not the owner).
    Admin,
}

const CALLERS: [Caller; 5] = [
    Caller::Anonymous,
    Caller::Owner,
    Caller::Other,
    Caller::Operator,
    Caller::Admin,
];

struct World {
    app: TestApp,
    alice: String,
    bob: String,
    olga: String,
    /// Alice's finished job, with an artifact `data.csv`.
    job: String,
    /// Alice's uploaded file.
    file: String,
}

impl World {
    async fn new() -> Self {
        let objects = Objects::from_url("memory:///", Vec::<(String, String)>::new()).unwrap();
        let config = ServerConfig {
            objects: Some(objects.clone()),
            ..ServerConfig::default()
        };
        let app = TestApp::spawn_with(config).await;
        let alice = app.user("alice", "client").await;
        let bob = app.user("bob", "client").await;
        let olga = app.user("olga", "operator").await;
        let job = app
            .submit_ok(&alice, json!({"type": "echo", "payload": {"x": 1}}))
            .await;
        let leases = app.claim_all().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        std::fs::write(&path, b"a,b\n1,2\n").unwrap();
        let job_id: JobId = job.parse().unwrap();
        objects
            .artifact_put_file(job_id, 1, "data.csv", &path)
            .await
            .unwrap();
        app.store()
            .job_complete(
                &leases[0],
                Outcome::Succeeded(json!({"ok": true})),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        let uploaded = app
            .client
            .request(Method::POST, "/api/v1/files")
            .bearer(Some(&alice))
            .multipart(&[Part::file("file", "mine.csv", "text/csv", b"a\n1\n")])
            .send()
            .await;
        assert_eq!(uploaded.status, StatusCode::CREATED, "{}", uploaded.text());
        let file = uploaded.json()["id"].as_str().unwrap().to_owned();
        Self {
            app,
            alice,
            bob,
            olga,
            job,
            file,
        }
    }

    fn token(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Anonymous => None,
            Caller::Owner => Some(&self.alice),
            Caller::Other => Some(&self.bob),
            Caller::Operator => Some(&self.olga),
            Caller::Admin => Some(&self.app.admin),
        }
    }

    async fn call(&self, caller: Caller, method: Method, path: &str, body: Option<&Value>) -> u16 {
        let mut request = self
            .app
            .client
            .request(method, path)
            .bearer(self.token(caller));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.status.as_u16()
    }
}

/// A route that reads or acts on one of the owner's resources: the owner's answer, and
/// whether operators and admins reach it too (the `/admin` routes) or get the stranger's
/// 404 (the owner's own routes).
struct Row {
    method: Method,
    path: String,
    body: Option<Value>,
    owner: u16,
    staff: Staff,
}

#[derive(Clone, Copy)]
enum Staff {
    /// Operators and admins are strangers here: 404, like another client.
    Strangers,
    /// Operators and admins get `owner`'s status; clients 403.
    Operators,
    /// Only admins; everyone else signed in 403.
    Admins,
}

fn row(method: Method, path: String, owner: u16, staff: Staff) -> Row {
    Row {
        method,
        path,
        body: None,
        owner,
        staff,
    }
}

impl Row {
    fn expected(&self, caller: Caller) -> u16 {
        match (caller, self.staff) {
            (Caller::Anonymous, _) => 401,
            (Caller::Owner, Staff::Strangers) => self.owner,
            (_, Staff::Strangers) => 404,
            (Caller::Operator | Caller::Admin, Staff::Operators) => self.owner,
            (_, Staff::Operators) => 403,
            (Caller::Admin, Staff::Admins) => self.owner,
            (_, Staff::Admins) => 403,
        }
    }
}

#[tokio::test]
async fn every_route_answers_each_caller_exactly_as_the_rules_say() {
    let w = World::new().await;
    let (job, file) = (&w.job, &w.file);
    let reads = [
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/status"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/result"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/events"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/logs"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/artifacts"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/jobs/{job}/artifacts/data.csv"),
            200,
            Staff::Strangers,
        ),
        // Finished: a cancel changes nothing (200 with the job as it is).
        row(
            Method::POST,
            format!("/api/v1/jobs/{job}/cancel"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/files/{file}"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/files/{file}/content"),
            200,
            Staff::Strangers,
        ),
        row(
            Method::GET,
            format!("/api/v1/admin/jobs/{job}"),
            200,
            Staff::Operators,
        ),
        row(
            Method::POST,
            format!("/api/v1/admin/jobs/{job}/cancel"),
            200,
            Staff::Operators,
        ),
        row(
            Method::GET,
            "/api/v1/admin/jobs".to_owned(),
            200,
            Staff::Operators,
        ),
        row(
            Method::GET,
            "/api/v1/admin/queues".to_owned(),
            200,
            Staff::Operators,
        ),
        row(
            Method::GET,
            "/api/v1/admin/users".to_owned(),
            200,
            Staff::Admins,
        ),
        row(
            Method::GET,
            "/api/v1/admin/users/1/limits".to_owned(),
            200,
            Staff::Admins,
        ),
    ];
    let mut wrong = Vec::new();
    for r in &reads {
        for caller in CALLERS {
            let got = w
                .call(caller, r.method.clone(), &r.path, r.body.as_ref())
                .await;
            if got != r.expected(caller) {
                wrong.push(format!(
                    "{} {} as {caller:?}: {got}, expected {}",
                    r.method,
                    r.path,
                    r.expected(caller)
                ));
            }
        }
    }
    // Routes of one's own account: anyone signed in, nobody else.
    for path in [
        "/api/v1/me",
        "/api/v1/tokens",
        "/api/v1/jobs",
        "/api/v1/files",
    ] {
        for caller in CALLERS {
            let want = if caller == Caller::Anonymous {
                401
            } else {
                200
            };
            let got = w.call(caller, Method::GET, path, None).await;
            if got != want {
                wrong.push(format!("GET {path} as {caller:?}: {got}, expected {want}"));
            }
        }
    }
    // Writes to the owner's resources by anybody else: refused without a trace, before
    // the owner's own (last, since they change things).
    let new_user = json!({"username": "mallory", "password": "password-123"});
    // (method, path, body, a stranger's status, the owner's status, in this order.)
    let writes = [
        // A succeeded job cannot be retried, and only `external` jobs take reports.
        (
            Method::POST,
            format!("/api/v1/jobs/{job}/retry"),
            None,
            404,
            409,
        ),
        (
            Method::PATCH,
            format!("/api/v1/jobs/{job}"),
            Some(json!({"state": "running"})),
            404,
            409,
        ),
        (
            Method::DELETE,
            format!("/api/v1/files/{file}"),
            None,
            404,
            204,
        ),
        (
            Method::DELETE,
            format!("/api/v1/jobs/{job}"),
            None,
            404,
            204,
        ),
    ];
    for (method, path, body, stranger, _) in &writes {
        for caller in [
            Caller::Anonymous,
            Caller::Other,
            Caller::Operator,
            Caller::Admin,
        ] {
            let want = if caller == Caller::Anonymous {
                401
            } else {
                *stranger
            };
            let got = w.call(caller, method.clone(), path, body.as_ref()).await;
            if got != want {
                wrong.push(format!(
                    "{method} {path} as {caller:?}: {got}, expected {want}"
                ));
            }
        }
    }
    for caller in [Caller::Owner, Caller::Other, Caller::Operator] {
        let got = w
            .call(caller, Method::POST, "/api/v1/admin/users", Some(&new_user))
            .await;
        if got != 403 {
            wrong.push(format!(
                "POST /api/v1/admin/users as {caller:?}: {got}, expected 403"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Nothing the strangers tried changed the owner's job or file.
    let still = w.app.get(&w.alice, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(still.json()["state"], "succeeded");
    assert_eq!(still.json()["attempts"], 1);
    assert_eq!(
        w.app
            .get(&w.alice, &format!("/api/v1/files/{file}"))
            .await
            .status,
        200
    );
    // The owner's own writes.
    for (method, path, body, _, owner) in &writes {
        let got = w
            .call(Caller::Owner, method.clone(), path, body.as_ref())
            .await;
        assert_eq!(got, *owner, "{method} {path} as the owner");
    }
}

/// A 404 body with the id in it replaced, and the request id dropped.
fn shape(resp: &kiln_testkit::TestResponse, id: &str) -> Value {
    let mut body = problem(resp, 404, "not_found");
    body.as_object_mut().unwrap().remove("request_id");
    let detail = body["detail"].as_str().unwrap().replace(id, "<id>");
    body["detail"] = Value::from(detail);
    body
}

#[tokio::test]
async fn another_user_s_resource_looks_exactly_like_one_that_does_not_exist() {
    let w = World::new().await;
    let unknown_job = JobId::new().to_string();
    let unknown_file = uuid_like(&w.file);
    for (mine, unknown, paths) in [
        (
            &w.job,
            &unknown_job,
            vec![
                "/api/v1/jobs/{}",
                "/api/v1/jobs/{}/status",
                "/api/v1/jobs/{}/artifacts",
                "/api/v1/jobs/{}/artifacts/data.csv",
            ],
        ),
        (
            &w.file,
            &unknown_file,
            vec!["/api/v1/files/{}", "/api/v1/files/{}/content"],
        ),
    ] {
        for path in paths {
            let other = w.app.get(&w.bob, &path.replace("{}", mine)).await;
            let missing = w.app.get(&w.bob, &path.replace("{}", unknown)).await;
            assert_eq!(shape(&other, mine), shape(&missing, unknown), "{path}");
        }
    }
}

/// A well-formed id of the same kind as `id` that names nothing.
fn uuid_like(id: &str) -> String {
    let mut chars: Vec<char> = id.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

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
