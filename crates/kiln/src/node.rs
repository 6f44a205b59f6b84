//! One Kiln node: the store, the worker and (for `kiln serve`) the HTTP API, started
//! together and stopped gracefully.
//!
//! Shutdown order (`docs/design.md`, "Operations"): new requests get 503 at once; running
//! attempts get `shutdown_grace` to finish, then are interrupted and stored `failed`, due
//! now, so they run again after a restart or on another node; then the HTTP listener
//! closes.
//!
//! With `--tls-cert`/`--tls-key` the API is served over HTTPS ([`crate::tls::server`]) and
//! SIGHUP re-reads the certificate files; without them it is plain HTTP, with a warning when
//! the address is reachable from other machines.

use kiln_server::auth::oidc::Oidc;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kiln_domain::{Clock, SystemClock};
use kiln_kernels::Registry;
use kiln_kernels::command::{Command, CommandConfig};
use kiln_metrics::Metrics;
use kiln_server::{AppState, ServerConfig};
use kiln_store::Store;
use kiln_worker::{Worker, WorkerConfig, WorkerHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Validated;
use crate::tls::server::ServerTls;

/// A running node.
pub struct Node {
    addr: Option<SocketAddr>,
    state: Option<AppState>,
    worker: WorkerHandle,
    http: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    grace: std::time::Duration,
    store: Arc<dyn Store>,
    tls: Option<ServerTls>,
    /// The metrics listener (`KILN_METRICS_ADDR`), if any.
    metrics_http: Option<(CancellationToken, JoinHandle<std::io::Result<()>>)>,
    /// Where the metrics listener listens.
    metrics_addr: Option<SocketAddr>,
    /// The lock that makes this process the only one on its SQLite file, held until the
    /// node is dropped (`None` on PostgreSQL).
    _sqlite_lock: Option<std::fs::File>,
}

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Worker and HTTP API (`kiln serve`).
    Serve,
    /// Worker only (`kiln worker`).
    Worker,
}

/// Starts a node: opens the store, creates the first admin, starts the worker and, for
/// [`Role::Serve`], the HTTP listener.
pub async fn start(v: &Validated, role: Role) -> anyhow::Result<Node> {
    start_with_clock(v, role, Arc::new(SystemClock)).await
}

/// [`start`] with the clock every timestamp comes from: the wall clock in production, a
/// [`kiln_domain::ManualClock`] in tests that must decide when scheduled work becomes due.
pub async fn start_with_clock(
    v: &Validated,
    role: Role,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Node> {
    let sqlite_lock = lock_sqlite(&v.config.database_url)?;
    let metrics = Arc::new(Metrics::default());
    let queues = v.file.queues.keys().map(String::as_str);
    metrics.known(
        v.catalogue.iter().map(|spec| spec.name),
        std::iter::once(kiln_domain::job::QueueName::DEFAULT).chain(queues),
    );
    let opened = open_store_with(
        &v.config.database_url,
        StoreOptions::from_config(&v.config),
        Some(Arc::clone(&metrics)),
    )
    .await?;
    let store = opened.store;
    let catalogue = Arc::new(v.catalogue.clone());
    let beside_sqlite = matches!(
        kiln_store::sqlite::parse_database_url(&v.config.database_url),
        Some(kiln_store::sqlite::SqlitePath::File(_))
    );
    if !beside_sqlite {
        let local_objects =
            (v.config.object_store.is_none() && opened.pg_objects.is_none()).then_some("objects");
        for name in ["scratch", "command-scratch"]
            .into_iter()
            .chain(local_objects)
        {
            private_dir(&data_dir(&v.config.database_url, name, &v.node_id))?;
        }
    }
    let (objects, objects_name) = open_objects(v, opened.pg_objects)?;
    // Every listener is bound before the worker starts: a node that cannot serve (a port
    // in use, say) exits having claimed nothing, and without failing as "left running by
    // its previous incarnation" the jobs of a live node it was started beside by mistake.
    let metrics_listener = match v.config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("while binding the metrics listener {addr}"))?,
        ),
        None => None,
    };
    let listener = match role {
        Role::Serve => Some(
            tokio::net::TcpListener::bind((v.config.bind, v.config.port))
                .await
                .with_context(|| format!("while binding {}:{}", v.config.bind, v.config.port))?,
        ),
        Role::Worker => None,
    };
    if role == Role::Serve {
        first_admin(v, store.as_ref(), clock.now()).await?;
    }
    let instance = register(
        v,
        role,
        store.as_ref(),
        objects_name,
        clock.as_ref(),
        sqlite_lock.is_some(),
    )
    .await?;
    let worker = Worker::new(
        WorkerConfig {
            objects: Some(objects.clone()),
            registered: Some(instance),
            ..worker_config(v)
        },
        Arc::clone(&store),
        registry(
            v,
            model::pdf_kernel(&v.config.gemini, &store, &clock, &metrics)?,
        ),
        Arc::clone(&catalogue),
        Arc::clone(&clock),
    )
    .with_metrics(Arc::clone(&metrics))
    .start()
    .await;
    let worker = match worker {
        Ok(worker) => worker,
        Err(e) => {
            let _ = store.node_deregister(&v.node_id, instance).await;
            return Err(anyhow::Error::new(e).context("while starting the worker"));
        }
    };
    let mut node = Node {
        addr: None,
        state: None,
        worker,
        http: None,
        grace: v.config.shutdown_grace,
        store: Arc::clone(&store),
        tls: None,
        metrics_http: None,
        metrics_addr: None,
        _sqlite_lock: sqlite_lock,
    };
    let config = ServerConfig {
        objects: Some(objects),
        ..server_config(v)
    };
    let state = AppState::with_metrics(
        Arc::clone(&store),
        catalogue,
        Arc::clone(&clock),
        config,
        metrics,
    );
    if let Some(listener) = metrics_listener {
        node.metrics_addr = Some(listener.local_addr()?);
        let stop = CancellationToken::new();
        let app = kiln_server::metrics_router(state.clone());
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        node.metrics_http = Some((stop, tokio::spawn(async move { serve.await })));
    }
    if let Some(listener) = listener {
        node.addr = Some(listener.local_addr()?);
        let stop = CancellationToken::new();
        let app = kiln_server::router(state.clone());
        let limits = crate::tls::server::ConnectionLimits {
            header_timeout: v.config.header_timeout,
            max_connections: v.config.max_connections,
        };
        let http = spawn_http(listener, app, v.tls.clone(), limits, stop.clone());
        node.http = Some((stop, http));
        node.state = Some(state);
        node.tls = v.tls.clone();
    }
    Ok(node)
}

