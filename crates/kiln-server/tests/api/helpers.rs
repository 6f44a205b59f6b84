//! `TestApp`: the router on `127.0.0.1:0` over a SQLite WAL file in a temp dir, an admin
//! token, and one method per common call.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Clock, Failure, JobId, Lease, SystemClock};
use kiln_server::{AppState, ServerConfig};
use kiln_store::{ClaimRequest, Outcome, Store};
use kiln_testkit::{Client, TempSqlite, TestResponse};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PASSWORD: &str = "password-123";
const NODE: &str = "test-node";

pub struct TestApp {
    pub client: Client,
    pub admin: String,
    pub state: AppState,
    pub db: TempSqlite,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(ServerConfig::default()).await
    }

    pub async fn spawn_with(config: ServerConfig) -> Self {
        Self::spawn_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn spawn_with_clock(config: ServerConfig, clock: Arc<dyn Clock>) -> Self {
        Self::spawn_on(TempSqlite::new(), config, clock).await
    }

    /// On a store opened by the test.
    pub async fn spawn_on(db: TempSqlite, config: ServerConfig, clock: Arc<dyn Clock>) -> Self {
        let store: Arc<dyn Store> = db.store.clone();
        let created = kiln_server::ensure_admin(store.as_ref(), Some(ADMIN_PASSWORD), clock.now())
            .await
            .expect("the first admin is created");
        assert_eq!(created, None, "a given password is not echoed back");
        let state = AppState::new(store, Arc::new(Catalogue::default()), clock, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port");
        let addr = listener.local_addr().expect("an address");
        let app = kiln_server::router(state.clone());
        // With the peer's address, as `kiln serve` runs it (login throttling uses it).
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(addr);
        let admin = client.login("admin", ADMIN_PASSWORD).await;
        Self {
            client,
            admin,
            state,
            db,
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.db.store.as_ref()
    }

    /// Creates a user with `role` through the admin API and returns a session token.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let body = json!({"username": name, "password": PASSWORD, "role": role});
        let resp = self
            .send(Method::POST, &self.admin, "/api/v1/admin/users", &body)
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        self.client.login(name, PASSWORD).await
    }

    pub async fn get(&self, token: &str, path: &str) -> TestResponse {
        self.client.get(Some(token), path).await
    }

    pub async fn send(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: &Value,
    ) -> TestResponse {
        self.client.send_json(method, Some(token), path, body).await
    }

    /// A request without a body.
    pub async fn call(&self, method: Method, token: &str, path: &str) -> TestResponse {
        self.client
            .request(method, path)
            .bearer(Some(token))
            .send()
            .await
    }

    pub async fn submit(&self, token: &str, body: Value) -> TestResponse {
        self.send(Method::POST, token, "/api/v1/jobs", &body).await
    }

    /// Submits and returns the job id (asserting 202).
    pub async fn submit_ok(&self, token: &str, body: Value) -> String {
        let resp = self.submit(token, body).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
        resp.json()["id"].as_str().expect("an id").to_owned()
    }

    /// Claims every queued job as a worker would; returns their leases.
    pub async fn claim_all(&self) -> Vec<Lease> {
        let now = SystemClock.now();
        let req = ClaimRequest {
            node: NODE.to_owned(),
            types: vec!["echo".into(), "sleep".into()],
            exclude_queues: Vec::new(),
            exclude_owners: Vec::new(),
            limit: 100,
            now,
            lease: std::time::Duration::from_secs(60),
            per_owner: None,
            per_owner_exempt: Vec::new(),
        };
        let jobs = self.store().job_claim(&req).await.expect("claim");
        jobs.into_iter()
            .map(|j| Lease {
                job_id: j.id,
                attempt: j.attempts,
                node: NODE.to_owned(),
            })
            .collect()
    }

    /// Claims the (only) queued job and ends its attempt with `outcome`.
    pub async fn run(&self, id: &str, outcome: Outcome) {
        let leases = self.claim_all().await;
        let id: JobId = id.parse().expect("a job id");
        let lease = leases
            .iter()
            .find(|l| l.job_id == id)
            .expect("the job was claimed");
        self.store()
            .job_complete(lease, outcome, SystemClock.now())
            .await
            .expect("complete");
    }

    /// Claims the job and makes it dead (a permanent failure).
    pub async fn kill(&self, id: &str) {
        let failure = Failure::permanent("boom", "it broke");
        self.run(
            id,
            Outcome::Failed {
                failure,
                retry_at: None,
            },
        )
        .await;
    }
}

/// Asserts `resp` is a problem document with `status` and `code`; returns it.
#[track_caller]
pub fn problem(resp: &TestResponse, status: u16, code: &str) -> Value {
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        resp.text()
    );
    let body = resp.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert!(body["type"].is_string(), "{body}");
    assert!(
        !body["request_id"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    body
}

/// The ids of a list page's jobs, in order.
pub fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("a page's items")
        .iter()
        .map(|j| j["id"].as_str().expect("a job id").to_owned())
        .collect()
}
