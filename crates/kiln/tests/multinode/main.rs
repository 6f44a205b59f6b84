//! Several real `kiln` processes on one real PostgreSQL database: they share the work, a
//! killed node's jobs are rescued by another, a cancel reaches the node running the job,
//! any node reaches any upload and artifact, node ids and object stores cannot clash
//! ([`registry`]), and a database that crashes under load loses and doubles nothing
//! ([`outage`]).
//!
//! Each test creates its own database (dropped afterwards), or runs a server of its own;
//! without PostgreSQL the tests say loudly that they skipped, unless
//! `KILN_REQUIRE_POSTGRES=1`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_testkit::pg::TempPostgres;
use kiln_testkit::{Client, wait_until};
use serde_json::{Value, json};

const PASSWORD: &str = "multi-node-password";
const LONG: Duration = Duration::from_secs(60);

/// A `kiln serve` or `kiln worker` process on the test database.
struct Node {
    child: Child,
    addr: Option<SocketAddr>,
}

impl Node {
    fn start(db: &TempPostgres, role: &str, node_id: &str, concurrency: u32) -> Self {
        Self::start_with(db, role, node_id, concurrency, None)
    }

    /// A node whose object store is `objects` (`KILN_OBJECT_STORE`), if given.
    fn start_with(
        db: &TempPostgres,
        role: &str,
        node_id: &str,
        concurrency: u32,
        objects: Option<&str>,
    ) -> Self {
        let objects: Vec<(&str, &str)> = objects
            .map(|url| ("KILN_OBJECT_STORE", url))
            .into_iter()
            .collect();
        Self::launch(&db.url, role, node_id, concurrency, &objects)
    }

    /// A node on the database at `url`, with `env` set after the defaults (a 2 s lease).
    fn launch(
        url: &str,
        role: &str,
        node_id: &str,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .env_clear()
            .arg(role)
            .env("PORT", "0")
            .env("KILN_BIND", "127.0.0.1")
            .env("DATABASE_URL", url)
            .env("KILN_ADMIN_PASSWORD", PASSWORD)
            .env("KILN_NODE_ID", node_id)
            .env("KILN_LOG_FORMAT", "json")
            .env("KILN_LOG", "warn,kiln::node=info")
            .env("KILN_LEASE", "2s")
            .env("KILN_SHUTDOWN_GRACE", "1s")
            .env("MAX_CONCURRENCY", concurrency.to_string());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = if role == "serve" {
            "kiln is serving"
        } else {
            "kiln worker is running"
        };
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{node_id} exited before it was ready"))
                .expect("utf-8 log");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == ready || entry["message"] == ready {
                let fields = if entry["fields"].is_object() {
                    &entry["fields"]
                } else {
                    &entry
                };
                break fields["addr"]
                    .as_str()
                    .map(|a| a.parse::<SocketAddr>().expect("an address"));
            }
        };
        // Keep draining the log, or the node blocks once the pipe is full.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn client(&self) -> Client {
        Client::new(self.addr.expect("a serve node"))
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn submit(client: &Client, token: &str, body: Value) -> String {
    let resp = client
        .send_json(Method::POST, Some(token), "/api/v1/jobs", &body)
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text());
    resp.json()["id"].as_str().unwrap().to_owned()
}

async fn job(client: &Client, token: &str, id: &str) -> Value {
    client
        .get(Some(token), &format!("/api/v1/jobs/{id}"))
        .await
        .json()
}

async fn wait_state(client: &Client, token: &str, id: &str, state: &str) -> Value {
    wait_until(&format!("job {id} to be {state}"), LONG, || async {
        let job = job(client, token, id).await;
        if job["state"] == state {
            Ok(job)
        } else {
            Err(job["state"].clone())
        }
    })
    .await
}

async fn events(client: &Client, token: &str, id: &str) -> Vec<Value> {
    client
        .get(Some(token), &format!("/api/v1/jobs/{id}/events"))
        .await
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// The nodes that started an attempt of the job (one entry per `running` event).
async fn runners(client: &Client, token: &str, id: &str) -> Vec<String> {
    events(client, token, id)
        .await
        .iter()
        .filter(|e| e["state"] == "running")
        .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Starts `serve` node A with one slot and fills it with a long `sleep`. Returns (A,
/// client, token, blocker id).
async fn a_busy(db: &TempPostgres) -> (Node, Client, String, String) {
    let a = Node::start(db, "serve", "node-a", 1);
    let client = a.client();
    let token = client.login("admin", PASSWORD).await;
    let blocker = submit(
        &client,
        &token,
        json!({"type": "sleep", "payload": {"ms": 600_000}}),
    )
    .await;
    wait_state(&client, &token, &blocker, "running").await;
    (a, client, token, blocker)
}

/// [`a_busy`], then worker node B, on which every job submitted afterwards runs. Returns
/// (A, B, client, token, blocker id).
async fn a_busy_b_free(db: &TempPostgres) -> (Node, Node, Client, String, String) {
    let (a, client, token, blocker) = a_busy(db).await;
    let b = Node::start(db, "worker", "node-b", 4);
    (a, b, client, token, blocker)
}

mod outage;
mod registry;
mod work;
