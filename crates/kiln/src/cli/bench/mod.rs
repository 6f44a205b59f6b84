//! `kiln bench`: the measuring instrument (ADR 0006). It starts a `kiln serve` child on a
//! temp SQLite database or an empty PostgreSQL one (`--database`), or targets `--url`, logs
//! in, runs the selected scenarios over HTTP/1.1 keep-alive connections and prints markdown
//! tables (or `--json`).
//!
//! # Layout
//! - [`http`]: the hyper client.
//! - [`server`]: the local server (seeding, child process, peak RSS).
//! - [`load`]: `submit` and `e2e`, and the shared helpers (concurrent submissions, drain).
//! - [`probe`]: `latency`, `cancel`, `list`.
//! - [`read`]: `read` (each read endpoint's requests/s, latency and CPU per request).
//! - [`stream`]: `stream` (live log followers).
//! - [`procfs`]: peak RSS and CPU time from `/proc`.
//! - [`report`]: figures, percentiles, table and JSON.
//!
//! It measures and reports; it does not tune the server.

mod http;
mod load;
mod probe;
mod procfs;
mod read;
mod report;
mod server;
mod stream;

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::config::SqliteSync;
use http::Client;
use report::Report;
use server::{LocalOptions, LocalServer};

/// A scenario of `kiln bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Submissions accepted per second (all must be 202) and their latency.
    Submit,
    /// Submitted to succeeded: jobs per second.
    E2e,
    /// Start latency at a fixed light rate.
    Latency,
    /// Cancel latency of running `sleep` jobs.
    Cancel,
    /// `GET /api/v1/jobs` latency on a (seeded) table.
    List,
    /// Each read endpoint hammered by `--connections` connections for `--read-seconds`:
    /// requests/s, latency, server CPU per request, and the rate against `/healthz`.
    Read,
    /// Live log streaming: a `command` job writing `--stream-lines` lines, followed by
    /// `--stream-readers` SSE readers, against the same job with no reader.
    Stream,
}

/// The jobs `submit`, `e2e`, `latency` and `cancel` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum JobKind {
    /// No-op `echo` jobs (`cancel`: a 60 s `sleep`).
    #[default]
    Echo,
    /// `command` jobs of `/bin/true`, real processes (`cancel`: `sleep 60`); the server
    /// must allow `/bin/true` and `/bin/sleep` (the local one does; `stream` needs `/bin/sh`).
    Command,
}

/// `kiln bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Jobs submitted by `submit` and by `e2e` (each).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Concurrent keep-alive connections of `submit` and `e2e`.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Safety limit on each scenario's time, in seconds; a scenario stops early there and
    /// reports what it measured.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Submissions per second of `latency`.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Jobs submitted by `latency`.
    #[arg(long, default_value_t = 1_000)]
    pub latency_jobs: usize,
    /// Running jobs cancelled by `cancel`.
    #[arg(long, default_value_t = 50)]
    pub cancels: usize,
    /// The jobs `submit`, `e2e`, `latency` and `cancel` run.
    #[arg(long, value_enum, default_value_t = JobKind::Echo)]
    pub job: JobKind,
    /// Lines the `stream` scenario's job writes.
    #[arg(long, default_value_t = 100_000)]
    pub stream_lines: u64,
    /// SSE readers following the `stream` scenario's job.
    #[arg(long, default_value_t = 10)]
    pub stream_readers: usize,
    /// Requests of each kind made by `list`.
    #[arg(long, default_value_t = 500)]
    pub list_requests: usize,
    /// Seconds `read` measures each endpoint for (after a warm-up of up to 0.5 s that is
    /// not counted); the whole scenario still stops at `--max-seconds`.
    #[arg(long, default_value_t = 4.0)]
    pub read_seconds: f64,
    /// Finished jobs written before the scenarios run (through the store for the local
    /// server, over HTTP with `--url`).
    #[arg(long, default_value_t = 0)]
    pub seed_jobs: u64,
    /// Local server only: users (`seed-1`…`seed-N`, clients that cannot log in) the seeded
    /// jobs are spread over, round robin; the bench's admin owns none of them.
    #[arg(long, default_value_t = 1)]
    pub seed_users: u64,
    /// Local server only: a `postgres://` URL of an empty database for it to use (never
    /// read from the environment); by default a temp SQLite file. The bench refuses a
    /// database that holds jobs, and leaves its own there.
    #[arg(long)]
    pub database: Option<String>,
    /// Local server only: SQLite durability mode (default normal).
    #[arg(long, value_enum)]
    pub sqlite_sync: Option<SqliteSync>,
    /// Local server only: `MAX_CONCURRENCY` (default 4).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Local server only, with a PostgreSQL `--database`: `kiln serve` processes on it
    /// (node ids `kiln-bench-1`…), each request sent to the next in turn.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Local server only: serve HTTPS with a fresh development certificate (made in the
    /// temp dir), to compare with a plain-HTTP run.
    #[arg(long)]
    pub tls: bool,
    /// A running server to measure instead of a local one.
    #[arg(long, env = "KILN_URL")]
    pub url: Option<String>,
    /// With an `https://` `--url`: a CA certificate (PEM) to trust besides the system's.
    #[arg(long, env = "KILN_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// With `--url`: an API or session token (else `--username`/`--password` log in).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With `--url`: user to log in as (an operator or admin: `/metrics` is read).
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// With `--url`: that user's password.
    #[arg(long, env = "KILN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Print JSON instead of the markdown table.
    #[arg(long)]
    pub json: bool,
}