/// Serves the API on `listener` until `stop`: HTTPS with `tls`, else plain HTTP (with a
/// warning unless only this machine can reach it).
fn spawn_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<ServerTls>,
    limits: crate::tls::server::ConnectionLimits,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
        && tls.is_none()
    {
        tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address: passwords and tokens cross the \
             network in clear text (set KILN_TLS_CERT and KILN_TLS_KEY, or bind 127.0.0.1 \
             behind a TLS proxy)"
        );
    }
    tokio::spawn(crate::tls::server::serve(listener, app, tls, limits, stop))
}

/// The object store of uploaded files and job artifacts, and the name it is registered
/// under (every live node must name the same one): `KILN_OBJECT_STORE`, else the
/// PostgreSQL database itself, else `objects/` beside the SQLite file.
fn open_objects(
    v: &Validated,
    pg_objects: Option<Arc<dyn kiln_objects::ObjectStore>>,
) -> anyhow::Result<(kiln_objects::Objects, String)> {
    if let Some(url) = &v.config.object_store {
        // The backends' own settings (region, credentials) come from the usual variables,
        // lowercased into object_store's config keys (`AWS_REGION` → `aws_region`).
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let objects = kiln_objects::Objects::from_url(url, options)
            .with_context(|| format!("while opening the object store {url}"))?;
        return Ok((objects, store_name(url)));
    }
    if let Some(store) = pg_objects {
        return Ok((kiln_objects::Objects::new(store), "database".to_owned()));
    }
    let root = data_dir(&v.config.database_url, "objects", &v.node_id);
    let objects = kiln_objects::Objects::local(&root)
        .with_context(|| format!("while opening the object store in {}", root.display()))?;
    let name = format!("local:{}:{}", crate::config::host_name(), root.display());
    Ok((objects, name))
}

/// An object store URL as the registry shows it: no user, password or query (where
/// credentials could hide).
fn store_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "configured".to_owned(),
    }
}

