//! The real `kiln` binary: kill it mid-job, stop it with signals, restart it on the same file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln_testkit::Client;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{ADMIN_PASSWORD, db_url};

/// How long a test waits for a state of the child process: generous, since a loaded CI host
/// may starve it for seconds.
const LONG: Duration = Duration::from_secs(60);

/// A `kiln serve` process on a free port of 127.0.0.1, over the database in `dir`.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Its log lines after the "serving" line, as they are written.
    log: std::sync::mpsc::Receiver<String>,
    /// Its JSON log entries up to the "serving" line.
    startup: Vec<Value>,
    /// Every entry after it read so far (see [`Server::log_until`]).
    history: std::sync::Mutex<Vec<Value>>,
}

impl Server {
    fn start(dir: &TempDir) -> Self {
        Self::start_with(dir, "")
    }

    /// [`Server::start`] with `toml` as its `kiln.toml`.
    fn start_with(dir: &TempDir, toml: &str) -> Self {
        Self::start_env(dir, toml, &[])
    }

    /// [`Server::start_with`] with `env` added to its environment.
    pub(crate) fn start_env(dir: &TempDir, toml: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(dir, toml, env, Some(ADMIN_PASSWORD))
    }

    /// A server given `admin_password` as `KILN_ADMIN_PASSWORD`, or nothing.
    fn spawn(
        dir: &TempDir,
        toml: &str,
        env: &[(&str, &str)],
        admin_password: Option<&str>,
    ) -> Self {
        let config = dir.path().join("kiln.toml");
        std::fs::write(&config, toml).expect("kiln.toml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("serve").env_clear();
        if let Some(password) = admin_password {
            command.env("KILN_ADMIN_PASSWORD", password);
        }
        let mut child = command
            .env("PORT", "0")
            .env("KILN_BIND", "127.0.0.1")
            .env("DATABASE_URL", db_url(dir))
            .env("KILN_NODE_ID", "process-test")
            .env("KILN_LOG_FORMAT", "json")
            .env("KILN_SHUTDOWN_GRACE", "500ms")
            .env("KILN_CONFIG", &config)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut startup = Vec::new();
        let addr = loop {
            let line = lines
                .next()
                .expect("kiln logs that it is serving")
                .expect("utf-8 log");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "kiln is serving" {
                break entry["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("an address");
            }
            startup.push(entry);
        };
        // Keep draining the log so the child never blocks on a full pipe; tests that read
        // it take the lines from the channel.
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            addr,
            log,
            startup,
            history: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The JSON log entries after the "serving" line up to the first matching `want`,
    /// waiting up to `LONG` for it. Entries an earlier call read count too: a line may be
    /// written before the one an earlier call waited for (a job can finish before its
    /// request's line is written).
    fn log_until(&self, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut history = self.history.lock().unwrap();
        if let Some(at) = history.iter().position(&want) {
            return history[..=at].to_vec();
        }
        let deadline = std::time::Instant::now() + LONG;
        let before = history.len();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = self.log.recv_timeout(left) else {
                break;
            };
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            let found = want(&entry);
            history.push(entry);
            if found {
                return history.clone();
            }
        }
        let seen = &history[before..];
        panic!("no such log entry within {LONG:?}; seen: {seen:#?}");
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.expect("kill runs").success());
    }

    pub(crate) fn wait_exit(mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("kiln did not exit within 10 s");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn state_of(client: &Client, token: &str, id: &str) -> Value {
    client
        .get(Some(token), &format!("/api/v1/jobs/{id}"))
        .await
        .json()
}

async fn wait_state(client: &Client, token: &str, id: &str, state: &str) -> Value {
    kiln_testkit::wait_until(&format!("job {id} to be {state}"), LONG, || async {
        let job = state_of(client, token, id).await;
        if job["state"] == state {
            Ok(job)
        } else {
            Err(job["state"].clone())
        }
    })
    .await
}

/// Waits until the job runs its attempt number `attempt`.
async fn wait_attempt(client: &Client, token: &str, id: &str, attempt: u64) -> Value {
    kiln_testkit::wait_until(
        &format!("job {id} to run attempt {attempt}"),
        LONG,
        || async {
            let job = state_of(client, token, id).await;
            if job["state"] == "running" && job["attempts"] == attempt {
                Ok(job)
            } else {
                Err(job)
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_job_running_when_the_process_is_killed_is_rescued_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir);
    let client = Client::new(server.addr);
    let token = client.login("admin", ADMIN_PASSWORD).await;
    // Runs until the process dies, however slow this machine is.
    let body = json!({"type": "sleep", "payload": {"ms": 600_000}});
    let resp = client
        .send_json(hyper::Method::POST, Some(&token), "/api/v1/jobs", &body)
        .await;
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let queued = client
        .send_json(
            hyper::Method::POST,
            Some(&token),
            "/api/v1/jobs",
            &json!({"type": "echo", "delay_ms": 300}),
        )
        .await;
    let queued = queued.json()["id"].as_str().unwrap().to_owned();
    wait_state(&client, &token, &id, "running").await;
    server.signal("KILL");
    assert!(!server.wait_exit().success());

    let server = Server::start(&dir);
    let client = Client::new(server.addr);
    let token = client.login("admin", ADMIN_PASSWORD).await;
    // The killed attempt was rescued and the job runs again as attempt 2.
    wait_attempt(&client, &token, &id, 2).await;
    let events = client
        .get(Some(&token), &format!("/api/v1/jobs/{id}/events"))
        .await
        .json();
    let rescued = events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["state"] == "failed");
    assert!(rescued, "the rescue is in the history: {events}");
    wait_state(&client, &token, &queued, "succeeded").await;
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_server_cleanly_without_losing_jobs() {
    for sig in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir);
        let client = Client::new(server.addr);
        let token = client.login("admin", ADMIN_PASSWORD).await;
        // Longer than any shutdown grace: the signal interrupts it.
        let body = json!({"type": "sleep", "payload": {"ms": 600_000}});
        let id = client
            .send_json(hyper::Method::POST, Some(&token), "/api/v1/jobs", &body)
            .await
            .json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_state(&client, &token, &id, "running").await;
        server.signal(sig);
        let status = server.wait_exit();
        assert!(status.success(), "SIG{sig}: kiln exited with {status}");

        let server = Server::start(&dir);
        let client = Client::new(server.addr);
        let token = client.login("admin", ADMIN_PASSWORD).await;
        let events = client
            .get(Some(&token), &format!("/api/v1/jobs/{id}/events"))
            .await
            .json();
        let interrupted = events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["state"] == "failed" && e["attempt"] == 1);
        assert!(interrupted, "SIG{sig}: attempt 1 interrupted: {events}");
        // Interrupted, then run again.
        wait_attempt(&client, &token, &id, 2).await;
    }
}

fn kiln(dir: &TempDir, args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args)
        .env_clear()
        .env("DATABASE_URL", db_url(dir))
        .current_dir(dir.path());
    if let Some(p) = password {
        cmd.env("KILN_USER_PASSWORD", p);
    }
    cmd.output().expect("kiln runs")
}

#[tokio::test]
async fn users_managed_offline_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(&dir, &["migrate"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(
        &dir,
        &["user", "add", "olga", "--role", "operator"],
        Some("olga-password"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = kiln(&dir, &["user", "add", "olga"], Some("olga-password"));
    assert_eq!(again.status.code(), Some(1), "a taken name is an error");
    let short = kiln(&dir, &["user", "add", "pat"], Some("short"));
    assert_eq!(short.status.code(), Some(1), "a short password is refused");
    let out = kiln(&dir, &["user", "set-role", "olga", "admin"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&dir, &["user", "list", "--json"], None);
    let users: Value = serde_json::from_slice(&out.stdout).expect("JSON user list");
    let olga = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "olga")
        .expect("olga is listed");
    assert_eq!(olga["role"], "admin");

    let server = Server::start(&dir);
    let client = Client::new(server.addr);
    let token = client.login("olga", "olga-password").await;
    let me = client.get(Some(&token), "/api/v1/me").await.json();
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str()),
        (Some("olga"), Some("admin"))
    );
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn a_generated_admin_password_is_kept_in_an_owner_only_file_until_changed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-password");
    let server = Server::spawn(&dir, "", &[], None);
    let line = serde_json::to_string(&server.startup).unwrap();
    assert!(line.contains("generated password"), "{line}");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(password.len(), 24);
    assert!(
        !line.contains(&password),
        "the log never shows the password"
    );
    assert!(
        line.contains(&file.display().to_string()),
        "the log says where it is"
    );
    // Everything the node created is its user's only.
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir.path().join("kiln.db")), 0o600);
    assert_eq!(mode(&dir.path().join("objects")), 0o700);

