//! Latency scenarios: `latency` (start latency at a fixed light rate), `cancel` (cancel of a
//! running job) and `list` (`GET /api/v1/jobs` on a large table).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::Value;

use super::JobKind;
use super::http::Client;
use super::load::{long_body, quick_body};
use super::report::Report;

/// Poll interval while one job is watched (the client-side timings' resolution).
const JOB_POLL: Duration = Duration::from_millis(1);

/// Submits `body` and returns the new job's id.
pub async fn submit_one(client: &Client, body: bytes::Bytes) -> anyhow::Result<String> {
    let job = client
        .send(Method::POST, "/api/v1/jobs", Some(body))
        .await?
        .json_if(202, "POST /api/v1/jobs")?;
    job["id"]
        .as_str()
        .map(str::to_owned)
        .context("the submitted job has no id")
}

/// Polls `GET /api/v1/jobs/{id}` until the job is in `state`; fails on another terminal
/// state or at `deadline`.
pub async fn wait_state(
    client: &Client,
    id: &str,
    state: &str,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let path = format!("/api/v1/jobs/{id}");
    loop {
        let job = client
            .get(&path)
            .await?
            .json_if(200, "GET /api/v1/jobs/{id}")?;
        match job["state"].as_str() {
            Some(s) if s == state => return Ok(job),
            Some(s @ ("succeeded" | "dead" | "cancelled")) => {
                bail!("job {id} ended `{s}` while waiting for `{state}`")
            }
            _ if Instant::now() > deadline => {
                bail!("stopped at --max-seconds: job {id} was not `{state}` yet")
            }
            _ => tokio::time::sleep(JOB_POLL).await,
        }
    }
}

/// `b − a` for two RFC 3339 fields of a job record (millisecond precision).
pub fn span(job: &Value, a: &str, b: &str) -> anyhow::Result<Duration> {
    let at = |field: &str| {
        job[field]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .with_context(|| format!("the job record has no valid `{field}`"))
    };
    let ms = (at(b)? - at(a)?).num_milliseconds();
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// What one job of the `latency` scenario measured: its start latency from the record, and
/// submit → succeeded as the client saw it.
type Timing = anyhow::Result<(Duration, Duration)>;

/// `latency`: `count` echo jobs at `rate` per second, each watched until `succeeded`.
pub async fn latency(
    client: &Client,
    kind: JobKind,
    count: usize,
    rate: f64,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tasks = paced(client, kind, count, rate, Instant::now() + limit).await;
    let (mut start, mut seen, mut failure) = (Vec::new(), Vec::new(), None);
    for task in tasks {
        match task.await.context("a latency task panicked")? {
            Ok((s, e)) => {
                start.push(s);
                seen.push(e);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    report.push("latency", "jobs", start.len() as f64, "jobs");
    report.push("latency", "rate", rate, "jobs/s");
    report.percentiles("latency", "start (started_at − created_at)", &start);
    report.percentiles("latency", "submit → succeeded (client)", &seen);
    if let Some(e) = failure {
        return Err(e);
    }
    if start.len() < count {
        let n = start.len();
        bail!("stopped at --max-seconds after {n} of {count} jobs");
    }
    Ok(())
}

/// Starts one task per job at `rate` per second (until `deadline`); each submits a job of
/// `kind` and polls it until `succeeded`.
async fn paced(
    client: &Client,
    kind: JobKind,
    count: usize,
    rate: f64,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<Timing>> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        ticker.tick().await;
        if Instant::now() > deadline {
            break;
        }
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let id = submit_one(&client, quick_body(kind)).await?;
            let job = wait_state(&client, &id, "succeeded", deadline).await?;
            Ok((span(&job, "created_at", "started_at")?, sent.elapsed()))
        }));
    }
    tasks
}

/// `cancel`: `count` times, a 60 s `sleep` is submitted, awaited until `running`, and
/// cancelled; the time from sending `POST /cancel` until the job is `cancelled`.
pub async fn cancel(
    client: &Client,
    kind: JobKind,
    count: usize,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let body = long_body(kind);
    let mut took = Vec::with_capacity(count);
    while took.len() < count && Instant::now() < deadline {
        let id = submit_one(client, body.clone()).await?;
        match cancel_running(client, &id, deadline).await {
            Ok(t) => took.push(t),
            Err(e) => {
                // Do not leave a 60 s sleep behind for the next scenario to wait for.
                let path = format!("/api/v1/jobs/{id}/cancel");
                let _ = client.send(Method::POST, &path, None).await;
                if Instant::now() < deadline {
                    return Err(e);
                }
            }
        }
    }
    report.push("cancel", "cancels", took.len() as f64, "jobs");
    report.percentiles("cancel", "running → cancelled", &took);
    if took.len() < count {
        bail!(
            "stopped at --max-seconds after {} of {count} cancels",
            took.len()
        );
    }
    Ok(())
}

/// Waits until job `id` runs, then times its cancel until it is `cancelled`.
async fn cancel_running(client: &Client, id: &str, deadline: Instant) -> anyhow::Result<Duration> {
    wait_state(client, id, "running", deadline).await?;
    let sent = Instant::now();
    let path = format!("/api/v1/jobs/{id}/cancel");
    let resp = client.send(Method::POST, &path, None).await?;
    if !resp.status.is_success() {
        resp.json_if(200, "POST /api/v1/jobs/{id}/cancel")?;
    } else if resp.json()?["state"] != "cancelled" {
        // 202: the attempt is still stopping; the job turns `cancelled` shortly.
        wait_state(client, id, "cancelled", deadline).await?;
    }
    Ok(sent.elapsed())
}

/// `list`: `requests` sequential first pages of the caller's jobs, unfiltered and then
/// filtered by state.
pub async fn list(
    client: &Client,
    requests: usize,
    rows: u64,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.push("list", "jobs in the table", rows as f64, "jobs");
    let deadline = Instant::now() + limit;
    for (name, path) in [
        ("GET /jobs?limit=20", "/api/v1/jobs?limit=20"),
        (
            "GET /jobs?limit=20&state=succeeded",
            "/api/v1/jobs?limit=20&state=succeeded",
        ),
    ] {
        let mut took = Vec::with_capacity(requests);
        while took.len() < requests && Instant::now() < deadline {
            let sent = Instant::now();
            client.get(path).await?.json_if(200, path)?;
            took.push(sent.elapsed());
        }
        report.percentiles("list", name, &took);
        if took.len() < requests {
            bail!(
                "stopped at --max-seconds after {} of {requests} requests",
                took.len()
            );
        }
    }
    Ok(())
}
