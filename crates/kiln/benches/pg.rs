//! Kiln on PostgreSQL: end-to-end throughput of no-op jobs with one and with two nodes, and
//! the idle start latency of a job that reaches its worker through `LISTEN/NOTIFY`.
//!
//! Run: `cargo bench -p kiln --bench pg` (`-- --jobs 5000 --latency-jobs 300 --rate 50`).
//! Needs PostgreSQL (admin URL from `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each run uses a fresh database, dropped
//! afterwards. Nodes run in this process, each with its own store (its own pool and its
//! own `LISTEN` connection), so signals between nodes go through PostgreSQL exactly as
//! between processes.
//!
//! - throughput: N `echo` jobs submitted over 32 concurrent connections to node A; the
//!   clock runs from the first submission until `/metrics` counts N succeeded.
//! - NOTIFY start latency: node A has one slot, kept busy by a long `sleep`, so every job
//!   submitted to A is claimed by worker node B, woken by A's `NOTIFY`. Jobs are submitted
//!   at a fixed rate; `started_at − created_at` is read from the job records.

use std::time::{Duration, Instant};

use clap::Parser;
use hyper::Method;
use kiln::node::{self, Node, Role};
use kiln_testkit::{Client, TempPostgres};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    #[arg(long, default_value_t = 300)]
    latency_jobs: usize,
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    bench: bool,
}

#[derive(Parser)]
struct NodeArgs {
    #[command(flatten)]
    config: kiln::config::Config,
}

const PASSWORD: &str = "bench-password";

async fn start(url: &str, role: Role, node_id: &str, concurrency: usize) -> Node {
    let args = NodeArgs::parse_from([
        "kiln",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log",
        "warn",
        "--database",
        url,
        "--admin-password",
        PASSWORD,
        "--node-id",
        node_id,
        "--max-concurrency",
        &concurrency.to_string(),
    ]);
    let validated = args.config.validate().expect("valid config");
    node::start(&validated, role).await.expect("node starts")
}

async fn submit(client: &Client, token: &str, body: &Value) -> Value {
    let resp = client
        .send_json(Method::POST, Some(token), "/api/v1/jobs", body)
        .await;
    assert_eq!(resp.status.as_u16(), 202, "{}", resp.text());
    resp.json()
}

async fn succeeded(client: &Client, token: &str) -> u64 {
    let m = client
        .request(Method::GET, "/metrics")
        .bearer(Some(token))
        .send()
        .await
        .json();
    m["succeeded"].as_u64().unwrap_or(0)
}

/// Jobs per second from the first submission until all `jobs` have succeeded.
async fn throughput(nodes: usize, jobs: usize) -> f64 {
    let db = TempPostgres::create().await.expect("PostgreSQL is needed");
    let a = start(&db.url, Role::Serve, "node-a", 4).await;
    let b = if nodes > 1 {
        Some(start(&db.url, Role::Worker, "node-b", 4).await)
    } else {
        None
    };
    let client = Client::new(a.addr().expect("addr"));
    let token = client.login("admin", PASSWORD).await;
    let started = Instant::now();
    let per_task = jobs / 32;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (client, token) = (client.clone(), token.clone());
        let n = if t == 31 {
            jobs - per_task * 31
        } else {
            per_task
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                submit(&client, &token, &json!({"type": "echo", "payload": i})).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("submitter");
    }
    while succeeded(&client, &token).await < jobs as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    if let Some(b) = b {
        b.shutdown().await.expect("stop B");
    }
    a.shutdown().await.expect("stop A");
    rate
}

fn ms(job: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(job[field].as_str().expect("timestamp"))
        .expect("RFC 3339")
        .timestamp_millis()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p95 of `started_at − created_at` for jobs started on B through NOTIFY.
async fn notify_latency(jobs: usize, rate: f64) -> (f64, f64) {
    let db = TempPostgres::create().await.expect("PostgreSQL is needed");
    let a = start(&db.url, Role::Serve, "node-a", 1).await;
    let client = Client::new(a.addr().expect("addr"));
    let token = client.login("admin", PASSWORD).await;
    let blocker = submit(
        &client,
        &token,
        &json!({"type": "sleep", "payload": {"ms": 3_600_000}}),
    )
    .await;
    let blocker = blocker["id"].as_str().expect("id").to_owned();
    loop {
        let job = client
            .get(Some(&token), &format!("/api/v1/jobs/{blocker}"))
            .await
            .json();
        if job["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = start(&db.url, Role::Worker, "node-b", 4).await;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut ids = Vec::new();
    for i in 0..jobs {
        ticker.tick().await;
        let job = submit(&client, &token, &json!({"type": "echo", "payload": i})).await;
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    let mut latencies = Vec::new();
    for id in ids {
        loop {
            let job = client
                .get(Some(&token), &format!("/api/v1/jobs/{id}"))
                .await
                .json();
            if job["state"] == "succeeded" {
                latencies.push((ms(&job, "started_at") - ms(&job, "created_at")) as f64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let _ = client
        .request(Method::POST, &format!("/api/v1/jobs/{blocker}/cancel"))
        .bearer(Some(&token))
        .send()
        .await;
    b.shutdown().await.expect("stop B");
    a.shutdown().await.expect("stop A");
    latencies.sort_by(f64::total_cmp);
    (percentile(&latencies, 0.5), percentile(&latencies, 0.95))
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1} | {:.1}–{:.1}",
        values[values.len() / 2],
        values[0],
        values[values.len() - 1]
    )
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "machine: {} cores; PostgreSQL on 127.0.0.1; {} runs each\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs
    );
    println!("| measure | median | min–max |\n|---|---|---|");
    for nodes in [1, 2] {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            rates.push(throughput(nodes, args.jobs).await);
        }
        println!(
            "| {} no-op jobs end to end, {nodes} node(s), jobs/s | {} |",
            args.jobs,
            summary(&mut rates)
        );
    }
    let (mut p50s, mut p95s) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (p50, p95) = notify_latency(args.latency_jobs, args.rate).await;
        p50s.push(p50);
        p95s.push(p95);
    }
    println!(
        "| start latency through NOTIFY at {} jobs/s, p50 ms | {} |",
        args.rate,
        summary(&mut p50s)
    );
    println!(
        "| start latency through NOTIFY at {} jobs/s, p95 ms | {} |",
        args.rate,
        summary(&mut p95s)
    );
}
