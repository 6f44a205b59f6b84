//! The command line: `kiln serve | worker | migrate | user … | bench`, and the client
//! commands of [`crate::client`].
//!
//! Exit codes: 0 success, 1 a command failed, 2 bad usage or configuration; the client
//! commands add 3–6 (see [`EXIT_CODES`]).

pub mod bench;
mod dev_cert;
mod user;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, SqliteSync};
use crate::node::{self, Role};

/// The exit codes, as `kiln --help` shows them.
pub const EXIT_CODES: &str = "Exit codes:
  0  done
  1  the job ended dead or cancelled (submit --wait), or the command failed
  2  bad usage or input (a flag, a payload, a bad configuration, a 400)
  3  not found (an unknown job, file or token)
  4  conflict (an illegal move, an idempotency key reused)
  5  not logged in, token expired, or not allowed
  6  the server failed or could not be reached

Start: `kiln serve` runs the service; `kiln login`, then `kiln submit sleep ms=2000 --wait`.";

/// Kiln: a durable job service.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the HTTP API and a worker on this node.
    Serve(Box<Config>),
    /// Runs a worker only (no HTTP listener).
    Worker(Box<Config>),
    /// Applies the database migrations and exits.
    Migrate(DbArgs),
    /// Manages users directly in the database (works while the service is stopped).
    User(user::UserArgs),
    /// Measures a server: submissions/s, end-to-end jobs/s, start, cancel and list latency.
    Bench(Box<bench::BenchArgs>),
    /// Writes a local CA, a server and a client certificate for trying HTTPS and mutual TLS.
    DevCert(dev_cert::DevCertArgs),
    #[command(flatten)]
    Client(Box<crate::client::ClientCommand>),
}

/// Which database an offline command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Database URL.
    #[arg(long = "database", env = "DATABASE_URL", default_value = crate::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

impl DbArgs {
    async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn kiln_store::Store>> {
        let opts = node::StoreOptions {
            sqlite_sync: SqliteSync::Full,
            pg_pool: 2,
            pg_poll_only: true,
            sqlite_max_size: None,
        };
        node::open_store(&self.database_url, opts).await
    }
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(config) => serve(*config, Role::Serve).await,
        Command::Worker(config) => serve(*config, Role::Worker).await,
        Command::Migrate(db) => {
            let applied = node::migrate_store(&db.database_url).await?;
            match applied.as_slice() {
                [] => println!("{} is up to date", db.database_url),
                versions => println!("migrations {versions:?} applied to {}", db.database_url),
            }
            Ok(0)
        }
        Command::User(args) => user::run(args).await.map(|()| 0),
        Command::Bench(args) => bench::run(*args).await,
        Command::DevCert(args) => dev_cert::run(&args),
        Command::Client(command) => Ok(crate::client::run(*command).await),
    }
}

async fn serve(config: Config, role: Role) -> anyhow::Result<i32> {
    let validated = match config.validate() {
        Ok(v) => v,
        Err(problems) => {
            eprintln!(
                "error: the configuration has {} problem(s):",
                problems.len()
            );
            for p in problems {
                eprintln!("  - {p}");
            }
            return Ok(2);
        }
    };
    let exporter = init_tracing(
        &validated.config.log,
        validated.config.log_format,
        &validated.node_id,
    );
    let result = node::run(validated, role).await;
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    result.map(|()| 0)
}

/// The subscriber's layers: the log lines, then (feature `otlp`) the span exporter.
type Layers = Vec<
    Box<
        dyn tracing_subscriber::Layer<
                tracing_subscriber::layer::Layered<
                    tracing_subscriber::EnvFilter,
                    tracing_subscriber::Registry,
                >,
            > + Send
            + Sync,
    >,
>;

/// Installs the log output and, when built with `otlp` and a collector is configured, the
/// span exporter (returned, to be flushed at exit).
fn init_tracing(filter: &str, format: LogFormat, node: &str) -> Option<Exporter> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a file or a pipe break log shippers.
    let ansi = crate::client::output::colour(std::io::stdout().is_terminal());
    let lines = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let mut layers: Layers = vec![match format {
        LogFormat::Text => lines.with_target(false).boxed(),
        // One object per line: timestamp, level, target, the event's fields at the top
        // level, and the innermost span's fields (`request_id` and `trace_id` of a request;
        // `job_id`, `job_type`, `attempt` and `node` of a job's attempt) under `span`.
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }];
    let exporter = exporter_layer(node, &mut layers);
    if let Err(e) = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
    {
        eprintln!("warning: logging already initialised: {e}");
    }
    exporter
}

#[cfg(feature = "otlp")]
type Exporter = crate::otlp::Exporter;
/// Built without `otlp`: nothing to flush.
#[cfg(not(feature = "otlp"))]
struct Exporter;

#[cfg(not(feature = "otlp"))]
impl Exporter {
    async fn shutdown(self) {}
}

/// Adds the OTLP exporter's layer when a collector is configured.
#[cfg(feature = "otlp")]
fn exporter_layer(node: &str, layers: &mut Layers) -> Option<Exporter> {
    use tracing_subscriber::Layer as _;
    if !crate::otlp::configured() {
        return None;
    }
    match crate::otlp::layer(node) {
        Ok((layer, exporter)) => {
            layers.push(layer.boxed());
            Some(exporter)
        }
        Err(e) => {
            eprintln!("warning: traces are not exported: {e:#}");
            None
        }
    }
}

/// Without the `otlp` feature, an `OTEL_EXPORTER_OTLP_ENDPOINT` only earns a warning.
#[cfg(not(feature = "otlp"))]
fn exporter_layer(_node: &str, _layers: &mut Layers) -> Option<Exporter> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        eprintln!(
            "warning: OTEL_EXPORTER_OTLP_ENDPOINT is set, but this kiln was built without \
             the `otlp` feature: traces are not exported"
        );
    }
    None
}
