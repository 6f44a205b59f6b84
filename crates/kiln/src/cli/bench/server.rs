//! The server under test: either a `kiln serve` child process on a fresh SQLite file in a
//! temp dir, or on the empty PostgreSQL database of `--database` (seeded beforehand
//! straight through the store; with `--tls`, serving HTTPS with a development certificate
//! made in the temp dir), or a running server at `--url`.
//!
//! Why a child process and not a node in this process: its peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) is then the server's alone, and client and server CPU time are
//! not mixed in one runtime.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_domain::{Role, Timestamp, UserId};
use kiln_store::postgres::{PgOptions, PgStore};
use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore};
use kiln_store::{NewUser, Store};
use tokio::process::{Child, Command};

use super::http::Client;
use crate::config::SqliteSync;

/// Password of the `admin` user of a local benchmark server.
const ADMIN_PASSWORD: &str = "kiln-bench-password";

/// How long a fresh server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Pool size of a local server on PostgreSQL (`kiln serve`'s default, set explicitly so the
/// caller's `KILN_PG_POOL` does not change what is measured).
pub const PG_POOL: usize = 16;

/// The password hash of the seeded users: not a PHC string, so no password matches it and
/// nobody can log in as them.
const NO_LOGIN: &str = "!seeded by kiln bench: no login";

/// A `kiln serve` child on a temp database (or `--database`), or several on one
/// PostgreSQL database (`--nodes`); killed when dropped.
pub struct LocalServer {
    children: Vec<Child>,
    pids: Vec<u32>,
    /// The first node's address, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub base: String,
    /// Every node's address.
    pub bases: Vec<String>,
    /// With TLS: the CA of its certificate, for the client to trust.
    pub ca_cert: Option<PathBuf>,
    /// The database had users before the bench came, so its `admin` may not have the
    /// bench's password.
    had_users: bool,
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
    /// Users the seeded jobs are spread over, round robin.
    pub seed_users: u64,
    /// A `postgres://` URL of an empty database to use instead of a temp SQLite file.
    pub database: Option<String>,
    /// Serve HTTPS with a fresh development certificate.
    pub tls: bool,
    /// `kiln serve` processes on the one database (more than one: PostgreSQL only).
    pub nodes: usize,
}

/// What seeding left for the report.
pub struct Seeded {
    /// How long seeding took (users, jobs and, on PostgreSQL, the `VACUUM (ANALYZE)`).
    pub took: Duration,
    /// The durability mode for the report's header.
    pub durability: String,
}

