//! Configuration of `kiln serve` / `kiln worker`: flags with environment fallbacks, an
//! optional `kiln.toml`, and [`Config::validate`], which lists every problem at once.
//!
//! Only this crate reads flags and the environment; the library crates get typed structs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kiln_domain::job_type::Catalogue;
use kiln_domain::{Backoff, Policy};
use serde::Deserialize;

use crate::tls::server::{ServerTls, TlsFiles};

/// Where the default SQLite database lives.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./kiln-data/kiln.db";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// SQLite durability mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    /// WAL + `synchronous=NORMAL`: every accepted job survives a crash of the process; an OS
    /// crash or power loss may lose the last transactions before the WAL is synced.
    Normal,
    /// `synchronous=FULL`: every commit is fsynced; accepted jobs survive an OS crash too.
    Full,
}

impl From<SqliteSync> for kiln_store::sqlite::Synchronous {
    fn from(sync: SqliteSync) -> Self {
        match sync {
            SqliteSync::Normal => Self::Normal,
            SqliteSync::Full => Self::Full,
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Options shared by `kiln serve` and `kiln worker`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port of the HTTP API.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "KILN_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// A second listener (`HOST:PORT`) serving `/metrics` in Prometheus text without a token,
    /// for a Prometheus on a private network; also on `kiln worker`, which has no API.
    #[arg(long, env = "KILN_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Database: `sqlite://PATH`, `sqlite::memory:` (nothing kept) or `postgres://…`.
    #[arg(long = "database", env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Attempts running at once on this node.
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 4)]
    pub max_concurrency: usize,
    /// The most jobs a node claims ahead of its free slots, so that short jobs start the
    /// moment a slot is free and many outcomes share one write; it claims that many only
    /// for jobs shorter than a claim takes. Default: 16 × `MAX_CONCURRENCY` (at most 4096)
    /// on PostgreSQL, 0 on SQLite (each slot stores its outcome and claims its next job in
    /// one write).
    #[arg(long, env = "KILN_CLAIM_AHEAD")]
    pub claim_ahead: Option<usize>,
    /// A job claimed ahead that has waited this long for a slot is given back to the queue.
    #[arg(long, env = "KILN_CLAIM_AHEAD_WAIT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub claim_ahead_wait: Duration,
    /// Keep at most this many finished jobs (the oldest are pruned).
    #[arg(long, env = "MAX_JOBS")]
    pub max_jobs: Option<u64>,
    /// Refuse submissions (429) while this many jobs are waiting or running.
    #[arg(long, env = "MAX_QUEUED")]
    pub max_queued: Option<u64>,
    /// Log filter, e.g. `info` or `kiln=debug,tower_http=info`.
    #[arg(long, env = "KILN_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Password of the `admin` user created on first start (else one is generated and written
    /// to an owner-only file in the data directory). Prefer the environment variable or
    /// `--admin-password-file`: a flag's value shows in the process list.
    #[arg(long, env = "KILN_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,
    /// A file holding the password of the `admin` user created on first start (its first
    /// line).
    #[arg(
        long,
        env = "KILN_ADMIN_PASSWORD_FILE",
        conflicts_with = "admin_password"
    )]
    pub admin_password_file: Option<std::path::PathBuf>,
    /// Finished jobs older than this are pruned.
    #[arg(long, env = "KILN_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Origins allowed by CORS (comma-separated); none by default.
    #[arg(long, env = "KILN_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// OpenID Connect: bearer JWTs from a provider, and the dashboard's sign-in through it.
    #[command(flatten)]
    pub oidc: oidc::OidcArgs,
    /// This node's id in leases (default: the host name). Must be stable across restarts.
    #[arg(long, env = "KILN_NODE_ID")]
    pub node_id: Option<String>,
    /// Optional TOML file with per-queue limits and per-type policies.
    #[arg(long = "config", env = "KILN_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// On SIGINT/SIGTERM, how long running jobs may finish before they are interrupted.
    #[arg(long, env = "KILN_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Lease of a running attempt; renewed every third of it.
    #[arg(long, env = "KILN_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Lifetime of a login token.
    #[arg(long, env = "KILN_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// The longest lifetime, in days, a user may give an API token (1 to 3650); a token
    /// asked for without one lives 90 days, or this long if it is shorter.
    #[arg(long, env = "KILN_TOKEN_MAX_DAYS", default_value_t = 365)]
    pub token_max_days: u32,
    /// SQLite durability mode.
    #[arg(long, env = "KILN_SQLITE_SYNC", value_enum, default_value_t = SqliteSync::Normal)]
    pub sqlite_sync: SqliteSync,
    /// The largest the SQLite database may grow (bytes or `MiB`/`GiB`; `0`: as large as
    /// the disk allows). A write past it answers 507 `storage_full`, as a full disk does,
    /// and keeps nothing of the write.
    #[arg(long, env = "KILN_SQLITE_MAX_SIZE", default_value = "0", value_parser = parse_size)]
    pub sqlite_max_size: u64,
    /// PostgreSQL: most pooled connections of this node.
    #[arg(long, env = "KILN_PG_POOL", default_value_t = 16)]
    pub pg_pool: usize,
    /// PostgreSQL: no `LISTEN/NOTIFY` (behind PgBouncer in transaction mode); other nodes'
    /// new work and cancels are then found by polling.
    #[arg(long, env = "KILN_PG_POLL_ONLY")]
    pub pg_poll_only: bool,
    /// Largest accepted upload (`POST /api/v1/files`): bytes, or with a unit (`50MiB`,
    /// `512KiB`, `1GiB`; `K`/`M`/`G` are binary too). Larger uploads get 413.
    #[arg(long, env = "KILN_UPLOAD_LIMIT", default_value = "50MiB", value_parser = parse_size)]
    pub upload_limit: u64,
    /// Bytes each user may keep in uploaded files and their jobs' artifacts together (same
    /// units; `0`: no limit). An upload past it answers 507 `storage_quota`; a job whose
    /// artifacts would pass it fails with `storage_quota`.
    #[arg(long, env = "KILN_USER_STORAGE", default_value = "10GiB", value_parser = parse_size)]
    pub user_storage: u64,
    /// How long a client may take to send a request's headers (from the connection's start
    /// for the first request); a slower or silent client's connection is closed, and so is
    /// a keep-alive connection idle that long.
    #[arg(long, env = "KILN_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Client connections open at once; a connection beyond them is closed at once.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Jobs each client may have waiting or running at once (`0`: no limit; operators and
    /// admins have none); past it a submission answers 429 `active_quota`.
    #[arg(long, env = "KILN_MAX_ACTIVE", default_value_t = 10_000)]
    pub max_active: u64,
    /// The share of this node's slots (`MAX_CONCURRENCY`) one client's jobs may hold, from
    /// 0 to 1 (at least one slot; operators' and admins' jobs are not held to it). A client
    /// at it waits while other slots are free, so others always find one; `1` turns it off
    /// (a single-client installation).
    #[arg(long, env = "KILN_SLOT_SHARE", default_value_t = 0.5)]
    pub slot_share: f64,
    /// Each client's submission rate, `N/s`, `N/m` or `N/h`, or `off` (operators and admins
    /// are not limited); over it, 429 `rate_limited` with `Retry-After`.
    #[arg(long, env = "KILN_SUBMIT_RATE", default_value = "100/s")]
    pub submit_rate: String,
    /// Submissions a client may make at once after being idle (the bucket's size).
    #[arg(long, env = "KILN_SUBMIT_BURST", default_value_t = 1000)]
    pub submit_burst: u32,
    /// Uploads (`POST /api/v1/files`) in progress at once; more answer 503 with
    /// `Retry-After`.
    #[arg(long, env = "KILN_MAX_UPLOADS", default_value_t = 16)]
    pub max_uploads: usize,
    /// Time limit of one upload (`POST /api/v1/files`); other requests have 30 s.
    #[arg(long, env = "KILN_UPLOAD_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub upload_timeout: Duration,
    /// Where uploaded files and job artifacts are kept: `file:///dir` (a directory, which
    /// nodes on several machines may share over a network file system),
    /// `s3://bucket/prefix` or `gs://bucket/prefix` (a build with `--features cloud`;
    /// credentials and region from the usual `AWS_*`/`GOOGLE_*` variables), or `memory:///`
    /// (nothing kept). Default: `objects/` beside the SQLite file.
    #[arg(long, env = "KILN_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Programs `command` jobs may run (comma-separated): absolute paths, or bare names
    /// resolved on this server's PATH at start-up. Without it `command` jobs are disabled.
    /// Only operators and admins may submit them; limits per program in `kiln.toml`.
    #[arg(long, env = "KILN_COMMAND_ALLOW", value_delimiter = ',')]
    pub command_allow: Vec<String>,
    /// How long a `command` job's processes get between SIGTERM and SIGKILL on cancel,
    /// timeout and shutdown.
    #[arg(long, env = "KILN_COMMAND_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub command_grace: Duration,
    /// The model `pdf_analyze` asks (`KILN_GEMINI_*`).
    #[command(flatten)]
    pub gemini: gemini::GeminiArgs,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first);
    /// needs `--tls-key`. Re-read on SIGHUP, with the key and the client CA.
    #[arg(long, env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "KILN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse, at the handshake, clients without a certificate signed by a CA
    /// of this PEM file.
    #[arg(long, env = "KILN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Parses a byte size: digits with an optional binary unit (`KiB`/`K`, `MiB`/`M`,
