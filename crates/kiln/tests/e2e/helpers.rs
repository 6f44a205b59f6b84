//! `TestApp`: a whole Kiln node (store, worker, HTTP API) started in-process on
//! `127.0.0.1:0` over a SQLite WAL file in a temp dir, plus one method per common call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::{Method, StatusCode};
use kiln::config::Config;
use kiln::node::{self, Node, Role};
use kiln_domain::{Clock, SystemClock};
use kiln_testkit::{Client, TestResponse, wait_until};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

/// Options for [`TestApp::spawn_with`].
#[derive(Default)]
pub struct Opts {
    /// Extra command-line flags.
    pub flags: Vec<String>,
    /// Contents of `kiln.toml`.
    pub toml: Option<String>,
    /// The node's clock; the wall clock when `None`.
    pub clock: Option<Arc<dyn Clock>>,
    /// The database URL; a SQLite file in the node's directory when `None`.
    pub database: Option<String>,
}

pub struct TestApp {
    pub client: Client,
    pub admin: String,
    pub dir: TempDir,
    node: Option<Node>,
}

pub fn db_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("kiln.db").display())
}

/// Parses flags into a validated configuration for a test node in `dir`.
pub fn config(dir: &TempDir, opts: &Opts) -> kiln::config::Validated {
    let mut argv: Vec<String> = [
        "kiln",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log",
        "warn",
        "--node-id",
        "test-node",
        "--shutdown-grace",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend([
        "--database".into(),
        opts.database.clone().unwrap_or_else(|| db_url(dir)),
        "--admin-password".into(),
        ADMIN_PASSWORD.into(),
    ]);
    let toml_path: PathBuf = dir.path().join("kiln.toml");
    std::fs::write(&toml_path, opts.toml.as_deref().unwrap_or("")).expect("write kiln.toml");
    argv.extend(["--config".into(), toml_path.display().to_string()]);
    argv.extend(opts.flags.iter().cloned());
    Args::parse_from(argv)
        .config
        .validate()
        .expect("a valid test configuration")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Opts::default()).await
    }

    pub async fn spawn_with(opts: Opts) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, opts).await
    }

    /// Starts a node on an existing directory (to restart on the same database).
    pub async fn spawn_in(dir: TempDir, opts: Opts) -> Self {
        if std::env::var_os("KILN_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
        }
        let validated = config(&dir, &opts);
        let clock = opts.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
        let node = node::start_with_clock(&validated, Role::Serve, clock)
            .await
            .expect("the node starts");
        let client = Client::new(node.addr().expect("an HTTP address"));
        let admin = client.login("admin", ADMIN_PASSWORD).await;
        Self {
            client,
            admin,
            dir,
            node: Some(node),
        }
    }

    /// The node's HTTP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.node
            .as_ref()
            .and_then(Node::addr)
            .expect("a serving node")
    }

    /// The metrics listener's address (`--metrics-addr`).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.node
            .as_ref()
            .and_then(Node::metrics_addr)
            .expect("a metrics listener")
    }

    /// Stops the node gracefully and hands back its directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(node) = self.node.take() {
            node.shutdown().await.expect("a clean shutdown");
        }
        self.dir
    }

    /// Creates a user with `role` and returns a token for them.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let body = json!({"username": name, "password": "password-123", "role": role});
        let resp = self
            .client
            .send_json(
                Method::POST,
                Some(&self.admin),
                "/api/v1/admin/users",
                &body,
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        self.client.login(name, "password-123").await
    }

    pub async fn submit(&self, token: &str, body: Value) -> TestResponse {
        self.client
            .send_json(Method::POST, Some(token), "/api/v1/jobs", &body)
            .await
    }

    /// Submits and returns the job id (asserting 202).
    pub async fn submit_ok(&self, token: &str, body: Value) -> String {
        let resp = self.submit(token, body).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
        resp.json()["id"].as_str().expect("an id").to_owned()
    }

    /// `PATCH /api/v1/jobs/{id}` with `report` (an `external` job's owner reporting its
    /// state), asserting 200.
    pub async fn report(&self, token: &str, id: &str, report: Value) {
        let path = format!("/api/v1/jobs/{id}");
        let resp = self
            .client
            .send_json(Method::PATCH, Some(token), &path, &report)
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }

    pub async fn job(&self, token: &str, id: &str) -> Value {
        let resp = self
            .client
            .get(Some(token), &format!("/api/v1/jobs/{id}"))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        resp.json()
    }

    pub async fn cancel(&self, token: &str, id: &str) -> TestResponse {
        self.client
            .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
            .bearer(Some(token))
            .send()
            .await
    }

    /// Waits until the job is in `state` and returns it.
    pub async fn wait_state(&self, token: &str, id: &str, state: &str, within: Duration) -> Value {
        wait_until(&format!("job {id} to be {state}"), within, || async {
            let job = self.job(token, id).await;
            if job["state"] == state {
                Ok(job)
            } else {
                Err(job["state"].clone())
            }
        })
        .await
    }
}
