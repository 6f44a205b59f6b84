//! Live streams over a real socket: `GET /jobs/{id}/logs?follow=true` (plain and SSE) and
//! `GET /events`, with `Last-Event-ID` resumes.

use std::time::Duration;

use hyper::{Method, StatusCode};
use kiln_testkit::Streaming;
use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(30);

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sse {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads SSE events from a live response, a chunk at a time.
pub struct SseReader {
    stream: Streaming,
    buf: String,
}

impl SseReader {
    pub fn new(stream: Streaming) -> Self {
        Self {
            stream,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..at + 2).collect();
                let mut event = Sse::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                if data.is_empty() && event.id.is_none() && event.event.is_none() {
                    continue; // a heartbeat comment
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk = tokio::time::timeout(LONG, self.stream.next_chunk())
                .await
                .expect("an event within 30 s")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn shell() -> Opts {
    Opts {
        flags: vec![
            "--command-allow".into(),
            "sh".into(),
            "--command-grace".into(),
            "300ms".into(),
        ],
        ..Opts::default()
    }
}

async fn follow(app: &TestApp, token: &str, id: &str, sse: bool, last: Option<&str>) -> Streaming {
    let mut req = app
        .client
        .request(Method::GET, &format!("/api/v1/jobs/{id}/logs?follow=true"))
        .bearer(Some(token));
    if sse {
        req = req.header("accept", "text/event-stream");
    }
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    let stream = req.open().await;
    assert_eq!(stream.status, StatusCode::OK);
    stream
}

const TICKER: &str = "for i in $(seq 1 30); do echo line $i; sleep 0.1; done";

fn ticker_lines() -> Vec<String> {
    (1..=30).map(|i| format!("[stdout] line {i}")).collect()
}

#[tokio::test]
async fn two_followers_get_every_line_in_order_while_the_job_runs() {
    let app = TestApp::spawn_with(shell()).await;
    let id = app
        .submit_ok(
            &app.admin,
            json!({"type": "command", "payload": {"argv": ["sh", "-c", TICKER]}}),
        )
        .await;
    let mut plain = follow(&app, &app.admin, &id, false, None).await;
    let mut sse = SseReader::new(follow(&app, &app.admin, &id, true, None).await);

    // The first line reaches the plain follower while the job is still running.
    let mut text = String::new();
    while !text.contains("[stdout] line 1\n") {
        let chunk = plain.next_chunk().await.expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let job = app.job(&app.admin, &id).await;
    assert_eq!(
        job["state"], "running",
        "the first line came only after the job"
    );
    text.push_str(&plain.rest().await);
    let got: Vec<&str> = text.lines().filter(|l| l.starts_with("[stdout]")).collect();
    assert_eq!(got, ticker_lines());

    let mut lines = Vec::new();
    let mut ids = Vec::new();
    let end = loop {
        let event = sse.next().await.expect("an end event");
        if event.event.as_deref() == Some("end") {
            break event;
        }
        ids.push(
            event
                .id
                .clone()
                .expect("an id per line")
                .parse::<u64>()
                .unwrap(),
        );
        lines.push(event.data);
    };
    assert_eq!(end.data, "succeeded");
    let stdout: Vec<&String> = lines.iter().filter(|l| l.starts_with("[stdout]")).collect();
    assert_eq!(stdout, ticker_lines().iter().collect::<Vec<_>>());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    assert!(sse.next().await.is_none(), "the stream ends after `end`");
    app.stop().await;
}

#[tokio::test]
async fn an_sse_follower_resumes_after_its_last_event_id() {
    let app = TestApp::spawn_with(shell()).await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "command", "payload": {"argv": ["sh", "-c", "for i in $(seq 1 20); do echo n $i; done"]}}))
        .await;
    app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let mut all = SseReader::new(follow(&app, &app.admin, &id, true, None).await);
    let mut events = Vec::new();
    while let Some(e) = all.next().await {
        events.push(e);
    }
    let tenth = events
        .iter()
        .position(|e| e.data == "[stdout] n 10")
        .unwrap();
    let resume_at = events[tenth].id.clone().unwrap();
    let mut rest = SseReader::new(follow(&app, &app.admin, &id, true, Some(&resume_at)).await);
    let mut resumed = Vec::new();
    while let Some(e) = rest.next().await {
        resumed.push(e);
    }
    assert_eq!(
        resumed,
        events[tenth + 1..],
        "exactly the events after the one resumed from"
    );
    app.stop().await;
}

#[tokio::test]
async fn following_another_users_job_is_404_and_a_bad_last_event_id_400() {
    let app = TestApp::spawn().await;
    let bob = app.user("bob", "client").await;
    let id = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {}}))
        .await;
    let path = format!("/api/v1/jobs/{id}/logs?follow=true");
    let resp = app.client.get(Some(&bob), &path).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = app
        .client
        .request(Method::GET, &path)
        .bearer(Some(&app.admin))
        .header("last-event-id", "yesterday")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    app.stop().await;
}

async fn events(app: &TestApp, token: &str, query: &str, last: Option<&str>) -> Streaming {
    let mut req = app
        .client
        .request(Method::GET, &format!("/api/v1/events{query}"))
        .bearer(Some(token))
        .header("accept", "text/event-stream");
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    req.open().await
}

