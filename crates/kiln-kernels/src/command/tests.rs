//! The `command` kernel against real processes: output, exit codes, the clean environment,
//! limits, and stopping a whole process group.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::job_type::command::{AllowList, Limits, Program};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::test_context;

fn program(path: &str, name: Option<&str>, limits: Limits) -> Program {
    Program {
        path: path.to_owned(),
        name: name.map(str::to_owned),
        limits,
        max_attempts: 1,
    }
}

fn kernel_with(programs: Vec<Program>) -> Command {
    Command::new(CommandConfig {
        allow: Arc::new(AllowList::new(programs)),
        grace: Duration::from_millis(300),
        scratch: std::env::temp_dir().join("kiln-command-test-scratch"),
        cgroups: Err("not used by this test".to_owned()),
    })
}

fn sh_kernel() -> Command {
    kernel_with(vec![program("/bin/sh", Some("sh"), Limits::default())])
}

fn drain(rx: &mut UnboundedReceiver<String>) -> String {
    let mut text = String::new();
    while let Ok(line) = rx.try_recv() {
        text.push_str(&line);
    }
    text
}

async fn run(kernel: &Command, payload: Value) -> (Result<Value, KernelError>, String) {
    let (ctx, mut rx) = test_context(payload);
    let result = kernel.run(ctx).await;
    (result, drain(&mut rx))
}

fn failure(result: Result<Value, KernelError>) -> (bool, &'static str, String) {
    match result.expect_err("the run should fail") {
        KernelError::Permanent { code, source } => (false, code, source.to_string()),
        KernelError::Retryable { code, source } => (true, code, source.to_string()),
        other => panic!("not a plain failure: {other:?}"),
    }
}

#[tokio::test]
async fn output_is_logged_line_by_line_with_its_stream_and_exit_0_succeeds() {
    let script = "echo one; echo two >&2; printf three";
    let (result, log) = run(&sh_kernel(), json!({"argv": ["sh", "-c", script]})).await;
    let result = result.unwrap();
    assert_eq!(result["exit_code"], 0);
    assert_eq!(result["stdout_bytes"], 9);
    assert!(result["duration_ms"].is_u64());
    assert!(log.contains("[stdout] one\n"), "{log}");
    assert!(log.contains("[stderr] two\n"), "{log}");
    assert!(log.contains("[stdout] three\n"), "{log}");
    assert!(log.starts_with("rlimits: RLIMIT_AS 2 GiB"), "{log}");
    assert!(log.contains("cgroup v2: not available"), "{log}");
}

#[tokio::test]
async fn a_non_zero_exit_fails_for_good_with_the_code_and_the_last_stderr_lines() {
    let script = "echo first >&2; echo 'disk on fire' >&2; exit 3";
    let (result, _) = run(&sh_kernel(), json!({"argv": ["sh", "-c", script]})).await;
    let (retryable, code, message) = failure(result);
    assert!(!retryable);
    assert_eq!(code, "exit_code");
    assert_eq!(
        message,
        "exited with code 3; last stderr: first | disk on fire"
    );
}

#[tokio::test]
async fn with_retries_allowed_for_the_program_a_failed_run_is_retryable() {
    let mut p = program("/bin/sh", Some("sh"), Limits::default());
    p.max_attempts = 3;
    let (result, _) = run(
        &kernel_with(vec![p]),
        json!({"argv": ["sh", "-c", "exit 1"]}),
    )
    .await;
    assert!(failure(result).0);
}

#[tokio::test]
async fn the_environment_is_clean_except_what_kiln_and_the_payload_set() {
    // The test process itself has plenty of variables (cargo sets CARGO_*), none of which
    // may reach the child.
    assert!(std::env::vars().count() > 3);
    let kernel = kernel_with(vec![program(
        "/usr/bin/env",
        Some("env"),
        Limits::default(),
    )]);
    let payload = json!({"argv": ["env"], "env": {"GREETING": "hello there"}});
    let (result, log) = run(&kernel, payload).await;
    result.unwrap();
    let mut names: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("[stdout] "))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["GREETING", "HOME", "LANG", "PATH"], "{log}");
    assert!(log.contains("[stdout] GREETING=hello there\n"));
    assert!(log.contains("[stdout] PATH=/usr/local/bin:/usr/bin:/bin\n"));
}

#[tokio::test]
async fn the_process_leads_its_own_session_and_group_in_its_scratch_dir() {
    let script = "cat /proc/self/stat >/dev/null; ps -o pid=,pgid=,sid= -p $$; pwd; echo $HOME";
    let payload = json!({"argv": ["sh", "-c", script], "cwd": "sub/dir"});
    let (result, log) = run(&sh_kernel(), payload).await;
    let result = result.unwrap();
    let pid = result["pid"].as_u64().unwrap();
    let ids = log
        .lines()
        .find_map(|l| l.strip_prefix("[stdout] "))
        .unwrap();
    let ids: Vec<u64> = ids.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(
        ids,
        [pid, pid, pid],
        "pid, process group and session: {log}"
    );
    let pwd = log
        .lines()
        .filter_map(|l| l.strip_prefix("[stdout] "))
        .nth(1)
        .unwrap();
    let home = log
        .lines()
        .filter_map(|l| l.strip_prefix("[stdout] "))
        .nth(2)
        .unwrap();
    assert!(
        pwd.starts_with(home) && pwd.ends_with("/sub/dir"),
        "{pwd} in {home}"
    );
    assert!(
        !std::path::Path::new(home).exists(),
        "the scratch dir is removed afterwards"
    );
}

