//! `command` jobs through the API: who may submit them, what the allow-list refuses, a
//! run end to end, and a cancel that kills the whole process group.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Opts, TestApp};

const LONG: Duration = Duration::from_secs(30);

fn allow(programs: &str) -> Opts {
    Opts {
        flags: vec![
            "--command-allow".into(),
            programs.into(),
            "--command-grace".into(),
            "300ms".into(),
        ],
        ..Opts::default()
    }
}

fn command(argv: &[&str]) -> Value {
    json!({"type": "command", "payload": {"argv": argv}})
}

#[tokio::test]
async fn command_jobs_are_refused_without_an_allow_list() {
    let app = TestApp::spawn().await;
    let resp = app.submit(&app.admin, command(&["sh", "-c", "true"])).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    let problem = resp.json();
    assert_eq!(problem["code"], "invalid_request");
    assert!(
        problem["detail"].as_str().unwrap().contains("disabled"),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn only_operators_and_admins_may_submit_command_jobs() {
    let app = TestApp::spawn_with(allow("sh")).await;
    let client = app.user("carol", "client").await;
    let resp = app.submit(&client, command(&["sh", "-c", "true"])).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let operator = app.user("otto", "operator").await;
    let id = app
        .submit_ok(&operator, command(&["sh", "-c", "true"]))
        .await;
    app.wait_state(&operator, &id, "succeeded", LONG).await;
    app.stop().await;
}

#[tokio::test]
async fn a_program_off_the_list_is_refused_naming_payload_argv() {
    let app = TestApp::spawn_with(allow("sh")).await;
    for argv in [vec!["bash", "-c", "true"], vec!["/bin/sh/../sh"]] {
        let resp = app.submit(&app.admin, command(&argv)).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
        assert!(
            resp.json()["detail"]
                .as_str()
                .unwrap()
                .starts_with("payload.argv")
        );
    }
    let resp = app
        .submit(
            &app.admin,
            json!({"type": "command", "payload": {"argv": ["sh"], "cwd": "../x"}}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("payload.cwd")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_command_runs_end_to_end_with_its_output_as_the_log() {
    let app = TestApp::spawn_with(allow("sh,env")).await;
    let id = app
        .submit_ok(
            &app.admin,
            command(&["sh", "-c", "echo hello; echo warn >&2"]),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    assert_eq!(job["result"]["exit_code"], 0);
    assert_eq!(job["max_attempts"], 1);
    let log = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/logs"))
        .await
        .text();
    assert!(log.contains("[stdout] hello\n"), "{log}");
    assert!(log.contains("[stderr] warn\n"), "{log}");
    assert!(log.contains("rlimits: RLIMIT_AS"), "{log}");

    // Nothing of the server's own environment reaches the child.
    let id = app.submit_ok(&app.admin, command(&["env"])).await;
    app.wait_state(&app.admin, &id, "succeeded", LONG).await;
    let log = app
        .client
        .get(Some(&app.admin), &format!("/api/v1/jobs/{id}/logs"))
        .await
        .text();
    let mut names: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("[stdout] "))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["HOME", "LANG", "PATH"], "{log}");
    app.stop().await;
}

#[tokio::test]
async fn a_failing_command_ends_dead_with_its_exit_code_and_stderr() {
    let app = TestApp::spawn_with(allow("sh")).await;
    let id = app
        .submit_ok(
            &app.admin,
            command(&["sh", "-c", "echo 'no such table' >&2; exit 7"]),
        )
        .await;
    let job = app.wait_state(&app.admin, &id, "dead", LONG).await;
    assert_eq!(job["error"]["code"], "exit_code");
    assert_eq!(
        job["error"]["message"],
        "exited with code 7; last stderr: no such table"
    );
    app.stop().await;
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by init) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Submits a script that prints `pid N` lines, and waits until `count` are in the log.
async fn running_pids(app: &TestApp, script: &str, count: usize) -> (String, Vec<i32>) {
    let id = app
        .submit_ok(&app.admin, command(&["sh", "-c", script]))
        .await;
    let path = format!("/api/v1/jobs/{id}/logs");
    let pids = kiln_testkit::wait_until("the pids in the log", LONG, || async {
        let log = app.client.get(Some(&app.admin), &path).await.text();
        let pids: Vec<i32> = log
            .lines()
            .filter_map(|l| l.strip_prefix("[stdout] pid "))
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if pids.len() == count {
            Ok(pids)
        } else {
            Err(log)
        }
    })
    .await;
    assert!(pids.iter().all(|&p| alive(p)));
    (id, pids)
}

/// A shell and a grandchild that both ignore SIGTERM: only SIGKILL stops them.
const STUBBORN: &str =
    "trap '' TERM; (trap '' TERM; sleep 300 & echo pid $!; wait) & echo pid $$; echo pid $!; wait";

#[tokio::test]
async fn cancel_kills_the_whole_group_even_a_grandchild_ignoring_sigterm() {
    let app = TestApp::spawn_with(allow("sh")).await;
    let (id, pids) = running_pids(&app, STUBBORN, 3).await;
    let resp = app.cancel(&app.admin, &id).await;
    assert!(resp.status.is_success(), "{}", resp.text());
    app.wait_state(&app.admin, &id, "cancelled", LONG).await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_node_shutting_down_kills_the_groups_of_its_command_jobs() {
    let app = TestApp::spawn_with(allow("sh")).await;
    let (_, pids) = running_pids(&app, STUBBORN, 3).await;
    // The test node's shutdown grace is 2 s; then the job is interrupted like a cancel.
    app.stop().await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the server");
    }
}
