//! The live commands: `kiln logs [-f]`, `submit --wait` and `watch`, over the server's
//! Server-Sent Event streams (`GET /jobs/{id}/logs?follow=true`, `GET /events`).

use std::time::Duration;

use clap::Args;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::api::Api;
use super::error::{CliError, CliResult};
use super::jobs::jobs_table;
use super::output::{Out, field};
use super::{Conn, encode, resolve_id};

/// Reconnects of a followed log whose connection dropped before the job ended.
const RECONNECTS: u32 = 5;

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    /// `id:`.
    pub id: Option<String>,
    /// `event:` (none for plain messages).
    pub event: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: String,
}

/// Reads events from a streamed response body.
pub struct Sse {
    body: Incoming,
    parser: Parser,
}

impl Sse {
    /// Events of `body`.
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            parser: Parser::default(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> CliResult<Option<Event>> {
        loop {
            if let Some(event) = self.parser.take() {
                return Ok(Some(event));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| CliError::server(format!("the stream broke: {e}")))?;
            if let Ok(data) = frame.into_data() {
                self.parser.buf.extend_from_slice(&data);
            }
        }
    }
}

/// The bytes of an SSE stream received so far, cut into events.
#[derive(Debug, Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// The first complete event in the buffer, if any.
    fn take(&mut self) -> Option<Event> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut event = Event::default();
            let mut data = Vec::new();
            for line in text.lines() {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match name {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "data" => data.push(value.to_owned()),
                    _ => {}
                }
            }
            if data.is_empty() && event.event.is_none() {
                continue; // a heartbeat comment
            }
            event.data = data.join("\n");
            return Some(event);
        }
    }
}

/// `kiln logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Job id, or a unique prefix of at least 8 characters.
    pub id: String,
    /// Follow the log live until the job ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln logs [-f]`.
