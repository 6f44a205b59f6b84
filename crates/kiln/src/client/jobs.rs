//! `kiln submit`, `ls`, `show`, `status`, `events`, `cancel`, `retry`, `rm` and `types`.

use std::time::Duration;

use clap::Args;
use hyper::Method;
use serde_json::{Value, json};

use super::api::Api;
use super::auth::rows;
use super::error::{CliError, CliResult};
use super::output::{Out, field, table, when};
use super::{Conn, encode, live, payload, resolve_id};

/// `kiln submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The job type (see `kiln types`).
    pub job_type: String,
    /// The payload: `key=value` pairs (typed by the type's schema), `@file.json`, or `-`
    /// to read JSON from stdin.
    pub params: Vec<String>,
    /// The payload as JSON.
    #[arg(long)]
    pub payload: Option<String>,
    /// Priority, -100..=100 (higher runs first; default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i64>,
    /// Queue [default: default].
    #[arg(long)]
    pub queue: Option<String>,
    /// Run at this time (RFC 3339, e.g. 2026-12-24T18:00:00Z).
    #[arg(long, visible_alias = "at", conflicts_with = "delay")]
    pub run_at: Option<String>,
    /// Run after this long (e.g. 30s, 10m, 2h).
    #[arg(long, visible_alias = "in", value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// A name to find the job by (`kiln ls --name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Submitting again with the same key returns the same job instead of a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end with a progress bar; exit 0 if it succeeded, 1 if it
    /// ended dead or cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln submit`.
