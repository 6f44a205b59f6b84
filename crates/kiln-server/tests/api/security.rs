//! The access rules, walked as a table: every route × every kind of caller × their own or
//! somebody else's resource, each with the exact status it must answer (hostile input is in
//! `security_inputs.rs`).
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

pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) alice: String,
    pub(crate) bob: String,
    pub(crate) olga: String,
    /// Alice's finished job, with an artifact `data.csv`.
    pub(crate) job: String,
    /// Alice's uploaded file.
    pub(crate) file: String,
}

impl World {
    pub(crate) async fn new() -> Self {
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
            "/api/v1/admin/series".to_owned(),
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
