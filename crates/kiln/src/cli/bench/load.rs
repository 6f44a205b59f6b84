//! Throughput scenarios: `submit` (accepted submissions per second and their latency) and
//! `e2e` (submitted to succeeded), plus the helpers they share with the others: many
//! concurrent submissions, the `/metrics` counters, and waiting for the queue to drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::JobKind;
use super::http::{Client, json_bytes};
use super::report::Report;

/// How often the e2e scenario and the drain read `/metrics`: rare enough that polling is a
/// small fraction of the load (each read computes the p95 start latency over the last
/// 1,000 jobs: at every 10 ms it was 4–8% of the server's CPU in the e2e profile), often
/// enough to add at most this much to a measured time of several seconds.
const METRICS_POLL: Duration = Duration::from_millis(25);

/// The body of a no-op `echo` submission.
pub fn echo_body() -> Bytes {
    json_bytes(&json!({"type": "echo", "payload": {}}))
}

/// The body of a job that ends at once: `echo`, or a `command` of `/bin/true`.
pub fn quick_body(kind: JobKind) -> Bytes {
    match kind {
        JobKind::Echo => echo_body(),
        JobKind::Command => {
            json_bytes(&json!({"type": "command", "payload": {"argv": ["/bin/true"]}}))
        }
    }
}

/// The body of a job that runs for a minute unless cancelled.
pub fn long_body(kind: JobKind) -> Bytes {
    match kind {
        JobKind::Echo => json_bytes(&json!({"type": "sleep", "payload": {"ms": 60_000}})),
        JobKind::Command => {
            json_bytes(&json!({"type": "command", "payload": {"argv": ["/bin/sleep", "60"]}}))
        }
    }
}

/// The jobs of `kind`, in words for the report.
pub fn describe(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Echo => "no-op `echo` (cancel: 60 s `sleep`)",
        JobKind::Command => "`command` of /bin/true (cancel: `sleep 60` processes)",
    }
}

/// What [`submit_many`] measured.
pub struct Submitted {
    /// Each accepted request's latency.
    pub latencies: Vec<Duration>,
    /// Wall time of the whole burst.
    pub elapsed: Duration,
}

/// Submits `body` `n` times over `connections` concurrent keep-alive connections, stopping
/// early at `deadline`. Every answer must be 202.
pub async fn submit_many(
    client: &Client,
    body: Bytes,
    n: usize,
    connections: usize,
    deadline: Instant,
) -> anyhow::Result<Submitted> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.min(n) {
        let (client, body, next) = (client.clone(), body.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n / connections + 1);
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                let sent = Instant::now();
                let resp = client
                    .send(Method::POST, "/api/v1/jobs", Some(body.clone()))
                    .await?;
                if resp.status.as_u16() != 202 {
                    resp.json_if(202, "POST /api/v1/jobs")?;
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await.context("a submitting task panicked")??);
    }
    Ok(Submitted {
        latencies,
        elapsed: started.elapsed(),
    })
}

/// One reading of the `/metrics` JSON summary (needs an operator or admin).
pub struct Counts {
    /// Jobs ever submitted (seeded ones included).
    pub total: u64,
    /// `succeeded` jobs.
    pub succeeded: u64,
    /// Jobs waiting or running (`queued` + `running`).
    pub active: u64,
}

/// Reads the server's job counters.
pub async fn counts(client: &Client) -> anyhow::Result<Counts> {
    let m = client.get("/metrics").await?.json_if(
        200,
        "GET /metrics (the bench user must be an operator or admin)",
    )?;
    let field = |name: &str| m[name].as_u64().unwrap_or(0);
    Ok(Counts {
        total: field("total_submitted"),
        succeeded: field("succeeded"),
        active: field("queued") + field("running"),
    })
}

/// Waits until nothing is queued or running, so one scenario's backlog does not slow the
/// next one down.
pub async fn drain(client: &Client, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let c = counts(client).await?;
        if c.active == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} jobs still queued or running after {limit:?}", c.active);
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
}

/// `submit`: `jobs` echo submissions over `connections`; accepted jobs/s and latency.
pub async fn submit(
    client: &Client,
    kind: JobKind,
    jobs: usize,
    connections: usize,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let done = submit_many(
        client,
        quick_body(kind),
        jobs,
        connections,
        Instant::now() + limit,
    )
    .await?;
    let accepted = done.latencies.len();
    report.push("submit", "accepted (202)", accepted as f64, "jobs");
    report.push(
        "submit",
        "throughput",
        accepted as f64 / done.elapsed.as_secs_f64(),
        "jobs/s",
    );
    report.percentiles("submit", "request latency", &done.latencies);
    if accepted < jobs {
        bail!("stopped at --max-seconds after {accepted} of {jobs} submissions");
    }
    Ok(())
}

/// `e2e`: submits `jobs` echo jobs and waits until the server counts that many more
/// `succeeded`; jobs/s over the whole time, first submission to last success seen.
pub async fn e2e(
    client: &Client,
    kind: JobKind,
    jobs: usize,
    connections: usize,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let before = counts(client).await?.succeeded;
    let started = Instant::now();
    let done = submit_many(client, quick_body(kind), jobs, connections, deadline).await?;
    let target = done.latencies.len() as u64;
    let mut succeeded = 0;
    while Instant::now() < deadline {
        succeeded = counts(client).await?.succeeded.saturating_sub(before);
        if succeeded >= target {
            break;
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
    let elapsed = started.elapsed();
    report.push("e2e", "jobs succeeded", succeeded as f64, "jobs");
    report.push("e2e", "elapsed", elapsed.as_secs_f64(), "s");
    report.push(
        "e2e",
        "throughput",
        succeeded as f64 / elapsed.as_secs_f64(),
        "jobs/s",
    );
    if succeeded < jobs as u64 {
        bail!("stopped at --max-seconds with {succeeded} of {jobs} jobs succeeded");
    }
    Ok(())
}