/// `GiB`/`G`, `B`), case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 52428800 or 50MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `kiln.toml`: per-queue concurrency caps and per-type policy overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[queues.<name>] concurrency = N`.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    /// `[types.<name>] max_attempts / timeout_ms / backoff_base_ms / backoff_cap_ms`.
    #[serde(default)]
    pub types: BTreeMap<String, TypeConfig>,
    /// `[command.limits]` and `[command.programs.<name>]`.
    #[serde(default)]
    pub command: crate::command_config::CommandFileConfig,
}

/// One queue's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Attempts of this queue running at once on a node.
    pub concurrency: usize,
}

/// One type's policy overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeConfig {
    /// Attempt budget.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (0: none).
    pub timeout_ms: Option<u64>,
    /// Backoff base.
    pub backoff_base_ms: Option<u64>,
    /// Backoff cap.
    pub backoff_cap_ms: Option<u64>,
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The flags and their environment fallbacks, as parsed.
    pub config: Config,
    /// The file's contents (empty without a file).
    pub file: FileConfig,
    /// The catalogue with the file's policies applied.
    pub catalogue: Catalogue,
    /// The node id to use.
    pub node_id: String,
    /// The programs `command` jobs may run, resolved, with their limits.
    pub command_allow: std::sync::Arc<kiln_domain::job_type::command::AllowList>,
    /// HTTPS: the loaded certificate and key (`None`: plain HTTP).
    pub tls: Option<ServerTls>,
    /// OpenID Connect bearer tokens, when an issuer is set.
    pub oidc: Option<kiln_server::auth::oidc::OidcConfig>,
}

