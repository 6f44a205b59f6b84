//! The client commands of the real `kiln` binary against a live server: login and the
//! saved token, `submit --wait` of every executed type, `logs -f`, `cancel` by prefix,
//! `ls --json`, files and artifacts, and the exit code of every class of failure.

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::helpers::{ADMIN_PASSWORD, Opts, TestApp};

/// The `kiln` binary with a home of its own (where `kiln login` saves tokens) and
/// `KILN_URL` pointing at the test server.
struct Cli {
    home: TempDir,
    url: String,
}

impl Cli {
    fn new(app: &TestApp) -> Self {
        Self {
            home: tempfile::tempdir().expect("a temp home"),
            url: format!("http://{}", app.addr()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("KILN_URL", &self.url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `kiln args…` to its end (asynchronously: the server runs on this runtime).
    async fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().await.expect("kiln runs"))
    }

    /// Runs `kiln args…` with `input` on stdin.
    async fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("stdin written");
        drop(stdin);
        Run(child.wait_with_output().await.expect("kiln ends"))
    }

    async fn login(app: &TestApp) -> Self {
        let cli = Self::new(app);
        let input = format!("{ADMIN_PASSWORD}\n");
        cli.run_with_input(&["login", "--password-stdin", "admin"], &input)
            .await
            .ok();
        cli
    }
}

/// A finished run.
struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().expect("an exit code, not a signal")
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Asserts exit 0; returns stdout.
    fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }

    /// Asserts the exit code and a one-line `error:` without a panic.
    fn fails(&self, code: i32) -> String {
        let err = self.stderr();
        assert_eq!(
            self.code(),
            code,
            "stdout: {}\nstderr: {err}",
            self.stdout()
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        assert!(err.starts_with("error: "), "{err}");
        err
    }
}

fn allow_sh() -> Opts {
    Opts {
        flags: vec!["--command-allow".into(), "sh".into()],
        ..Opts::default()
    }
}

#[tokio::test]
async fn login_saves_a_private_token_per_server_and_whoami_uses_it() {
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    let path = cli.home.path().join(".config/kiln/credentials.json");
    let mode = std::fs::metadata(&path)
        .expect("the token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["default_url"], cli.url.as_str());
    assert!(saved["servers"][&cli.url]["token"].is_string());
    let me = cli.run(&["whoami"]).await.ok();
    assert!(me.starts_with("admin (admin) at http://127.0.0.1:"), "{me}");
    // Without KILN_URL the saved default server is used.
    let out = cli
        .command(&["whoami", "--json"])
        .env_remove("KILN_URL")
        .output()
        .await
        .unwrap();
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["username"], "admin");
    cli.run(&["logout"]).await.ok();
    cli.run(&["whoami"]).await.fails(5);
    app.stop().await;
}

#[tokio::test]
async fn submit_wait_runs_every_executed_type_to_its_end() {
    let app = TestApp::spawn_with(allow_sh()).await;
    let cli = Cli::login(&app).await;
    let cases: [&[&str]; 6] = [
        &["submit", "echo", "x=1", "--wait"],
        &["submit", "sleep", "ms=50", "--wait"],
        &["submit", "primes", "n=1000", "--wait"],
        &[
            "submit",
            "matrix_multiply",
            "--payload",
            r#"{"n": 32}"#,
            "--wait",
        ],
        &[
            "submit",
            "csv_aggregate",
            "rows=100",
            "groups=3",
            "operation=sum",
            "--wait",
        ],
        &[
            "submit",
            "command",
            r#"argv=["sh","-c","echo hi"]"#,
            "--wait",
        ],
    ];
    for args in cases {
        let out = cli.run(args).await.ok();
        assert!(out.contains(" succeeded"), "{args:?}: {out}");
    }
    let job = cli
        .run(&["submit", "primes", "n=10", "--wait", "--json"])
        .await
        .json();
    assert_eq!(job["result"]["nth"], 29);
    // A job that ends dead makes --wait exit 1.
    let dead = cli
        .run(&[
            "submit",
            "command",
            r#"argv=["sh","-c","echo bad >&2; exit 3"]"#,
            "--wait",
        ])
        .await;
    assert_eq!(dead.code(), 1, "{}", dead.stderr());
    assert!(
        dead.stdout()
            .contains("dead: exit_code: exited with code 3"),
        "{}",
        dead.stdout()
    );
    app.stop().await;
}

