//! `read`: the read endpoints, one after another against the same server, each hammered by
//! `--connections` keep-alive connections for `--read-seconds` after a short warm-up that
//! is not counted. One row per endpoint: requests/s, p50/p95/p99 latency, the server's and
//! the bench's CPU time per request (from `/proc`; the server's only when it is the local
//! child), and the rate as a percentage of `GET /healthz` (no auth, no store: the HTTP
//! stack's ceiling on this machine).
//!
//! The jobs read are the bench user's own: a small `echo` job and one whose payload, and so
//! its result, is ~11 KB of JSON, both run to `succeeded` first. The lists are first pages
//! (20 jobs) of the bench user's jobs (20 more `echo` jobs it submits first, so the page is
//! whole) and of everybody's (`/admin/jobs`), on whatever table the run has (`--seed-jobs`,
//! `--seed-users`).
//!
//! Every answer must be 2xx: any other, or a failed request, counts as an error (shown in
//! the endpoint's row) and fails the scenario once every endpoint has been measured.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{Value, json};

use super::http::{Client, json_bytes};
use super::load::echo_body;
use super::probe::{submit_one, wait_state};
use super::procfs;
use super::report::{Endpoint, Report, percentile};

/// The longest warm-up before each endpoint's window (an eighth of the window when that is
/// shorter): every connection open and busy, the server's caches and pools warm.
const WARM_UP: Duration = Duration::from_millis(500);

/// Jobs in a page of the lists read, and `echo` jobs the bench user submits so that its
/// own list has a whole page.
const PAGE: usize = 20;

/// Bytes of the large job's payload (and so of its result) as JSON, at least.
const LARGE_BYTES: usize = 11_000;

/// One endpoint to measure.
struct Target {
    /// Its row's name.
    name: String,
    path: String,
    /// Sent without the bearer token.
    anonymous: bool,
}

