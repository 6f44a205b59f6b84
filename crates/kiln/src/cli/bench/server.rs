//! The server under test: either a `kiln serve` child process on a fresh SQLite file in a
//! temp dir (seeded beforehand straight through the store), or a running server at `--url`.
//!
//! Why a child process and not a node in this process: its peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) is then the server's alone, and client and server CPU time are
//! not mixed in one runtime.

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
    /// Its address, `http://127.0.0.1:PORT`.
    pub base: String,
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
        let child = Command::new(exe)
            .current_dir(dir.path())
            .args(["serve", "--bind", "127.0.0.1", "--log", "warn"])
            .args(["--port", &port.to_string()])
            .args(["--database", &format!("sqlite://{}", db.display())])
            .args(["--sqlite-sync", sync_name(opts.sync)])
            .args(["--max-concurrency", &opts.max_concurrency.to_string()])
            .args(["--node-id", "kiln-bench"])
            // For `--job command` and the `stream` scenario.
            .args(["--command-allow", "/bin/true,/bin/sleep,/bin/sh"])
            .env("KILN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("KILN_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("while starting `kiln serve`")?;
        let mut server = Self {
            pid: child.id(),
            child,
            base: format!("http://127.0.0.1:{port}"),
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
        let probe = Client::new(&self.base, 1);
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