impl Config {
    /// Reads the TOML file and checks everything, listing every problem found.
    pub fn validate(mut self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        if self.max_concurrency == 0 || self.max_concurrency > 1024 {
            problems.push("MAX_CONCURRENCY must be between 1 and 1024".to_owned());
        }
        if self.claim_ahead.is_some_and(|n| n > 4096) {
            problems.push("KILN_CLAIM_AHEAD must be at most 4096".to_owned());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            problems.push("KILN_MAX_CONNECTIONS must be between 1 and 1000000".to_owned());
        }
        if let Err(e) = self.submit_rate() {
            problems.push(format!("KILN_SUBMIT_RATE/KILN_SUBMIT_BURST: {e}"));
        }
        if !(self.slot_share > 0.0 && self.slot_share <= 1.0) {
            problems.push("KILN_SLOT_SHARE must be above 0 and at most 1".to_owned());
        }
        if !(1..=10_000).contains(&self.max_uploads) {
            problems.push("KILN_MAX_UPLOADS must be between 1 and 10000".to_owned());
        }
        if self.max_queued == Some(0) {
            problems.push("MAX_QUEUED must be at least 1".to_owned());
        }
        // Upper bounds keep every computed instant and interval sane (a lease of u64::MAX
        // seconds once overflowed a date inside a background task).
        let bounded = [
            ("KILN_LEASE", self.lease, 1, DAY),
            ("KILN_RETENTION", self.retention, 0, 100 * 365 * DAY),
            ("KILN_SHUTDOWN_GRACE", self.shutdown_grace, 0, 3600),
            ("KILN_SESSION_TTL", self.session_ttl, 60, 365 * DAY),
            ("KILN_UPLOAD_TIMEOUT", self.upload_timeout, 1, DAY),
            ("KILN_HEADER_TIMEOUT", self.header_timeout, 1, 3600),
        ];
        for (name, value, min, max) in bounded {
            if !(Duration::from_secs(min)..=Duration::from_secs(max)).contains(&value) {
                problems.push(format!(
                    "{name} must be between {} and {}",
                    humantime::format_duration(Duration::from_secs(min)),
                    humantime::format_duration(Duration::from_secs(max)),
                ));
            }
        }
        if let Some(url) = &self.object_store
            && !url.starts_with("memory:")
            && !url.starts_with("file:")
            && !cfg!(feature = "cloud")
        {
            problems.push(format!(
                "KILN_OBJECT_STORE `{url}` needs a kiln built with `--features cloud`"
            ));
        }
        self.gemini.check(&mut problems);
        if self.upload_limit == 0 {
            problems.push("KILN_UPLOAD_LIMIT must be at least 1 byte".to_owned());
        }
        if !(1..=kiln_api::MAX_TOKEN_DAYS).contains(&self.token_max_days) {
            problems.push(format!(
                "KILN_TOKEN_MAX_DAYS must be 1 to {}",
                kiln_api::MAX_TOKEN_DAYS
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            problems.push(format!(
                "KILN_LOG `{}` is not a valid filter: {e}",
                self.log
            ));
        }
        if !(self.database_url.starts_with("sqlite:") || self.database_url.starts_with("postgres"))
        {
            problems.push(format!(
                "DATABASE_URL `{}` must start with sqlite: or postgres://",
                self.database_url
            ));
        } else if self.database_url.starts_with("postgres")
            && let Err(e) = kiln_store::postgres::tls::check_url(&self.database_url)
        {
            problems.push(format!("DATABASE_URL: {e}"));
        }
        let tls = self.tls(&mut problems);
        if let Some(path) = &self.admin_password_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let first = text.lines().next().unwrap_or_default().to_owned();
                    self.admin_password = Some(Secret(first));
                }
                Err(e) => {
                    problems.push(format!("KILN_ADMIN_PASSWORD_FILE {}: {e}", path.display()))
                }
            }
        }
        if let Some(Secret(p)) = &self.admin_password
            && let Err(e) = kiln_domain::user::check_password(p)
        {
            problems.push(format!("KILN_ADMIN_PASSWORD {}", e.reason));
        }
        let file = self.read_file(&mut problems);
        let catalogue = catalogue(&file, &mut problems);
        let command_allow =
            crate::command_config::allow_list(&self.command_allow, &file.command, &mut problems);
        for (name, queue) in &file.queues {
            if let Err(e) = kiln_domain::QueueName::parse(name) {
                problems.push(format!("kiln.toml [queues.{name}]: {}", e.reason));
            }
            if queue.concurrency == 0 {
                problems.push(format!(
                    "kiln.toml [queues.{name}]: concurrency must be at least 1"
                ));
            }
        }
        let oidc = self.oidc.check(&mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let node_id = self.node_id.clone().unwrap_or_else(default_node_id);
        Ok(Validated {
            config: self,
            file,
            catalogue,
            node_id,
            command_allow: std::sync::Arc::new(command_allow),
            tls,
            oidc,
        })
    }