/// Enters this node in the registry of nodes. A live node holding the same id is waited
/// for, up to one lease (a node restarted at once after a crash finds its own previous
/// registration still fresh), then refused; so is a node whose objects live in another
/// store than the live nodes'. On SQLite the file lock already proves no other process
/// uses the database, so a previous registration is taken over at once.
async fn register(
    v: &Validated,
    role: Role,
    store: &dyn Store,
    objects: String,
    clock: &dyn Clock,
    sqlite: bool,
) -> anyhow::Result<uuid::Uuid> {
    let instance = uuid::Uuid::now_v7();
    let start = kiln_store::NodeStart {
        id: v.node_id.clone(),
        instance,
        host: crate::config::host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        role: match role {
            Role::Serve => "serve",
            Role::Worker => "worker",
        }
        .to_owned(),
        slots: u32::try_from(v.config.max_concurrency).unwrap_or(u32::MAX),
        objects,
        ttl: v.config.lease,
        take_over: sqlite,
    };
    let waited = std::time::Instant::now();
    let mut warned = false;
    loop {
        let holder = match store.node_register(&start, clock.now()).await {
            Ok(None) => return Ok(instance),
            Ok(Some(holder)) => holder,
            Err(kiln_store::StoreError::Conflict { what }) => {
                anyhow::bail!("this node cannot start: {what}")
            }
            Err(e) => return Err(anyhow::Error::new(e).context("while registering the node")),
        };
        if waited.elapsed() >= v.config.lease {
            anyhow::bail!(
                "this node cannot start: node id `{}` is held by a live node ({holder}); \
                 give this node another KILN_NODE_ID",
                v.node_id
            );
        }
        if !warned {
            warned = true;
            tracing::warn!(
                node = %v.node_id,
                holder = %holder,
                "this node id is registered by a live node: waiting up to one lease for \
                 that registration to lapse (a previous run of this node that died)"
            );
        }
        tokio::time::sleep((v.config.lease / 10).min(std::time::Duration::from_secs(1))).await;
    }
}

/// Every built-in kernel, `pdf_analyze` as configured, and `command` with the node's
/// allow-list. `command` is registered even without one, so a job submitted while a list
/// was set ends `dead` with a clear error instead of waiting for ever.
fn registry(v: &Validated, pdf: kiln_kernels::pdf::PdfAnalyze) -> Registry {
    let mut registry = Registry::default();
    registry.register(Arc::new(pdf));
    let mut config = CommandConfig::new(Arc::clone(&v.command_allow));
    config.grace = v.config.command_grace;
    config.scratch = data_dir(&v.config.database_url, "command-scratch", &v.node_id);
    if v.command_allow.is_enabled() {
        let names: Vec<&str> = v
            .command_allow
            .programs()
            .iter()
            .map(|p| p.path.as_str())
            .collect();
        tracing::info!(programs = ?names, "command jobs are enabled");
        if let Err(why) = &config.cgroups {
            tracing::warn!(
                reason = %why,
                "command jobs run under rlimits only: cgroup v2 limits are not available"
            );
        }
    }
    registry.register(Arc::new(Command::new(config)));
    registry
}

/// The per-queue concurrency limits of `kiln.toml`.
fn queue_limits(v: &Validated) -> impl Iterator<Item = (String, usize)> + '_ {
    v.file
        .queues
        .iter()
        .map(|(name, q)| (name.clone(), q.concurrency))
}

fn worker_config(v: &Validated) -> WorkerConfig {
    WorkerConfig {
        node_id: v.node_id.clone(),
        max_concurrency: v.config.max_concurrency,
        claim_ahead: v.config.claim_ahead(),
        claim_ahead_wait: v.config.claim_ahead_wait,
        queue_limits: queue_limits(v).collect(),
        lease_duration: v.config.lease,
        heartbeat_interval: v.config.lease / 3,
        retention: v.config.retention,
        max_jobs: v.config.max_jobs,
        artifact_scratch: data_dir(&v.config.database_url, "scratch", &v.node_id),
        owner_slots: v.config.owner_slots(),
        storage_quota: (v.config.user_storage > 0).then_some(v.config.user_storage),
        ..WorkerConfig::default()
    }
}

/// The object store (uploaded files, artifacts) and the worker's artifact scratch space
/// live beside the SQLite file (`<its dir>/objects`, `<its dir>/scratch`: one file system,
/// so a finished artifact is renamed into the store, not copied); an in-memory or remote
/// database keeps them in the system temp dir, per node.
fn data_dir(database_url: &str, name: &str, node_id: &str) -> std::path::PathBuf {
    match kiln_store::sqlite::parse_database_url(database_url) {
        Some(kiln_store::sqlite::SqlitePath::File(db)) => {
            db.parent().unwrap_or(std::path::Path::new(".")).join(name)
        }
        _ => std::env::temp_dir().join(format!("kiln-{name}-{node_id}")),
    }
}

/// Creates `admin` on the first start of an empty database (with the configured password,
/// or a generated one written to an owner-only file); on later starts, removes that file
/// once the password was changed.
async fn first_admin(
    v: &Validated,
    store: &dyn kiln_store::Store,
    now: kiln_domain::Timestamp,
) -> anyhow::Result<()> {
    let admin_password = v.config.admin_password.as_ref().map(|s| s.0.as_str());
    let password_file = password_file(v);
    if let Some(generated) = kiln_server::ensure_admin(store, admin_password, now)
        .await
        .context("while creating the first admin user")?
    {
        kiln_server::write_password_file(&password_file, &generated).with_context(|| {
            format!(
                "while writing the admin password to {}",
                password_file.display()
            )
        })?;
        tracing::warn!(
            path = %password_file.display(),
            "created user `admin` with a generated password, in this file (readable by \
             this user only; removed once the password is changed)"
        );
        println!(
            "Created user `admin`; its password is in {} (removed once you change it)",
            password_file.display()
        );
    } else if kiln_server::retire_password_file(store, &password_file)
        .await
        .context("while checking the generated admin password file")?
    {
        tracing::warn!(
            path = %password_file.display(),
            "`admin` still has the generated password kept in this file: change it"
        );
    }
    Ok(())
}