pub async fn submit(api: &Api, out: Out, args: SubmitArgs) -> CliResult<i32> {
    let schema = if args
        .params
        .iter()
        .any(|p| p.contains('=') && !p.starts_with('@'))
    {
        schema_of(api, &args.job_type).await?
    } else {
        Value::Null
    };
    let payload = payload::build(args.payload.as_deref(), &args.params, &schema)?;
    let mut body = json!({"type": args.job_type, "payload": payload});
    let optional = [
        ("priority", args.priority.map(Value::from)),
        ("queue", args.queue.map(Value::from)),
        ("run_at", args.run_at.map(Value::from)),
        (
            "delay_ms",
            args.delay.map(|d| Value::from(d.as_millis() as u64)),
        ),
        ("name", args.name.map(Value::from)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let headers: Vec<(&'static str, String)> = args
        .idempotency_key
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    let job = api
        .json_with(Method::POST, "/api/v1/jobs", Some(&body), &headers)
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    if args.wait {
        if !out.json {
            eprintln!("Submitted {id} ({}).", field(&job["type"]));
        }
        return live::wait(api, out, &id).await;
    }
    if out.json {
        let _ = out.json(&job, false);
    } else {
        let _ = out.line(&format!(
            "Submitted {id} ({}, {}).",
            field(&job["type"]),
            out.state(&field(&job["state"]))
        ));
    }
    Ok(0)
}

/// The payload schema of `job_type`; an unknown type is a usage error listing the known.
async fn schema_of(api: &Api, job_type: &str) -> CliResult<Value> {
    let types = api.get("/api/v1/job-types").await?;
    let list = types.as_array().cloned().unwrap_or_default();
    list.iter()
        .find(|t| t["name"] == job_type)
        .map(|t| t["schema"].clone())
        .ok_or_else(|| {
            let known: Vec<String> = list.iter().map(|t| field(&t["name"])).collect();
            CliError::usage(format!(
                "unknown job type `{job_type}` (known: {})",
                known.join(", ")
            ))
        })
}

/// `kiln ls`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Only these states (comma-separated: queued,running,…).
    #[arg(long)]
    pub state: Option<String>,
    /// Only this type.
    #[arg(long = "type")]
    pub job_type: Option<String>,
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only jobs created within this long (e.g. 30m, 2h, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Jobs per page, 1..=100.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Every matching job, page after page (not just the first page).
    #[arg(long)]
    pub all: bool,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln ls`.
pub async fn ls(api: &Api, out: Out, args: LsArgs) -> CliResult<i32> {
    if !(1..=100).contains(&args.limit) {
        return Err(CliError::usage("--limit must be from 1 to 100"));
    }
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    let filters = [
        ("state", args.state),
        ("type", args.job_type),
        ("queue", args.queue),
        ("name", args.name),
    ];
    query.extend(filters.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    if let Some(since) = args.since {
        let delta = chrono::TimeDelta::from_std(since)
            .map_err(|_| CliError::usage("--since is too long"))?;
        let after = chrono::Utc::now() - delta;
        query.push((
            "created_after",
            after.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ));
    }
    let mut jobs = Vec::new();
    loop {
        let page = api.get(&format!("/api/v1/jobs?{}", encode(&query))).await?;
        jobs.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(cursor) if args.all => {
                query.retain(|(k, _)| *k != "cursor");
                query.push(("cursor", cursor.to_owned()));
            }
            _ => break,
        }
    }
    if out.json {
        let _ = out.json(&Value::Array(jobs), false);
    } else {
        let _ = out.line(&jobs_table(&jobs, out));
    }
    Ok(0)
}

/// The table of `kiln ls` and `kiln watch`.
pub fn jobs_table(jobs: &[Value], out: Out) -> String {
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                field(&j["id"]),
                field(&j["type"]),
                out.state(&field(&j["state"])),
                progress(&j["progress"]),
                field(&j["queue"]),
                when(&j["created_at"]),
                field(&j["name"]),
            ]
        })
        .collect();
    table(
        &[
            "id", "type", "state", "progress", "queue", "created", "name",
        ],
        rows,
    )
}

fn progress(value: &Value) -> String {
    value
        .as_f64()
        .map(|p| format!("{:.0}%", p * 100.0))
        .unwrap_or_else(|| "-".to_owned())
}

/// `kiln show`.
pub async fn show(api: &Api, out: Out, typed: &str) -> CliResult<i32> {
    let id = resolve_id(api, typed).await?;
    let job = api.get(&format!("/api/v1/jobs/{id}")).await?;
    if out.json {
        let _ = out.json(&job, false);
        return Ok(0);
    }
    let keys = [
        "id",
        "type",
        "queue",
        "name",
        "state",
        "priority",
        "attempts",
        "max_attempts",
        "progress",
        "cancel_requested",
        "created_at",
        "run_at",
        "started_at",
        "finished_at",
        "updated_at",
    ];
    let mut lines: Vec<String> = keys
        .iter()
        .map(|k| {
            let value = match *k {
                "state" => out.state(&field(&job[*k])),
                _ => field(&job[*k]),
            };
            format!("{k:<17}{value}")
        })
        .collect();
    for k in ["payload", "result", "error"] {
        if !job[k].is_null() {
            let pretty = serde_json::to_string_pretty(&job[k]).unwrap_or_default();
            lines.push(format!("{k}:\n{pretty}"));
        }
    }
    let _ = out.line(&lines.join("\n"));
    Ok(0)
}

/// `kiln status`.
pub async fn status(api: &Api, out: Out, typed: &str) -> CliResult<i32> {
    let id = resolve_id(api, typed).await?;
    let s = api.get(&format!("/api/v1/jobs/{id}/status")).await?;
    if out.json {
        let _ = out.json(&s, false);
        return Ok(0);
    }
    let mut line = format!(
        "{} {} {} (updated {})",
        field(&s["id"]),
        out.state(&field(&s["state"])),
        progress(&s["progress"]),
        when(&s["updated_at"])
    );
    if !s["error"].is_null() {
        line.push_str(&format!(
            "\nerror: {}: {}",
            field(&s["error"]["code"]),
            field(&s["error"]["message"])
        ));
    }
    if !s["result"].is_null() {
        line.push_str(&format!("\nresult: {}", s["result"]));
    }
    let _ = out.line(&line);
    Ok(0)
}

/// `kiln events`: a job's state history.
pub async fn events(api: &Api, out: Out, typed: &str) -> CliResult<i32> {
    let id = resolve_id(api, typed).await?;
    let events = api.get(&format!("/api/v1/jobs/{id}/events")).await?;
    if out.json {
        let _ = out.json(&events, false);
        return Ok(0);
    }
    let rows = rows(&events, |e| {
        vec![
            field(&e["seq"]),
            out.state(&field(&e["state"])),
            when(&e["at"]),
            field(&e["attempt"]),
            field(&e["node"]),
            field(&e["message"]),
        ]
    });
    let _ = out.line(&table(
        &["seq", "state", "at", "attempt", "node", "message"],
        rows,
    ));
    Ok(0)
}

/// What `cancel`, `retry` and `rm` do to each job.
#[derive(Debug, Clone, Copy)]
pub enum Act {
    /// `POST /cancel`.
    Cancel,
    /// `POST /retry`.
    Retry,
    /// `DELETE /jobs/{id}`.
    Remove,
}

/// Applies `act` to every job named; reports each, and exits with the first failure's
/// code after trying them all.
pub async fn each(api: &Api, out: Out, act: Act, typed: &[String]) -> CliResult<i32> {
    let mut first_error: Option<CliError> = None;
    for t in typed {
        match one(api, act, t).await {
            Ok(done) => {
                if out.json {
                    let _ = out.json(&done, true);
                } else {
                    let _ = out.line(&describe(act, &done, out));
                }
            }
            Err(e) => {
                super::output::error(&format!("{t}: {}", e.message));
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(first_error.map_or(0, |e| e.kind.exit_code()))
}

async fn one(api: &Api, act: Act, typed: &str) -> CliResult<Value> {
    let id = resolve_id(api, typed).await?;
    let path = format!("/api/v1/jobs/{id}");
    match act {
        Act::Cancel => {
            api.json(Method::POST, &format!("{path}/cancel"), None)
                .await
        }
        Act::Retry => api.json(Method::POST, &format!("{path}/retry"), None).await,
        Act::Remove => {
            api.json(Method::DELETE, &path, None).await?;
            Ok(json!({"id": id, "deleted": true}))
        }
    }
}

fn describe(act: Act, done: &Value, out: Out) -> String {
    let id = field(&done["id"]);
    match act {
        Act::Cancel if done["cancel_requested"] == true && done["state"] == "running" => {
            format!("Cancel requested for {id}: still stopping.")
        }
        Act::Cancel => format!("Cancelled {id} ({}).", out.state(&field(&done["state"]))),
        Act::Retry => format!("Queued {id} again ({}).", out.state(&field(&done["state"]))),
        Act::Remove => format!("Deleted {id}."),
    }
}

/// `kiln types`.
pub async fn types(api: &Api, out: Out) -> CliResult<i32> {
    let types = api.get("/api/v1/job-types").await?;
    if out.json {
        let _ = out.json(&types, false);
        return Ok(0);
    }
    let rows = rows(&types, |t| {
        let timeout = t["policy"]["timeout_ms"].as_u64().unwrap_or(0);
        vec![
            field(&t["name"]),
            field(&t["min_role"]),
            field(&t["policy"]["max_attempts"]),
            if timeout == 0 {
                "-".to_owned()
            } else {
                humantime::format_duration(Duration::from_millis(timeout)).to_string()
            },
            field(&t["description"]),
        ]
    });
    let _ = out.line(&table(
        &["type", "role", "attempts", "timeout", "description"],
        rows,
    ));
    Ok(0)
}
