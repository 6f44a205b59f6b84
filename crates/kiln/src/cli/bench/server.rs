//! The server under test: either a `kiln serve` child process on a fresh SQLite file in a
//! temp dir (seeded beforehand straight through the store; with `--tls`, serving HTTPS with
//! a development certificate made in that dir), or a running server at `--url`.
//!
//! Why a child process and not a node in this process: its peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) is then the server's alone, and client and server CPU time are
//! not mixed in one runtime.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_store::Store;
use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore, Synchronous};
use tokio::process::{Child, Command};

use super::http::Client;
use crate::config::SqliteSync;

/// Password of the `admin` user of a local benchmark server.
const ADMIN_PASSWORD: &str = "kiln-bench-password";

/// How long a fresh server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `kiln serve` child on a temp database; killed when dropped.
pub struct LocalServer {
    child: Child,
    pid: Option<u32>,
    /// Its address, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub base: String,
    /// With TLS: the CA of its certificate, for the client to trust.
    pub ca_cert: Option<PathBuf>,
    // Kept so the database outlives the server; removed on drop.
    _dir: tempfile::TempDir,
}

/// Options of a local server.
pub struct LocalOptions {
    /// Durability mode.
    pub sync: SqliteSync,
    /// `MAX_CONCURRENCY` of the server.
    pub max_concurrency: usize,
    /// Jobs to seed before it starts.
    pub seed_jobs: u64,
    /// Serve HTTPS with a fresh development certificate.
    pub tls: bool,
}

impl LocalServer {
    /// Creates the database (seeding it), starts `kiln serve` on a free loopback port and
    /// waits until it answers. Returns the server and how long seeding took.
    pub async fn start(opts: &LocalOptions) -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::tempdir().context("while creating a temp dir")?;
        let db = dir.path().join("kiln.db");
        let seeded = seed(&db, opts).await?;
        let port = free_port()?;
        let exe = std::env::current_exe().context("while locating the kiln binary")?;
        let mut command = Command::new(exe);
        command
            .current_dir(dir.path())
            .args(["serve", "--bind", "127.0.0.1", "--log", "warn"]);
        let ca_cert = match opts.tls {
            true => Some(dev_certificate(dir.path(), &mut command)?),
            false => None,
        };
        let child = command
            .args(["--port", &port.to_string()])
            .args(["--database", &format!("sqlite://{}", db.display())])
            .args(["--sqlite-sync", sync_name(opts.sync)])
            .args(["--max-concurrency", &opts.max_concurrency.to_string()])
            .args(["--node-id", "kiln-bench"])
            // For `--job command` and the `stream` scenario.
            .args(["--command-allow", "/bin/true,/bin/sleep,/bin/sh"])
            .env("KILN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("KILN_CONFIG")
            // TLS only as `--tls` asks: not from the caller's environment.
            .env_remove("KILN_TLS_CERT")
            .env_remove("KILN_TLS_KEY")
            .env_remove("KILN_TLS_CLIENT_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("while starting `kiln serve`")?;
        let scheme = if opts.tls { "https" } else { "http" };
        let mut server = Self {
            pid: child.id(),
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
            ca_cert,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok((server, seeded))
    }

    /// Logs in as the local admin.
    pub async fn login(&self, client: &Client) -> anyhow::Result<String> {
        client.login("admin", ADMIN_PASSWORD).await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let probe = Client::new(&self.base, 1, self.ca_cert.as_deref())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("`kiln serve` exited at start-up ({status})");
            }
            if let Ok(resp) = probe.get("/healthz").await
                && resp.status.is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("`kiln serve` did not answer /healthz within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Stops the server (SIGKILL: the temp database is thrown away anyway).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .context("while stopping `kiln serve`")
    }
}

/// Writes a development CA and server certificate into `dir` and adds the flags that
/// serve them to `command`; returns the CA's path.
fn dev_certificate(dir: &std::path::Path, command: &mut Command) -> anyhow::Result<PathBuf> {
    let certs = crate::tls::dev::DevCerts::generate(&[])?;
    let paths = certs.write(&dir.join("certs"), false)?;
    command
        .arg("--tls-cert")
        .arg(&paths.server)
        .arg("--tls-key")
        .arg(&paths.server_key);
    Ok(paths.ca)
}

/// Opens the database, creates the admin and writes `seed_jobs` finished jobs; the store
/// is closed again before the server opens the file.
async fn seed(db: &std::path::Path, opts: &LocalOptions) -> anyhow::Result<Duration> {
    let store = SqliteStore::open(SqliteOptions {
        path: SqlitePath::File(db.to_path_buf()),
        synchronous: match opts.sync {
            SqliteSync::Normal => Synchronous::Normal,
            SqliteSync::Full => Synchronous::Full,
        },
        ..SqliteOptions::default()
    })
    .context("while creating the benchmark database")?;
    let now = chrono::Utc::now();
    let started = Instant::now();
    if opts.seed_jobs > 0 {
        kiln_server::ensure_admin(store.as_ref(), Some(ADMIN_PASSWORD), now)
            .await
            .context("while creating the admin user")?;
        let admin = store
            .user_by_name("admin")
            .await?
            .context("the admin user is missing")?;
        store
            .job_seed(admin.user.id, opts.seed_jobs, now)
            .await
            .context("while seeding jobs")?;
    }
    let took = started.elapsed();
    // The last handle: dropping it joins the writer thread, so the file is closed.
    drop::<Arc<SqliteStore>>(store);
    Ok(took)
}

/// A loopback port that was free a moment ago (the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("while finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The flag value of a durability mode.
pub fn sync_name(sync: SqliteSync) -> &'static str {
    match sync {
        SqliteSync::Normal => "normal",
        SqliteSync::Full => "full",
    }
}