/// What the connections of one endpoint counted.
#[derive(Default)]
struct Tally {
    /// Latency of each 2xx answer that arrived within the measured window.
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// CPU seconds used so far by the server (when local) and by the bench.
type Cpu = (Option<f64>, Option<f64>);

fn cpu(server: Option<u32>) -> Cpu {
    (
        server.and_then(|pid| procfs::cpu_seconds(Some(pid))),
        procfs::cpu_seconds(None),
    )
}

/// The `read` scenario; `rows` is the number of jobs in the table, for the report.
pub async fn read(
    client: &Client,
    connections: usize,
    seconds: Duration,
    server: Option<u32>,
    rows: u64,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let small = submit_one(client, echo_body()).await?;
    let large_body = json_bytes(&json!({"type": "echo", "payload": large_payload()}));
    let large = submit_one(client, large_body).await?;
    // A whole first page of the bench user's own jobs, newer than the two above.
    let mut page = Vec::with_capacity(PAGE);
    for _ in 0..PAGE {
        page.push(submit_one(client, echo_body()).await?);
    }
    for id in [&small, &large].into_iter().chain(&page) {
        wait_state(client, id, "succeeded", deadline).await?;
    }
    report.push("read", "jobs in the table", rows as f64, "jobs");
    report.push("read", "connections", connections as f64, "connections");
    report.push(
        "read",
        "measured time per endpoint",
        seconds.as_secs_f64(),
        "s",
    );
    for (what, id) in [("small job", &small), ("11 KB result", &large)] {
        let path = format!("/api/v1/jobs/{id}");
        let resp = client.get(&path).await?;
        let bytes = resp.body.len();
        resp.json_if(200, "GET /api/v1/jobs/{id}")?;
        let figure = format!("GET /api/v1/jobs/{{id}} body, {what}");
        report.push("read", &figure, bytes as f64, "bytes");
    }

    let targets = targets(&small, &large);
    let warm_up = WARM_UP.min(seconds / 8);
    let anonymous = client.anonymous();
    let (mut baseline, mut failures) = (None, Vec::new());
    for (measured, target) in targets.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let window = seconds.min(left.saturating_sub(warm_up));
        if window.is_zero() {
            bail!(
                "stopped at --max-seconds after {measured} of {} endpoints",
                targets.len()
            );
        }
        let client = if target.anonymous { &anonymous } else { client };
        let (tally, (server_cpu, bench_cpu)) =
            hammer(client, &target.path, connections, warm_up, window, server).await?;
        let requests = tally.latencies.len() as u64;
        let rate = requests as f64 / window.as_secs_f64();
        let base = *baseline.get_or_insert(rate);
        let mut ms: Vec<f64> = tally
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let per_request = |seconds: Option<f64>| {
            seconds
                .filter(|_| requests > 0)
                .map(|s| s * 1e6 / requests as f64)
        };
        report.endpoints.push(Endpoint {
            scenario: "read",
            endpoint: target.name.clone(),
            requests,
            errors: tally.errors,
            requests_per_s: rate,
            p50_ms: percentile(&ms, 0.50),
            p95_ms: percentile(&ms, 0.95),
            p99_ms: percentile(&ms, 0.99),
            server_cpu_us: per_request(server_cpu),
            bench_cpu_us: per_request(bench_cpu),
            percent_of_baseline: (base > 0.0).then(|| rate / base * 100.0),
        });
        if tally.errors > 0 {
            failures.push(format!(
                "{}: {} error(s), the first: {}",
                target.name,
                tally.errors,
                tally.first_error.unwrap_or_default()
            ));
        } else if requests == 0 {
            failures.push(format!("{}: no answer within the window", target.name));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    for (name, accept) in [
        ("GET /metrics, Prometheus text, one at a time", "text/plain"),
        (
            "GET /metrics, JSON summary, one at a time",
            "application/json",
        ),
    ] {
        scrape(client, name, accept, report).await?;
    }
    Ok(())
}

/// Requests `GET /metrics` made one after another, as a Prometheus (or a person) would.
const SCRAPES: usize = 50;

/// `GET /metrics` [`SCRAPES`] times in a row with `Accept: accept`: its latency on this
/// table (what a scrape costs, not a rate under load).
async fn scrape(
    client: &Client,
    name: &str,
    accept: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut ms = Vec::with_capacity(SCRAPES);
    let started = Instant::now();
    for _ in 0..SCRAPES {
        let sent = Instant::now();
        let (status, body) = client.open("/metrics", accept).await?;
        body.collect()
            .await
            .context("while reading a /metrics body")?;
        if status != StatusCode::OK {
            bail!("{name}: {status} (the bench user must be an operator or admin)");
        }
        ms.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    let rate = SCRAPES as f64 / started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    report.endpoints.push(Endpoint {
        scenario: "read",
        endpoint: name.to_owned(),
        requests: SCRAPES as u64,
        errors: 0,
        requests_per_s: rate,
        p50_ms: percentile(&ms, 0.50),
        p95_ms: percentile(&ms, 0.95),
        p99_ms: percentile(&ms, 0.99),
        server_cpu_us: None,
        bench_cpu_us: None,
        percent_of_baseline: None,
    });
    Ok(())
}

/// The endpoints, `GET /healthz` (the baseline) first.
fn targets(small: &str, large: &str) -> Vec<Target> {
    let t = |name: &str, path: String| Target {
        name: name.to_owned(),
        path,
        anonymous: false,
    };
    vec![
        Target {
            name: "GET /healthz".to_owned(),
            path: "/healthz".to_owned(),
            anonymous: true,
        },
        t("GET /api/v1/me", "/api/v1/me".to_owned()),
        t(
            "GET /api/v1/jobs/{id}, small job",
            format!("/api/v1/jobs/{small}"),
        ),
        t(
            "GET /api/v1/jobs/{id}, 11 KB result",
            format!("/api/v1/jobs/{large}"),
        ),
        t(
            "GET /api/v1/jobs/{id}/status, small job",
            format!("/api/v1/jobs/{small}/status"),
        ),
        t(
            "GET /api/v1/jobs/{id}/status, 11 KB result",
            format!("/api/v1/jobs/{large}/status"),
        ),
        t(
            "GET /api/v1/jobs/{id}/events",
            format!("/api/v1/jobs/{small}/events"),
        ),
        t(
            "GET /api/v1/jobs/{id}/logs",
            format!("/api/v1/jobs/{small}/logs"),
        ),
        t(
            "GET /api/v1/jobs?limit=20",
            "/api/v1/jobs?limit=20".to_owned(),
        ),
        t(
            "GET /api/v1/jobs?limit=20&state=succeeded",
            "/api/v1/jobs?limit=20&state=succeeded".to_owned(),
        ),
        t(
            "GET /api/v1/admin/jobs?limit=20",
            "/api/v1/admin/jobs?limit=20".to_owned(),
        ),
    ]
}

/// `connections` tasks `GET path` back to back for `warm_up + window`; answers that arrive
/// within the window are counted (those sent in the warm-up included, none after it ends).
/// Returns the tally and the CPU time used during the window.
async fn hammer(
    client: &Client,
    path: &str,
    connections: usize,
    warm_up: Duration,
    window: Duration,
    server: Option<u32>,
) -> anyhow::Result<(Tally, Cpu)> {
    let from = Instant::now() + warm_up;
    let until = from + window;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, path) = (client.clone(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                match client.get(&path).await {
                    Ok(resp) if resp.status.is_success() => {
                        let done = Instant::now();
                        if (from..=until).contains(&done) {
                            tally.latencies.push(done - sent);
                        }
                    }
                    Ok(resp) => {
                        let body = String::from_utf8_lossy(&resp.body);
                        let body: String = body.chars().take(300).collect();
                        tally.error(format!("GET {path}: {} {body}", resp.status));
                    }
                    Err(e) => {
                        // The connection failed: hammering on would only repeat it.
                        tally.error(format!("{e:#}"));
                        break;
                    }
                }
            }
            tally
        }));
    }
    tokio::time::sleep_until(from.into()).await;
    let before = cpu(server);
    tokio::time::sleep_until(until.into()).await;
    let after = cpu(server);
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a reading task panicked")?);
    }
    let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    Ok((tally, (used(before.0, after.0), used(before.1, after.1))))
}

/// An `echo` payload of at least [`LARGE_BYTES`] of JSON: rows of a made-up table.
fn large_payload() -> Value {
    let mut rows = Vec::new();
    let mut bytes = r#"{"rows":[]}"#.len();
    while bytes < LARGE_BYTES {
        let i = rows.len();
        let row = json!({
            "id": i,
            "name": format!("row-{i:05}"),
            "value": i as f64 * 0.5,
            "tags": ["alpha", "beta", "gamma"],
        });
        bytes += row.to_string().len() + 1;
        rows.push(row);
    }
    json!({ "rows": rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_large_payload_is_about_11_kb_of_json() {
        let len = serde_json::to_vec(&large_payload()).map_or(0, |v| v.len());
        assert!((LARGE_BYTES..LARGE_BYTES + 200).contains(&len), "{len}");
    }

    #[test]
    fn healthz_comes_first_without_a_token_and_every_endpoint_once() {
        let t = targets("a", "b");
        assert_eq!(t.len(), 11);
        assert!(t[0].anonymous && t[0].path == "/healthz");
        assert!(t[1..].iter().all(|t| !t.anonymous));
        let mut names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), 11);
    }
}