#[tokio::test]
async fn stdin_is_closed() {
    let (result, log) = run(
        &sh_kernel(),
        json!({"argv": ["sh", "-c", "cat; echo done"]}),
    )
    .await;
    result.unwrap();
    assert!(log.contains("[stdout] done\n"), "{log}");
}

/// The pids a script printed, one per `[stdout]` line.
fn printed_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("[stdout] pid "))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
        // A zombie still answers kill -0; /proc says whether it is one.
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[tokio::test]
async fn cancel_kills_a_forking_group_that_ignores_sigterm() {
    // The shell and a grandchild both ignore SIGTERM, so only the SIGKILL after the
    // grace period can stop them.
    let script = "trap '' TERM; (trap '' TERM; sleep 300 & echo pid $!; wait) & echo pid $$; echo pid $!; wait";
    let kernel = sh_kernel();
    let (ctx, mut rx) = test_context(json!({"argv": ["sh", "-c", script]}));
    let cancel = ctx.cancel.clone();
    let task = tokio::spawn(async move { kernel.run(ctx).await });
    let mut log = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while printed_pids(&log).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pids printed: {log}"
        );
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            log.push_str(&line);
        }
    }
    let pids = printed_pids(&log);
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    cancel.cancel();
    let result = task.await.unwrap();
    assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
}

#[tokio::test]
async fn a_timeout_stops_the_group_and_fails_the_job() {
    let payload = json!({"argv": ["sh", "-c", "sleep 30"], "timeout_ms": 200});
    let (result, _) = run(&sh_kernel(), payload).await;
    let (_, code, message) = failure(result);
    assert_eq!(code, "timeout");
    assert!(message.contains("200 ms"), "{message}");
}

#[tokio::test]
async fn processes_left_behind_when_the_leader_exits_are_killed() {
    let script = "sleep 300 & echo pid $!";
    let (result, log) = run(&sh_kernel(), json!({"argv": ["sh", "-c", script]})).await;
    result.unwrap();
    let pids = printed_pids(&log);
    assert_eq!(pids.len(), 1, "{log}");
    assert!(!alive(pids[0]), "the background sleep outlived its job");
}

#[tokio::test]
async fn a_memory_hungry_child_is_stopped_by_its_rlimit() {
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("SKIPPED: no python3 to allocate memory with");
        return;
    };
    let limits = Limits {
        memory_bytes: Some(256 << 20),
        ..Limits::default()
    };
    let kernel = kernel_with(vec![program(python, Some("python3"), limits)]);
    let grab = "b = bytearray(1 << 30); print('allocated', len(b))";
    let (result, log) = run(&kernel, json!({"argv": ["python3", "-c", grab]})).await;
    let (_, code, message) = failure(result);
    assert_eq!(code, "exit_code", "{message}");
    assert!(message.contains("MemoryError"), "{message}");
    assert!(!log.contains("allocated"), "{log}");
    assert!(log.contains("RLIMIT_AS 256 MiB"), "{log}");
}

#[tokio::test]
async fn a_file_size_limit_kills_with_sigxfsz() {
    let limits = Limits {
        file_size_bytes: Some(64 << 10),
        ..Limits::default()
    };
    let kernel = kernel_with(vec![program("/bin/sh", Some("sh"), limits)]);
    let script = "trap - XFSZ; exec head -c 1000000 /dev/zero > big";
    let (result, _) = run(&kernel, json!({"argv": ["sh", "-c", script]})).await;
    let (_, code, message) = failure(result);
    assert_eq!(code, "killed");
    assert!(message.starts_with("killed by SIGXFSZ"), "{message}");
}

#[tokio::test]
async fn a_program_no_longer_allowed_or_not_executable_fails_for_good() {
    let kernel = kernel_with(vec![program(
        "/usr/bin/env",
        Some("env"),
        Limits::default(),
    )]);
    let (result, _) = run(&kernel, json!({"argv": ["sh", "-c", "true"]})).await;
    let (retryable, code, message) = failure(result);
    assert_eq!((retryable, code), (false, "not_allowed"));
    assert!(message.contains("no longer"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let path = script.to_str().unwrap();
    let kernel = kernel_with(vec![program(path, None, Limits::default())]);
    let (result, _) = run(&kernel, json!({"argv": [path]})).await;
    let (_, code, message) = failure(result);
    assert_eq!(code, "cannot_exec");
    assert!(message.contains("ermission denied"), "{message}");
}

#[tokio::test]
async fn cgroup_limits_stop_a_memory_hungry_child_where_the_host_allows_them() {
    let cgroups = match Cgroups::detect() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: cgroup v2 limits are not usable on this host: {why}");
            return;
        }
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    };
    let kernel = Command::new(CommandConfig {
        allow: Arc::new(AllowList::new(vec![program("/bin/sh", Some("sh"), limits)])),
        grace: Duration::from_millis(300),
        scratch: std::env::temp_dir().join("kiln-command-test-scratch"),
        cgroups: Ok(cgroups),
    });
    let script = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo done";
    let (result, log) = run(&kernel, json!({"argv": ["sh", "-c", script]})).await;
    assert!(log.contains("cgroup v2: /"), "{log}");
    let _ = failure(result);
}