    let client = Client::new(server.addr);
    let token = client.login("admin", &password).await;
    let me = client.get(Some(&token), "/api/v1/me").await.json();
    let path = format!("/api/v1/admin/users/{}", me["id"]);
    let body = json!({"password": "a-new-admin-password"});
    let changed = client
        .send_json(hyper::Method::PATCH, Some(&token), &path, &body)
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert!(!file.exists(), "removed once the password is changed");
    drop(server);

    // A file whose password no longer opens `admin` (changed offline, say) goes at start.
    std::fs::write(&file, "stale-password-123\n").unwrap();
    let server = Server::spawn(&dir, "", &[], None);
    assert!(!file.exists());
    Client::new(server.addr)
        .login("admin", "a-new-admin-password")
        .await;
}

#[tokio::test]
async fn the_first_admin_password_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "from-a-file-123\nignored second line\n").unwrap();
    let server = Server::spawn(
        &dir,
        "",
        &[("KILN_ADMIN_PASSWORD_FILE", secret.to_str().unwrap())],
        None,
    );
    Client::new(server.addr)
        .login("admin", "from-a-file-123")
        .await;
    assert!(!dir.path().join("admin-password").exists());
}

#[tokio::test]
async fn a_node_that_cannot_bind_its_port_exits_having_claimed_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A job that comes due after the first server has stopped.
    let server = Server::start(&dir);
    let client = Client::new(server.addr);
    let token = client.login("admin", ADMIN_PASSWORD).await;
    let body = json!({"type": "echo", "payload": 1, "delay_ms": 1500});
    let resp = client
        .send_json(hyper::Method::POST, Some(&token), "/api/v1/jobs", &body)
        .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let run_at: chrono::DateTime<chrono::Utc> =
        resp.json()["run_at"].as_str().unwrap().parse().unwrap();
    server.signal("TERM");
    assert!(server.wait_exit().success());
    kiln_testkit::wait_until("the job is due", LONG, || async {
        if chrono::Utc::now() > run_at {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;

    // The same node id, on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .env_clear()
        .env("PORT", &port)
        .env("KILN_BIND", "127.0.0.1")
        .env("DATABASE_URL", db_url(&dir))
        .env("KILN_NODE_ID", "process-test")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("while binding"), "{stderr}");

    // Read without a node (which would claim it): due, and never started.
    let store = kiln_store::sqlite::SqliteStore::open(kiln_store::sqlite::SqliteOptions {
        path: kiln_store::sqlite::SqlitePath::File(dir.path().join("kiln.db")),
        ..Default::default()
    })
    .unwrap();
    let job = kiln_store::Store::job_get(store.as_ref(), None, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(job.attempts, 0, "{job:?}");
    assert!(job.started_at.is_none(), "{job:?}");
}

#[test]
fn a_bad_configuration_lists_every_problem_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "serve",
            "--max-concurrency",
            "0",
            "--database",
            "mysql://nope",
        ])
        .env_clear()
        .output()
        .expect("kiln runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MAX_CONCURRENCY") && err.contains("DATABASE_URL"),
        "{err}"
    );
}