#[tokio::test]
async fn logs_follow_prints_a_running_jobs_lines_until_it_ends() {
    let app = TestApp::spawn_with(allow_sh()).await;
    let cli = Cli::login(&app).await;
    let script = r#"argv=["sh","-c","for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"]"#;
    let job = cli
        .run(&["submit", "command", script, "--json"])
        .await
        .json();
    let id = job["id"].as_str().unwrap();
    let out = cli.run(&["logs", "-f", &id[..13]]).await.ok();
    let ticks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("[stdout] tick"))
        .collect();
    assert_eq!(
        ticks,
        [
            "[stdout] tick 1",
            "[stdout] tick 2",
            "[stdout] tick 3",
            "[stdout] tick 4",
            "[stdout] tick 5"
        ]
    );
    let status = cli.run(&["status", id]).await.ok();
    assert!(status.contains("succeeded"), "{status}");
    app.stop().await;
}

#[tokio::test]
async fn cancel_by_prefix_ls_json_show_events_and_types() {
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    let job = cli
        .run(&[
            "submit",
            "sleep",
            "ms=600000",
            "--name",
            "long-one",
            "--json",
        ])
        .await
        .json();
    let id = job["id"].as_str().unwrap().to_owned();
    let listed = cli
        .run(&["ls", "--json", "--name", "long-one"])
        .await
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    let out = cli.run(&["cancel", &id[..8]]).await.ok();
    assert!(out.contains(&id), "{out}");
    let shown = cli.run(&["show", &id, "--json"]).await.json();
    assert_eq!(shown["state"], "cancelled");
    let human = cli.run(&["show", &id]).await.ok();
    assert!(
        human.contains("long-one") && human.contains("cancelled"),
        "{human}"
    );
    let events = cli.run(&["events", &id, "--json"]).await.json();
    assert_eq!(
        events.as_array().unwrap().last().unwrap()["state"],
        "cancelled"
    );
    let table = cli.run(&["ls", "--all"]).await.ok();
    assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
    let types = cli.run(&["types"]).await.ok();
    assert!(
        types.contains("matrix_multiply") && types.contains("operator"),
        "{types}"
    );
    app.stop().await;
}