pub async fn logs(api: &Api, out: Out, args: LogsArgs) -> CliResult<i32> {
    let id = resolve_id(api, &args.id).await?;
    if !args.follow {
        let text = api.text(&format!("/api/v1/jobs/{id}/logs")).await?;
        if out.json {
            let _ = out.json(&json!({"id": id, "log": text}), false);
        } else {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
        }
        return Ok(0);
    }
    let path = format!("/api/v1/jobs/{id}/logs?follow=true");
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    loop {
        let resp = match &last_id {
            None => api.open(&path, "text/event-stream").await?,
            Some(last) => api.open_resuming(&path, last).await?,
        };
        let mut events = Sse::new(resp.into_body());
        while let Some(event) = events.next().await? {
            match event.event.as_deref() {
                Some("end") => {
                    if out.json {
                        let _ = out.json(&json!({"end": event.data}), true);
                    }
                    return Ok(0);
                }
                Some("dropped") => {
                    eprintln!(
                        "(the server dropped this follower: {}; resuming)",
                        event.data
                    );
                    break;
                }
                _ => {}
            }
            let written = if out.json {
                out.json(&json!({"offset": event.id, "line": event.data}), true)
            } else {
                out.line(&event.data)
            };
            if written.is_err() {
                return Ok(0); // stdout closed (`| head`): done
            }
            last_id = event.id.or(last_id);
        }
        reconnects += 1;
        if reconnects > RECONNECTS {
            return Err(CliError::server("the log stream keeps breaking; giving up"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `state` is final.
fn terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "dead" | "cancelled")
}

/// `submit --wait`: a progress bar (on stderr, on a terminal) until the job ends, fed by
/// the `/events` stream and its progress; exits 0 if it succeeded, 1 otherwise.
pub async fn wait(api: &Api, out: Out, id: &str) -> CliResult<i32> {
    // Subscribed before the first read of the state, so the end cannot be missed.
    let resp = api.open("/api/v1/events", "text/event-stream").await?;
    let mut events = Sse::new(resp.into_body());
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let status_path = format!("/api/v1/jobs/{id}/status");
    loop {
        let status = api.get(&status_path).await?;
        let state = field(&status["state"]);
        bar.set_position((status["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        bar.set_message(state.clone());
        if terminal(&state) {
            bar.finish_and_clear();
            return finished(api, out, id, &state).await;
        }
        tokio::select! {
            event = events.next() => match event? {
                Some(_) => {}
                None => return Err(CliError::server("the event stream ended before the job")),
            },
            _ = tick.tick() => {}
        }
    }
}

/// Prints how the job ended; the exit code says whether it succeeded.
async fn finished(api: &Api, out: Out, id: &str, state: &str) -> CliResult<i32> {
    let job = api.get(&format!("/api/v1/jobs/{id}")).await?;
    if out.json {
        let _ = out.json(&job, false);
    } else {
        let mut line = format!("{id} {}", out.state(state));
        if !job["error"].is_null() {
            line.push_str(&format!(
                ": {}: {}",
                field(&job["error"]["code"]),
                field(&job["error"]["message"])
            ));
        } else if !job["result"].is_null() {
            line.push_str(&format!(
                "\n{}",
                serde_json::to_string_pretty(&job["result"]).unwrap_or_default()
            ));
        }
        let _ = out.line(&line);
    }
    Ok(if state == "succeeded" { 0 } else { 1 })
}

/// `kiln watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// How many of the most recent jobs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln watch`: the table of your most recent jobs, redrawn in place on every change
/// (coalesced over 200 ms) until Ctrl-C. Not on a terminal, each change prints the table
/// again; with `--json`, each change is one JSON line.
pub async fn watch(api: &Api, out: Out, args: WatchArgs) -> CliResult<i32> {
    if !(1..=100).contains(&args.limit) {
        return Err(CliError::usage("--limit must be from 1 to 100"));
    }
    let resp = api.open("/api/v1/events", "text/event-stream").await?;
    let mut events = Sse::new(resp.into_body());
    let list = format!(
        "/api/v1/jobs?{}",
        encode(&[("limit", args.limit.to_string())])
    );
    let mut dirty = true;
    loop {
        if dirty && !out.json && draw(api, out, &list).await.is_err() {
            return Ok(0);
        }
        dirty = false;
        let event = tokio::select! {
            event = events.next() => event?,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let Some(event) = event else {
            return Err(CliError::server("the event stream ended"));
        };
        if out.json {
            let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if out.json(&value, true).is_err() {
                return Ok(0);
            }
            continue;
        }
        dirty = true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Draws the table once: in place on a terminal, appended otherwise.
async fn draw(api: &Api, out: Out, list: &str) -> Result<(), ()> {
    let page = api
        .get(list)
        .await
        .map_err(|e| super::output::error(&e.message))?;
    let jobs = page["items"].as_array().cloned().unwrap_or_default();
    let table = jobs_table(&jobs, out);
    let text = if out.tty {
        // Home and clear the screen, then the table and the time.
        format!(
            "\x1b[H\x1b[2J{table}\n\n{} — Ctrl-C to stop",
            chrono::Local::now().format("%H:%M:%S")
        )
    } else {
        format!("{table}\n")
    };
    out.line(&text).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_and_comments_skipped() {
        let mut p = Parser::default();
        p.buf.extend_from_slice(
            b": ping\n\nid: 5\ndata: one\ndata: two\n\nevent: end\ndata: succeeded\n\nid: 9\nda",
        );
        assert_eq!(
            p.take(),
            Some(Event {
                id: Some("5".into()),
                event: None,
                data: "one\ntwo".into()
            })
        );
        assert_eq!(
            p.take(),
            Some(Event {
                id: None,
                event: Some("end".into()),
                data: "succeeded".into()
            })
        );
        assert_eq!(p.take(), None, "an incomplete event waits for the rest");
    }

    #[test]
    fn terminal_states_are_the_three_final_ones() {
        assert!(terminal("succeeded") && terminal("dead") && terminal("cancelled"));
        assert!(!terminal("running") && !terminal("failed"));
    }
}