/// Reads events until `id` is `succeeded`; returns every event read.
async fn until_succeeded(reader: &mut SseReader, id: &str) -> Vec<(Value, String)> {
    let mut seen = Vec::new();
    loop {
        let e = reader.next().await.expect("the stream stays open");
        let data: Value = serde_json::from_str(&e.data).unwrap();
        let done = data["id"] == id && data["state"] == "succeeded";
        seen.push((data, e.id.expect("an event id")));
        if done {
            return seen;
        }
    }
}

fn states_of(seen: &[(Value, String)], id: &str) -> Vec<String> {
    seen.iter()
        .filter(|(d, _)| d["id"] == id)
        .map(|(d, _)| d["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn events_stream_my_jobs_state_changes_and_nothing_of_other_users() {
    let app = TestApp::spawn().await;
    let bob = app.user("bob", "client").await;
    let stream = events(&app, &app.admin, "", None).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert!(
        stream.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut reader = SseReader::new(stream);
    let theirs = app
        .submit_ok(&bob, json!({"type": "echo", "payload": {}}))
        .await;
    app.wait_state(&bob, &theirs, "succeeded", LONG).await;
    let mine = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {"x": 1}}))
        .await;
    let seen = until_succeeded(&mut reader, &mine).await;
    assert_eq!(states_of(&seen, &mine), ["queued", "running", "succeeded"]);
    assert!(
        seen.iter().all(|(d, _)| d["id"] == mine.as_str()),
        "{seen:?}"
    );
    let (last, _) = seen.last().unwrap();
    assert_eq!(last["type"], "echo");
    assert_eq!(last["attempt"], 1);
    assert!(last["at"].as_str().unwrap().ends_with('Z'));

    // An operator asking for every job sees bob's too; a filter narrows it.
    let mut all = SseReader::new(
        events(
            &app,
            &app.admin,
            "?all=true&state=succeeded",
            Some("0.00000000000000000000000000000000.0"),
        )
        .await,
    );
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let e = all.next().await.unwrap();
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["state"], "succeeded");
        ids.push(data["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids, [theirs, mine]);
    app.stop().await;
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_the_missed_events() {
    let app = TestApp::spawn().await;
    let mut reader = SseReader::new(events(&app, &app.admin, "", None).await);
    let first = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {}}))
        .await;
    let seen = until_succeeded(&mut reader, &first).await;
    let last_id = seen.last().unwrap().1.clone();
    drop(reader);

    let missed = app
        .submit_ok(&app.admin, json!({"type": "echo", "payload": {}}))
        .await;
    app.wait_state(&app.admin, &missed, "succeeded", LONG).await;
    let mut again = SseReader::new(events(&app, &app.admin, "", Some(&last_id)).await);
    let resumed = until_succeeded(&mut again, &missed).await;
    assert_eq!(
        states_of(&resumed, &missed),
        ["queued", "running", "succeeded"]
    );
    assert_eq!(resumed.len(), 3, "only the missed events: {resumed:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_events_stream_refuses_what_it_must() {
    let app = TestApp::spawn().await;
    let bob = app.user("bob", "client").await;
    let cases = [
        (None, "", StatusCode::UNAUTHORIZED),
        (Some(bob.as_str()), "?all=true", StatusCode::FORBIDDEN),
        (Some(bob.as_str()), "?state=done", StatusCode::BAD_REQUEST),
        (
            Some(bob.as_str()),
            "?type=fork_bomb",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (token, query, status) in cases {
        let resp = app
            .client
            .get(token, &format!("/api/v1/events{query}"))
            .await;
        assert_eq!(resp.status, status, "{query}: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
    }
    let resp = app
        .client
        .request(Method::GET, "/api/v1/events")
        .bearer(Some(&bob))
        .header("last-event-id", "nonsense")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_at_once_all_reach_the_stream_whatever_order_they_commit_in() {
    let app = TestApp::spawn().await;
    // Jobs at `dead`, made by hand (external jobs report their own outcome).
    let mut ids = Vec::new();
    for n in 0..60 {
        let body = json!({"type": "external", "payload": {"name": format!("x{n}")}});
        let id = app.submit_ok(&app.admin, body).await;
        for report in [
            json!({"state": "running"}),
            json!({"state": "dead", "error": "no"}),
        ] {
            app.report(&app.admin, &id, report).await;
        }
        ids.push(id);
    }
    let mut reader = SseReader::new(events(&app, &app.admin, "?state=queued", None).await);
    // Every retry at once: their events commit and signal in whatever order they finish.
    let retries = ids.iter().map(|id| {
        app.client
            .request(Method::POST, &format!("/api/v1/jobs/{id}/retry"))
            .bearer(Some(&app.admin))
            .send()
    });
    for resp in futures_util::future::join_all(retries).await {
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    let mut seen = std::collections::HashSet::new();
    let all = async {
        while seen.len() < ids.len() {
            let e = reader.next().await.expect("the stream stays open");
            let data: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(data["state"], "queued");
            let id = data["id"].as_str().unwrap().to_owned();
            assert!(seen.insert(id), "sent twice: {data}");
        }
    };
    // (Heartbeats keep the stream busy, so a lost event shows only as this time running out.)
    let done = tokio::time::timeout(LONG, all).await;
    assert!(
        done.is_ok(),
        "{} of {} events arrived",
        seen.len(),
        ids.len()
    );
    app.stop().await;
}