impl LocalServer {
    /// Creates the database (seeding it), starts `kiln serve` on a free loopback port and
    /// waits until it answers. Returns the server and what seeding did.
    pub async fn start(opts: &LocalOptions) -> anyhow::Result<(Self, Seeded)> {
        let dir = tempfile::tempdir().context("while creating a temp dir")?;
        let (database, seeded, had_users) = match &opts.database {
            Some(url) => {
                let (seeded, had_users) = seed_postgres(url, opts).await?;
                (url.clone(), seeded, had_users)
            }
            None => {
                let db = dir.path().join("kiln.db");
                let seeded = seed_sqlite(&db, opts).await?;
                (format!("sqlite://{}", db.display()), seeded, false)
            }
        };
        let exe = std::env::current_exe().context("while locating the kiln binary")?;
        let mut ca_cert = None;
        let (mut children, mut pids, mut bases) = (Vec::new(), Vec::new(), Vec::new());
        for n in 1..=opts.nodes.max(1) {
            let port = free_port()?;
            let mut command = Command::new(&exe);
            command
                .current_dir(dir.path())
                .args(["serve", "--bind", "127.0.0.1", "--log", "warn"]);
            if opts.tls {
                // One certificate for every node (made once, in the temp dir).
                let paths = dev_certificate(dir.path(), ca_cert.is_none())?;
                command
                    .arg("--tls-cert")
                    .arg(&paths.server)
                    .arg("--tls-key")
                    .arg(&paths.server_key);
                ca_cert = Some(paths.ca);
            }
            if opts.database.is_some() {
                // Not beside the SQLite file (there is none): in the temp dir, shared.
                let objects = dir.path().join("objects");
                command
                    .arg("--object-store")
                    .arg(format!("file://{}", objects.display()))
                    .args(["--pg-pool", &PG_POOL.to_string()]);
            } else {
                command.args(["--sqlite-sync", sync_name(opts.sync)]);
            }
            let node_id = match opts.nodes {
                0 | 1 => "kiln-bench".to_owned(),
                _ => format!("kiln-bench-{n}"),
            };
            let child = command
                .args(["--port", &port.to_string()])
                .args(["--database", &database])
                .args(["--max-concurrency", &opts.max_concurrency.to_string()])
                .args(["--node-id", &node_id])
                // For `--job command` and the `stream` scenario.
                .args(["--command-allow", "/bin/true,/bin/sleep,/bin/sh"])
                .env("KILN_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .env_remove("KILN_CONFIG")
                .env_remove("KILN_OBJECT_STORE")
                .env_remove("KILN_PG_POLL_ONLY")
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
            pids.extend(child.id());
            children.push(child);
            bases.push(format!("{scheme}://127.0.0.1:{port}"));
        }
        let mut server = Self {
            pids,
            children,
            base: bases[0].clone(),
            bases,
            ca_cert,
            had_users,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok((server, seeded))
    }

    /// Logs in as the local admin.
    pub async fn login(&self, client: &Client) -> anyhow::Result<String> {
        let login = client.login("admin", ADMIN_PASSWORD).await;
        if self.had_users {
            return login.context(
                "the --database already had users, so its `admin` was not made by the bench \
                 and has another password: give the bench a new, empty database",
            );
        }
        login
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        for (child, base) in self.children.iter_mut().zip(&self.bases) {
            let probe = Client::new(base, 1, self.ca_cert.as_deref())?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait()? {
                    bail!("`kiln serve` exited at start-up ({status})");
                }
                if let Ok(resp) = probe.get("/healthz").await
                    && resp.status.is_success()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("`kiln serve` did not answer /healthz within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The server processes' ids.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Stops the servers (SIGKILL: the temp database is thrown away anyway).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            child.kill().await.context("while stopping `kiln serve`")?;
        }
        Ok(())
    }
}

/// The development CA and server certificate in `dir`, written first when `make`.
fn dev_certificate(dir: &std::path::Path, make: bool) -> anyhow::Result<crate::tls::dev::DevPaths> {
    let certs_dir = dir.join("certs");
    if make {
        let certs = crate::tls::dev::DevCerts::generate(&[])?;
        return certs.write(&certs_dir, false);
    }
    Ok(crate::tls::dev::DevPaths::new(&certs_dir))
}

/// Opens the SQLite file, creates the admin and the seed users and writes `seed_jobs`
/// finished jobs; the store is closed again before the server opens the file.
async fn seed_sqlite(db: &std::path::Path, opts: &LocalOptions) -> anyhow::Result<Seeded> {
    let store = SqliteStore::open(SqliteOptions {
        path: SqlitePath::File(db.to_path_buf()),
        synchronous: opts.sync.into(),
        ..SqliteOptions::default()
    })
    .context("while creating the benchmark database")?;
    let now = chrono::Utc::now();
    let started = Instant::now();
    if opts.seed_jobs > 0 {
        let owners = seed_users(store.as_ref(), opts.seed_users, now).await?;
        store
            .job_seed(&owners, opts.seed_jobs, now)
            .await
            .context("while seeding jobs")?;
    }
    let took = started.elapsed();
    // The last handle: dropping it joins the writer thread, so the file is closed.
    drop::<Arc<SqliteStore>>(store);
    let durability = format!(
        "SQLite WAL, synchronous={}",
        sync_name(opts.sync).to_uppercase()
    );
    Ok(Seeded { took, durability })
}

/// Refuses a PostgreSQL database that holds jobs (before anything is written to it), then
/// migrates it, creates the admin and the seed users and writes `seed_jobs` finished jobs.
/// Returns what seeding did and whether the database already had users.
async fn seed_postgres(url: &str, opts: &LocalOptions) -> anyhow::Result<(Seeded, bool)> {
    let holds_jobs = PgStore::holds_jobs(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("while connecting to the --database")?;
    if holds_jobs {
        bail!(
            "the --database already holds jobs; kiln bench adds jobs of its own and measures \
             a table of known size, and it never deletes anybody's data: give it a new, \
             empty database (e.g. `createdb kiln_bench_1`)"
        );
    }
    let store = PgStore::connect(
        url,
        PgOptions {
            pool_size: 2,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}"))
    .context("while connecting to the --database")?;
    let had_users = store.user_count().await? > 0;
    let now = chrono::Utc::now();
    let started = Instant::now();
    if opts.seed_jobs > 0 {
        let owners = seed_users(store.as_ref(), opts.seed_users, now).await?;
        store
            .job_seed(&owners, opts.seed_jobs, now)
            .await
            .context("while seeding jobs")?;
    }
    let took = started.elapsed();
    let durability = store
        .describe_server()
        .await
        .context("while reading the PostgreSQL settings")?;
    Ok((Seeded { took, durability }, had_users))
}

/// Creates the admin (if the database has no user yet) and the users `seed-1`…`seed-N`
/// (clients that cannot log in; reused if they exist); returns the seed users' ids.
async fn seed_users(store: &dyn Store, count: u64, now: Timestamp) -> anyhow::Result<Vec<UserId>> {
    // First: the admin is only created while the database has no user.
    kiln_server::ensure_admin(store, Some(ADMIN_PASSWORD), now)
        .await
        .context("while creating the admin user")?;
    let mut owners = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for n in 1..=count {
        let username = format!("seed-{n}");
        let id = match store.user_by_name(&username).await? {
            Some(found) => found.user.id,
            None => {
                let user = NewUser {
                    username,
                    password_hash: NO_LOGIN.to_owned(),
                    role: Role::Client,
                };
                store
                    .user_insert(user, now)
                    .await
                    .context("while creating the seed users")?
                    .id
            }
        };
        owners.push(id);
    }
    Ok(owners)
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