#[tokio::test]
async fn files_upload_list_and_remove_and_artifacts_download() {
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    let csv = cli.home.path().join("sales.csv");
    std::fs::write(&csv, "region,amount\nnorth,10\nsouth,32\n").unwrap();
    let up = cli
        .run(&["files", "upload", csv.to_str().unwrap(), "--json"])
        .await
        .json();
    let file_id = up["id"].as_str().unwrap().to_owned();
    assert_eq!(up["size"], 32);
    let listed = cli.run(&["files", "ls", "--json"]).await.json();
    assert_eq!(listed[0]["id"], file_id.as_str());
    let sum = cli
        .run(&[
            "submit",
            "csv_aggregate",
            &format!("file_id={file_id}"),
            "operation=sum",
            "column=amount",
            "--wait",
            "--json",
        ])
        .await
        .json();
    assert_eq!(sum["result"]["sum"].as_f64(), Some(42.0), "{sum}");
    cli.run(&["files", "rm", &file_id]).await.ok();
    assert_eq!(
        cli.run(&["files", "ls", "--json"]).await.json(),
        Value::Array(vec![])
    );

    let job = cli
        .run(&["submit", "primes", "n=100", "--wait", "--json"])
        .await
        .json();
    let id = job["id"].as_str().unwrap();
    let list = cli.run(&["artifacts", id]).await.ok();
    assert!(list.contains("primes.npy"), "{list}");
    let target = cli.home.path().join("p.npy");
    cli.run(&[
        "artifacts",
        id,
        "primes.npy",
        "-o",
        target.to_str().unwrap(),
    ])
    .await
    .ok();
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"), "an .npy file");
    assert!(
        bytes.len() > 400,
        "a header and 100 u32 values: {} bytes",
        bytes.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn every_failure_class_has_its_exit_code_and_one_readable_line() {
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    // 2: a bad flag (clap), a payload the server refuses, a malformed pair.
    let bad_flag = cli.run(&["ls", "--colour"]).await;
    assert_eq!(bad_flag.code(), 2);
    cli.run(&["submit", "sleep", "ms=-5"]).await.fails(2);
    cli.run(&["submit", "sleep", "nonsense"]).await.fails(2);
    // 3: an unknown id and an unknown prefix.
    let err = cli
        .run(&["show", "00000000-0000-7000-8000-000000000000"])
        .await
        .fails(3);
    assert!(err.contains("not_found"), "{err}");
    cli.run(&["status", "0000000000"]).await.fails(3);
    // 4: retrying a job that succeeded.
    let job = cli
        .run(&["submit", "echo", "--wait", "--json"])
        .await
        .json();
    cli.run(&["retry", job["id"].as_str().unwrap()])
        .await
        .fails(4);
    // 5: no login, and a token that is not one.
    let stranger = Cli::new(&app);
    let err = stranger.run(&["ls"]).await.fails(5);
    assert!(err.contains("kiln login"), "{err}");
    stranger
        .run(&["ls", "--token", "not-a-token"])
        .await
        .fails(5);
    let wrong = stranger
        .run_with_input(&["login", "--password-stdin", "admin"], "wrong-password\n")
        .await;
    wrong.fails(5);
    // 6: nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = cli
        .run(&["ls", "--url", &url, "--token", "x"])
        .await
        .fails(6);
    assert!(err.contains("cannot reach"), "{err}");
    let help = cli.run(&["--help"]).await.ok();
    assert!(
        help.contains("Exit codes:") && help.contains("login"),
        "{help}"
    );
    app.stop().await;
}

#[tokio::test]
async fn watch_streams_the_changes_of_my_jobs() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    let mut watch = cli
        .command(&["watch", "--json"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kiln watch runs");
    let mut lines = BufReader::new(watch.stdout.take().expect("piped stdout")).lines();
    let mut next_change = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a change within 30 s")
            .expect("readable")
            .expect("watch is still running");
        serde_json::from_str(&line).expect("a JSON line")
    };
    // `watch` prints nothing until it is connected: submit probes until it reports one.
    let mut probes = Vec::new();
    while probes.len() < 60 {
        let probe = cli.run(&["submit", "echo", "--json"]).await.json()["id"].clone();
        probes.push(probe);
        let seen = tokio::time::timeout(Duration::from_millis(500), next_change()).await;
        if seen.is_ok_and(|change| probes.contains(&change["id"])) {
            break;
        }
    }
    // Connected: a job that runs until cancelled shows every change.
    let id = cli
        .run(&["submit", "sleep", "ms=600000", "--json"])
        .await
        .json()["id"]
        .clone();
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("cancelled") {
        let change = next_change().await;
        if change["id"] != id {
            continue;
        }
        let state = change["state"].as_str().unwrap().to_owned();
        if state == "running" && !states.contains(&state) {
            cli.run(&["cancel", id.as_str().unwrap()]).await.ok();
        }
        states.push(state);
    }
    assert!(states.contains(&"running".to_owned()), "{states:?}");
    assert!(
        states
            .iter()
            .all(|s| ["queued", "running", "cancelled"].contains(&s.as_str())),
        "{states:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn submit_wait_of_an_external_job_ends_when_its_owner_reports_it() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let app = TestApp::spawn().await;
    let cli = Cli::login(&app).await;
    let mut child = cli
        .command(&["submit", "external", "name=nightly-export", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = stderr
        .next_line()
        .await
        .unwrap()
        .expect("a line naming the job");
    let id = first
        .strip_prefix("Submitted ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    for state in [
        serde_json::json!({"state": "running"}),
        serde_json::json!({"state": "succeeded", "result": {"rows": 7}}),
    ] {
        let resp = app
            .client
            .send_json(
                hyper::Method::PATCH,
                Some(&app.admin),
                &format!("/api/v1/jobs/{id}"),
                &state,
            )
            .await;
        assert_eq!(resp.status, hyper::StatusCode::OK, "{}", resp.text());
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("--wait ends with the job")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"rows\": 7"));
    app.stop().await;
}