/// Where a generated first admin password is written: `admin-password` beside the SQLite
/// file (else in the system temp dir, per node).
fn password_file(v: &Validated) -> std::path::PathBuf {
    data_dir(&v.config.database_url, "admin-password", &v.node_id)
}

/// Creates `dir` readable by this user only (0700), or checks that the one already there
/// is a directory of this user's, not a link: the data directories of a node without a
/// SQLite file live under the shared temp dir, where anyone may have created the name
/// first.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)
                .with_context(|| format!("while checking {}", dir.display()))?;
            let me = rustix::process::getuid().as_raw();
            anyhow::ensure!(
                meta.is_dir() && meta.uid() == me,
                "{} is not a directory of this user's (a link, a file, or another user's): \
                 refusing to keep data there",
                dir.display()
            );
            Ok(())
        }
        // A missing parent (the SQLite file's directory is created with the database).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("while creating {}", dir.display())),
    }
}

fn server_config(v: &Validated) -> ServerConfig {
    ServerConfig {
        admin_password_file: Some(password_file(v)),
        max_queued: v.config.max_queued,
        max_active: (v.config.max_active > 0).then_some(v.config.max_active),
        slot_share: v.config.owner_slots().map(|_| v.config.slot_share),
        session_ttl: v.config.session_ttl,
        token_max_days: v.config.token_max_days,
        cors_origins: v.config.cors_origins.clone(),
        upload_limit: v.config.upload_limit,
        upload_timeout: v.config.upload_timeout,
        max_uploads: v.config.max_uploads,
        storage_quota: (v.config.user_storage > 0).then_some(v.config.user_storage),
        // Checked by `Config::validate`.
        submit_rate: v.config.submit_rate().ok().flatten(),
        command_allow: Arc::clone(&v.command_allow),
        queue_limits: queue_limits(v).collect(),
        oidc: v.oidc.clone().map(|c| Arc::new(Oidc::new(c))),
        node_id: Some(v.node_id.clone()),
        https: v.tls.is_some(),
        ..ServerConfig::default()
    }
}

impl Node {
    /// The HTTP API's address, for `kiln serve` nodes.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The metrics listener's address, with `KILN_METRICS_ADDR`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The HTTPS configuration, for `kiln serve` nodes with TLS: [`ServerTls::reload`]
    /// re-reads its files (what SIGHUP does).
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_ref()
    }

    /// Stops gracefully (see the module docs).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(state) = &self.state {
            state.begin_shutdown();
        }
        tracing::info!(grace_ms = self.grace.as_millis() as u64, "shutting down");
        self.worker.shutdown(self.grace).await;
        if let Some((stop, task)) = self.http {
            stop.cancel();
            task.await
                .context("HTTP server task")?
                .context("HTTP server")?;
        }
        if let Some((stop, task)) = self.metrics_http {
            stop.cancel();
            task.await
                .context("metrics server task")?
                .context("metrics server")?;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(v: Validated, role: Role) -> anyhow::Result<()> {
    // Everything the node creates (the database, uploads, artifacts, scratch files, the
    // generated admin password) is readable by this user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let node = start(&v, role).await?;
    match node.addr() {
        Some(addr) => {
            // SIGHUP is handled before the server says it is serving: from then on a
            // SIGHUP reloads the certificates and never ends the process.
            if let Some(tls) = node.tls() {
                tls.clone().reload_on_sighup();
            }
            let tls = node.tls().is_some();
            tracing::info!(%addr, tls, node = %v.node_id, "kiln is serving");
        }
        None => tracing::info!(node = %v.node_id, "kiln worker is running"),
    }
    if let Some(addr) = node.metrics_addr() {
        tracing::info!(%addr, "metrics are served without a token on /metrics");
    }
    if let (Some(oidc), Some(_)) = (&v.oidc, node.addr()) {
        tracing::info!(issuer = %oidc.issuer, audience = %oidc.audience, roles_claim = ?oidc.roles_claim, "OpenID Connect bearer tokens are accepted");
    }
    shutdown_signal().await;
    node.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

mod model;
mod store;
#[cfg(test)]
mod tests;

pub use store::{StoreOptions, migrate_store, open_store};
use store::{lock_sqlite, open_store_with};