impl Scenario {
    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Submit => "submit",
            Scenario::E2e => "e2e",
            Scenario::Latency => "latency",
            Scenario::Cancel => "cancel",
            Scenario::List => "list",
            Scenario::Read => "read",
            Scenario::Stream => "stream",
        }
    }
}

impl BenchArgs {
    /// Every problem with the flags, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                p.push(msg.to_owned());
            }
        };
        check(self.jobs >= 1, "--jobs must be at least 1");
        check(
            (1..=4096).contains(&self.connections),
            "--connections must be between 1 and 4096",
        );
        check(self.max_seconds >= 1, "--max-seconds must be at least 1");
        check(
            self.rate > 0.0 && self.rate <= 100_000.0,
            "--rate must be above 0 and at most 100000",
        );
        check(self.latency_jobs >= 1, "--latency-jobs must be at least 1");
        check(self.cancels >= 1, "--cancels must be at least 1");
        check(
            self.list_requests >= 1,
            "--list-requests must be at least 1",
        );
        check(
            (1..=10_000_000).contains(&self.stream_lines),
            "--stream-lines must be between 1 and 10000000",
        );
        check(
            (1..=1000).contains(&self.stream_readers),
            "--stream-readers must be between 1 and 1000",
        );
        check(
            self.max_concurrency.is_none_or(|n| (1..=1024).contains(&n)),
            "--max-concurrency must be between 1 and 1024",
        );
        check(
            (1..=16).contains(&self.nodes),
            "--nodes must be between 1 and 16",
        );
        check(
            self.nodes == 1 || self.database.is_some(),
            "--nodes above 1 needs a PostgreSQL --database (one SQLite file has one process)",
        );
        check(
            (0.1..=3600.0).contains(&self.read_seconds),
            "--read-seconds must be between 0.1 and 3600",
        );
        check(
            (1..=100_000).contains(&self.seed_users),
            "--seed-users must be between 1 and 100000",
        );
        if let Some(url) = &self.database {
            let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
            check(
                postgres,
                "--database takes a postgres:// URL (without it the local server uses a temp SQLite file)",
            );
            if postgres && let Err(e) = kiln_store::postgres::tls::check_url(url) {
                check(false, &format!("--database: {e}"));
            }
            check(
                self.sqlite_sync.is_none(),
                "--sqlite-sync applies to SQLite only, not with a PostgreSQL --database",
            );
        }
        if self.url.is_some() {
            check(
                self.sqlite_sync.is_none() && self.max_concurrency.is_none() && !self.tls,
                "--sqlite-sync, --max-concurrency and --tls apply to the local server only, not with --url",
            );
            check(
                self.database.is_none() && self.seed_users == 1 && self.nodes == 1,
                "--database, --seed-users and --nodes apply to the local server only, not with --url",
            );
            check(
                self.token.is_some() || self.password.is_some(),
                "--url needs --token (KILN_TOKEN) or --password (KILN_PASSWORD)",
            );
        }
        p
    }

    fn limit(&self) -> Duration {
        Duration::from_secs(self.max_seconds)
    }

    fn selected(&self, s: Scenario) -> bool {
        self.scenario.is_empty() || self.scenario.contains(&s)
    }
}