    /// The most jobs claimed ahead of free slots ([`Config::claim_ahead`] or its default
    /// for the database).
    pub fn claim_ahead(&self) -> usize {
        self.claim_ahead
            .unwrap_or(if self.database_url.starts_with("postgres") {
                (16 * self.max_concurrency).min(4096)
            } else {
                0
            })
    }

    /// The most slots one client's jobs may hold on this node (`None`: no limit).
    pub fn owner_slots(&self) -> Option<usize> {
        // Both factors are checked (share in (0, 1], at most 1024 slots): the product fits.
        let slots = (self.slot_share * self.max_concurrency as f64).floor() as usize;
        let slots = slots.max(1);
        (slots < self.max_concurrency).then_some(slots)
    }

    /// The clients' submission rate (`None`: `off`).
    pub fn submit_rate(&self) -> Result<Option<kiln_server::rate::SubmitRate>, String> {
        if self.submit_rate.trim() == "off" {
            return Ok(None);
        }
        kiln_server::rate::SubmitRate::parse(&self.submit_rate, self.submit_burst).map(Some)
    }

    /// The TLS files, loaded: both of `--tls-cert` and `--tls-key` or neither, and a client
    /// CA only with them.
    fn tls(&self, problems: &mut Vec<String>) -> Option<ServerTls> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_cert.is_some() || self.tls_key.is_some() {
                problems.push(
                    "KILN_TLS_CERT and KILN_TLS_KEY go together: set both or neither".to_owned(),
                );
            } else if self.tls_client_ca.is_some() {
                problems.push("KILN_TLS_CLIENT_CA needs KILN_TLS_CERT and KILN_TLS_KEY".to_owned());
            }
            return None;
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        ServerTls::load(files)
            .map_err(|e| problems.push(format!("TLS: {e:#}")))
            .ok()
    }

    fn read_file(&self, problems: &mut Vec<String>) -> FileConfig {
        let (path, required) = match &self.config_file {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from("kiln.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
                problems.push(format!("{}: {e}", path.display()));
                FileConfig::default()
            }),
            Err(e) if required || e.kind() != std::io::ErrorKind::NotFound => {
                problems.push(format!("cannot read {}: {e}", path.display()));
                FileConfig::default()
            }
            Err(_) => FileConfig::default(),
        }
    }
}

