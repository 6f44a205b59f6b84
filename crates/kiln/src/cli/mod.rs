//! The command line: `kiln serve | worker | migrate | user … | bench`.
//!
//! Exit codes: 0 success, 1 a command failed, 2 bad usage or configuration.

pub mod bench;
mod user;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, SqliteSync};
use crate::node::{self, Role};

/// Kiln: a durable job service.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
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
            db.open().await?;
            println!("migrations applied to {}", db.database_url);
            Ok(0)
        }
        Command::User(args) => user::run(args).await.map(|()| 0),
        Command::Bench(args) => bench::run(*args).await,
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
    init_tracing(&validated.config.log, validated.config.log_format);
    node::run(validated, role).await?;
    Ok(0)
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging already initialised: {e}");
    }
}