/// Runs `kiln bench`; returns the exit code: 2 for bad flags, 1 if a scenario failed (the
/// figures measured before the failure are still printed).
pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let problems = args.problems();
    if !problems.is_empty() {
        eprintln!(
            "error: kiln bench: {} problem(s) with the flags:",
            problems.len()
        );
        for p in problems {
            eprintln!("  - {p}");
        }
        return Ok(2);
    }
    let measured = async {
        match &args.url {
            Some(url) => remote(&args, url).await,
            None => local(&args).await,
        }
    };
    // On Ctrl-C the measuring future is dropped, and with it the local server (killed on
    // drop) and its temp dir: no `kiln serve` is left behind.
    let report = tokio::select! {
        report = measured => report?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("error: kiln bench: interrupted");
            return Ok(1);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

fn new_report(durability: String, server: String) -> Report {
    Report {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        durability,
        server,
        version: env!("CARGO_PKG_VERSION"),
        figures: Vec::new(),
        endpoints: Vec::new(),
        errors: Vec::new(),
    }
}

/// Against a local `kiln serve` child.
async fn local(args: &BenchArgs) -> anyhow::Result<Report> {
    let opts = LocalOptions {
        sync: args.sqlite_sync.unwrap_or(SqliteSync::Normal),
        max_concurrency: args.max_concurrency.unwrap_or(4),
        seed_jobs: args.seed_jobs,
        seed_users: args.seed_users,
        database: args.database.clone(),
        tls: args.tls,
        nodes: args.nodes,
    };
    let (server, seeded) = LocalServer::start(&opts).await?;
    let mut report = new_report(
        seeded.durability,
        format!(
            "{} on 127.0.0.1 over {}, MAX_CONCURRENCY={}{}; RSS is its VmHWM; jobs: {}",
            match opts.nodes {
                1 => "`kiln serve` child process".to_owned(),
                n => format!(
                    "{n} `kiln serve` child processes (requests spread in turn; CPU is their sum, RSS the largest)"
                ),
            },
            if opts.tls {
                "HTTPS (rustls, ring)"
            } else {
                "plain HTTP"
            },
            opts.max_concurrency,
            if opts.database.is_some() {
                format!(", PostgreSQL pool {}", server::PG_POOL)
            } else {
                String::new()
            },
            load::describe(args.job)
        ),
    );
    if args.seed_jobs > 0 {
        report.push(
            "seed",
            "jobs written (store, bulk)",
            args.seed_jobs as f64,
            "jobs",
        );
        report.push("seed", "users owning them", args.seed_users as f64, "users");
        report.push("seed", "time", seeded.took.as_secs_f64(), "s");
    }
    let client = Client::new(&server.base, args.connections, server.ca_cert.as_deref())?;
    let token = server.login(&client).await?;
    let client = client.with_token(&token)?.spread_over(&server.bases);
    scenarios(args, &client, server.pids(), &mut report).await;
    let rss = server
        .pids()
        .iter()
        .filter_map(|&pid| procfs::peak_rss(Some(pid)))
        .max();
    if let Some(rss) = rss {
        report.push(
            "server",
            "peak RSS (VmHWM)",
            rss as f64 / 1_048_576.0,
            "MiB",
        );
    }
    server.stop().await?;
    Ok(report)
}

/// Against `--url`.
async fn remote(args: &BenchArgs, url: &str) -> anyhow::Result<Report> {
    let client = Client::new(url, args.connections, args.ca_cert.as_deref())?;
    let token = match (&args.token, &args.password) {
        (Some(token), _) => token.clone(),
        (None, Some(password)) => client.login(&args.username, password).await?,
        (None, None) => anyhow::bail!("no token and no password"),
    };
    let client = client.with_token(&token)?;
    let mut report = new_report(
        "as configured on the server (remote)".to_owned(),
        format!(
            "{url} (remote; its RSS is not measured); jobs: {}",
            load::describe(args.job)
        ),
    );
    if args.seed_jobs > 0 {
        let n = usize::try_from(args.seed_jobs).unwrap_or(usize::MAX);
        let started = Instant::now();
        let deadline = started + args.limit();
        load::submit_many(&client, load::echo_body(), n, args.connections, deadline).await?;
        load::drain(&client, args.limit()).await?;
        report.push("seed", "jobs written (HTTP)", args.seed_jobs as f64, "jobs");
        report.push("seed", "time", started.elapsed().as_secs_f64(), "s");
    }
    scenarios(args, &client, &[], &mut report).await;
    Ok(report)
}

/// Runs the selected scenarios in order, letting the queue drain between them. A failing
/// scenario is recorded in the report and the next one still runs. Each scenario also
/// reports the CPU time the bench itself and (when local, the `servers`' pids) the server
/// processes used.
async fn scenarios(args: &BenchArgs, client: &Client, servers: &[u32], report: &mut Report) {
    // The scenarios that measure one server's CPU per request (read, stream) get its pid
    // only when there is one server.
    let server = match servers {
        [one] => Some(*one),
        _ => None,
    };
    let servers_cpu = || -> f64 {
        servers
            .iter()
            .map(|&pid| procfs::cpu_seconds(Some(pid)).unwrap_or(0.0))
            .sum()
    };
    let mut order: Vec<Scenario> = Scenario::value_variants().to_vec();
    order.retain(|s| args.selected(*s));
    for scenario in order {
        if let Err(e) = load::drain(client, args.limit()).await {
            let e = e.context("while waiting for the queue to drain");
            report.errors.push(format!("{scenario:?} scenario: {e:#}"));
            continue;
        }
        let cpu = |pid| procfs::cpu_seconds(pid).unwrap_or(0.0);
        let (client_cpu, server_cpu) = (cpu(None), servers_cpu());
        let result = one(args, client, scenario, server, report).await;
        let name = scenario.name();
        report.push(name, "bench (client) CPU", cpu(None) - client_cpu, "s");
        if !servers.is_empty() {
            report.push(name, "server CPU", servers_cpu() - server_cpu, "s");
        }
        if let Err(e) = result {
            report.errors.push(format!("{name} scenario: {e:#}"));
        }
    }
}

async fn one(
    args: &BenchArgs,
    client: &Client,
    scenario: Scenario,
    server: Option<u32>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (jobs, conns, limit, kind) = (args.jobs, args.connections, args.limit(), args.job);
    match scenario {
        Scenario::Submit => load::submit(client, kind, jobs, conns, limit, report).await,
        Scenario::E2e => load::e2e(client, kind, jobs, conns, limit, report).await,
        Scenario::Latency => {
            let rate = args.rate;
            probe::latency(client, kind, args.latency_jobs, rate, limit, report).await
        }
        Scenario::Cancel => probe::cancel(client, kind, args.cancels, limit, report).await,
        Scenario::Stream => {
            let (lines, readers) = (args.stream_lines, args.stream_readers);
            stream::stream(client, lines, readers, server, limit, report).await
        }
        Scenario::List => {
            let rows = load::counts(client).await?.total;
            probe::list(client, args.list_requests, rows, limit, report).await
        }
        Scenario::Read => {
            let rows = load::counts(client).await?.total;
            let seconds = Duration::from_secs_f64(args.read_seconds);
            read::read(client, conns, seconds, server, rows, limit, report).await
        }
    }
}