/// The default catalogue with the file's policy overrides applied.
/// Seconds in a day, for the bounds of durations.
const DAY: u64 = 86_400;
/// The most attempts a type's policy may allow.
const MAX_ATTEMPTS: u32 = 1000;
/// The longest timeout or backoff a type's policy may set: 7 days, in ms.
const MAX_POLICY_MS: u64 = 7 * DAY * 1000;

fn catalogue(file: &FileConfig, problems: &mut Vec<String>) -> Catalogue {
    let mut catalogue = Catalogue::default();
    for (name, overrides) in &file.types {
        let Ok(spec) = catalogue.get_by_name(name) else {
            problems.push(format!("kiln.toml [types.{name}]: unknown job type"));
            continue;
        };
        let (job_type, base) = (spec.job_type, spec.policy);
        let policy = Policy {
            max_attempts: overrides.max_attempts.unwrap_or(base.max_attempts),
            timeout_ms: overrides.timeout_ms.unwrap_or(base.timeout_ms),
            backoff: Backoff {
                base_ms: overrides.backoff_base_ms.unwrap_or(base.backoff.base_ms),
                cap_ms: overrides.backoff_cap_ms.unwrap_or(base.backoff.cap_ms),
            },
        };
        if !(1..=MAX_ATTEMPTS).contains(&policy.max_attempts) {
            problems.push(format!(
                "kiln.toml [types.{name}]: max_attempts must be 1 to {MAX_ATTEMPTS}"
            ));
        }
        for (field, ms) in [
            ("timeout_ms", policy.timeout_ms),
            ("backoff_base_ms", policy.backoff.base_ms),
            ("backoff_cap_ms", policy.backoff.cap_ms),
        ] {
            if ms > MAX_POLICY_MS {
                problems.push(format!(
                    "kiln.toml [types.{name}]: {field} must be at most {MAX_POLICY_MS} (7 days)"
                ));
            }
        }
        catalogue.set_policy(job_type, policy);
    }
    catalogue
}

/// The host name, or `kiln` when it cannot be read.
fn default_node_id() -> String {
    host_name()
}

/// This machine's host name, or `kiln` when it cannot be read.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kiln".to_owned())
}

pub mod gemini;
pub mod oidc;
#[cfg(test)]
mod tests;
