//! `stream`: live log streaming. A `command` job writes `lines` lines as fast as a shell
//! loop can (one `write` per line); it runs three times with no follower and three times
//! followed by `readers` SSE readers (`GET /jobs/{id}/logs?follow=true`) that connect while
//! it is still scheduled. Reported: the job's own run time both ways (median), the lines
//! each reader got and its lines/s (first line to last), and the server's CPU per run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use serde_json::json;

use super::http::{Client, json_bytes};
use super::probe::{span, submit_one, wait_state};
use super::procfs;
use super::report::Report;

/// Runs of each kind; the medians are reported.
const RUNS: usize = 3;
/// How far ahead the followed job is scheduled, so every reader is connected first.
const DELAY_MS: u64 = 1_000;

/// What one reader saw.
struct Read {
    lines: u64,
    span: Duration,
}

/// The `stream` scenario.
pub async fn stream(
    client: &Client,
    lines: u64,
    readers: usize,
    server: Option<u32>,
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let script = format!("i=0; while [ $i -lt {lines} ]; do echo line $i; i=$((i+1)); done");
    let body = |delay_ms: u64| {
        json_bytes(&json!({
            "type": "command",
            "payload": {"argv": ["/bin/sh", "-c", script]},
            "delay_ms": delay_ms,
        }))
    };
    let cpu = || server.and_then(|pid| procfs::cpu_seconds(Some(pid)));
    let (mut alone, mut followed, mut rates, mut cpu_alone, mut cpu_followed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut fewest = u64::MAX;
    for _ in 0..RUNS {
        let before = cpu();
        let id = submit_one(client, body(0)).await?;
        let job = wait_state(client, &id, "succeeded", deadline).await?;
        alone.push(span(&job, "started_at", "finished_at")?);
        cpu_alone.extend(before.zip(cpu()).map(|(a, b)| b - a));

        let before = cpu();
        let id = submit_one(client, body(DELAY_MS)).await?;
        let mut tasks = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (client, id) = (client.clone(), id.clone());
            tasks.push(tokio::spawn(async move { follow(&client, &id).await }));
        }
        for task in tasks {
            let read = task.await.context("a reader task failed")??;
            fewest = fewest.min(read.lines);
            rates.push(read.lines as f64 / read.span.as_secs_f64().max(1e-6));
        }
        let job = wait_state(client, &id, "succeeded", deadline).await?;
        followed.push(span(&job, "started_at", "finished_at")?);
        cpu_followed.extend(before.zip(cpu()).map(|(a, b)| b - a));
    }
    let ms = |d: &[Duration]| median(&d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>());
    let (alone_ms, followed_ms) = (ms(&alone), ms(&followed));
    report.push("stream", "lines written by the job", lines as f64, "lines");
    report.push("stream", "SSE readers", readers as f64, "readers");
    report.push("stream", "job run time, no reader (median)", alone_ms, "ms");
    report.push(
        "stream",
        "job run time, followed (median)",
        followed_ms,
        "ms",
    );
    report.push(
        "stream",
        "run time growth with readers",
        (followed_ms / alone_ms - 1.0) * 100.0,
        "%",
    );
    report.push(
        "stream",
        "lines received by the slowest reader",
        fewest as f64,
        "lines",
    );
    report.push(
        "stream",
        "lines/s per reader (median)",
        median(&rates),
        "lines/s",
    );
    if !cpu_alone.is_empty() {
        report.push(
            "stream",
            "server CPU per run, no reader (median)",
            median(&cpu_alone),
            "s",
        );
        report.push(
            "stream",
            "server CPU per run, followed (median)",
            median(&cpu_followed),
            "s",
        );
    }
    if fewest < lines {
        bail!("a reader got {fewest} of {lines} lines");
    }
    Ok(())
}

/// Follows job `id` over SSE until its `end` event; counts its `line N` lines.
async fn follow(client: &Client, id: &str) -> anyhow::Result<Read> {
    let path = format!("/api/v1/jobs/{id}/logs?follow=true");
    let (status, mut body) = client.open(&path, "text/event-stream").await?;
    if status.as_u16() != 200 {
        bail!("GET {path}: expected 200, got {status}");
    }
    let (mut lines, mut first, mut last) = (0_u64, None, Instant::now());
    let mut carry = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("while reading a log stream")?.into_data() else {
            continue;
        };
        carry.extend_from_slice(&data);
        let Some(cut) = carry.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let now = Instant::now();
        for line in carry[..cut].split(|&b| b == b'\n') {
            if line.starts_with(b"data: [stdout] line ") {
                lines += 1;
                first.get_or_insert(now);
                last = now;
            } else if line == b"event: end" {
                let span = last - first.unwrap_or(last);
                return Ok(Read { lines, span });
            }
        }
        carry.drain(..=cut);
    }
    bail!("the log stream of {id} ended without an `end` event")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