#[tokio::test]
async fn a_log_written_to_a_pipe_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .env_clear()
        .env("PORT", "0")
        .env("KILN_BIND", "127.0.0.1")
        .env("DATABASE_URL", db_url(&dir))
        .env("KILN_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("TERM", "xterm-256color")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 log");
        let serving = line.contains("kiln is serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("kiln is serving")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "escape codes in a piped log: {seen:?}"
    );
}

/// `KILN_LOG_FORMAT=json`: one object per line with timestamp, level and target; a
/// request's lines carry its `request_id` and the `trace_id` of its W3C `traceparent`, an
/// attempt's lines the job's id, type, attempt and node; a job that fails for good is an
/// ERROR with the start of its input.
#[tokio::test]
async fn json_logs_carry_the_request_and_job_fields() {
    let dir = tempfile::tempdir().unwrap();
    // `sleep` gets one 40 ms attempt: a job that dies.
    let server = Server::start_with(&dir, "[types.sleep]\ntimeout_ms = 40\nmax_attempts = 1\n");
    let client = Client::new(server.addr);
    let token = client.login("admin", ADMIN_PASSWORD).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client
        .request(hyper::Method::POST, "/api/v1/jobs")
        .bearer(Some(&token))
        .header("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-json-logs-1")
        .json(&json!({"type": "echo", "payload": {"hello": "logs"}}))
        .send()
        .await;
    assert_eq!(resp.status.as_u16(), 202, "{}", resp.text());
    let id = resp.json()["id"].as_str().unwrap().to_owned();

    let seen = server.log_until(|e| e["message"] == "request" && e["status"] == 202);
    let request = seen.last().unwrap();
    assert_eq!(request["level"], "INFO");
    assert!(
        request["timestamp"].is_string() && request["target"].is_string(),
        "{request}"
    );
    assert_eq!(
        request["span"]["request_id"], "req-json-logs-1",
        "{request}"
    );
    assert_eq!(request["span"]["trace_id"], trace, "{request}");

    let seen = server.log_until(|e| {
        e["message"] == "job attempt finished" && e["span"]["job_id"] == id.as_str()
    });
    let finished = seen.last().unwrap();
    let span = &finished["span"];
    assert_eq!(
        (&span["job_type"], &span["attempt"], &span["node"]),
        (&json!("echo"), &json!(1), &json!("process-test")),
        "{finished}"
    );
    assert_eq!(finished["state"], "succeeded");
    assert_eq!(
        span["trace_id"], trace,
        "the submitting request's trace: {finished}"
    );

    // `sleep` has one attempt of 40 ms here (kiln.toml): it dies of its timeout.
    let resp = client
        .request(hyper::Method::POST, "/api/v1/jobs")
        .bearer(Some(&token))
        .json(&json!({"type": "sleep", "payload": {"ms": 10_000}}))
        .send()
        .await;
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let seen = server.log_until(|e| e["span"]["job_id"] == id.as_str() && e["level"] == "ERROR");
    let dead = seen.last().unwrap();
    assert_eq!(dead["message"], "job failed for good", "{dead}");
    assert_eq!(dead["error_code"], "timeout", "{dead}");
    assert_eq!(dead["input"], r#"{"ms":10000}"#, "{dead}");
    assert_eq!(dead["span"]["job_type"], "sleep");
}
