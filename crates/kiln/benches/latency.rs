//! Idle start latency and cancel latency of one node over a real socket.
//!
//! Run: `cargo bench -p kiln --bench latency` (`-- --jobs 500 --rate 50 --cancels 30`).
//! - start latency: `echo` jobs submitted at a fixed rate; `started_at − created_at` is read
//!   from the stored job records (ms precision), and the client's submit-to-succeeded time.
//! - cancel latency: a running `sleep` is cancelled; the time until `POST /cancel` answers
//!   with the job `cancelled` (the server waits for the attempt to stop before answering).

use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;
use kiln::node::{self, Role};
use kiln_testkit::Client;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 500)]
    jobs: usize,
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 30)]
    cancels: usize,
    #[arg(long)]
    bench: bool,
}

#[derive(Parser)]
struct NodeArgs {
    #[command(flatten)]
    config: kiln::config::Config,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.95),
        percentile(&values, 0.99),
        values[values.len() - 1]
    );
}

fn ts(job: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(job[field].as_str().expect("timestamp"))
        .expect("RFC 3339")
        .timestamp_millis()
}

async fn submit(client: &Client, token: &str, body: Value) -> String {
    let resp = client
        .send_json(Method::POST, Some(token), "/api/v1/jobs", &body)
        .await;
    assert_eq!(resp.status.as_u16(), 202, "{}", resp.text());
    resp.json()["id"].as_str().expect("id").to_owned()
}

async fn wait_state(client: &Client, token: &str, id: &str, state: &str) -> Value {
    loop {
        let job = client
            .get(Some(token), &format!("/api/v1/jobs/{id}"))
            .await
            .json();
        if job["state"] == state {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn start_latency(client: &Client, token: &str, args: &Args) {
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    for i in 0..args.jobs {
        ticker.tick().await;
        let (client, token) = (client.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let id = submit(&client, &token, json!({"type": "echo", "payload": i})).await;
            let job = wait_state(&client, &token, &id, "succeeded").await;
            (job, sent.elapsed())
        }));
    }
    let (mut server, mut client_side) = (Vec::new(), Vec::new());
    for task in tasks {
        let (job, e2e) = task.await.expect("task");
        server.push((ts(&job, "started_at") - ts(&job, "created_at")) as f64);
        client_side.push(e2e.as_secs_f64() * 1e3);
    }
    summary(
        &format!(
            "start latency (started_at − created_at) at {} jobs/s",
            args.rate
        ),
        server,
    );
    summary(
        "submit → succeeded seen by the client (1 ms polling)",
        client_side,
    );
}

async fn cancel_latency(client: &Client, token: &str, args: &Args) {
    let mut took = Vec::new();
    for _ in 0..args.cancels {
        let id = submit(
            client,
            token,
            json!({"type": "sleep", "payload": {"ms": 60_000}}),
        )
        .await;
        wait_state(client, token, &id, "running").await;
        let start = Instant::now();
        let resp = client
            .request(Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
            .bearer(Some(token))
            .send()
            .await;
        let elapsed = start.elapsed();
        assert_eq!(resp.json()["state"], "cancelled");
        took.push(elapsed.as_secs_f64() * 1e3);
    }
    summary("cancel of a running sleep → cancelled", took);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let node_args = NodeArgs::parse_from([
        "kiln",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log",
        "warn",
        "--database",
        &db,
        "--admin-password",
        "bench-password",
    ]);
    let validated = node_args.config.validate().expect("valid config");
    let node = node::start(&validated, Role::Serve)
        .await
        .expect("node starts");
    let client = Client::new(node.addr().expect("addr"));
    let token = client.login("admin", "bench-password").await;
    println!(
        "machine: {} cores; SQLite WAL, synchronous=NORMAL",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measure | n | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    start_latency(&client, &token, &args).await;
    cancel_latency(&client, &token, &args).await;
    node.shutdown().await.expect("clean shutdown");
}
