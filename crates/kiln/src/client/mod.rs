//! The client commands of `kiln`: log in, submit, list, follow and manage jobs on a server
//! over its HTTP API.
//!
//! # Layout
//! - this file: [`ClientCommand`], the connection flags every command takes ([`Conn`]),
//!   job id prefixes, and the mapping of failures to exit codes.
//! - [`api`]: the HTTP client; [`creds`]: the saved tokens; [`error`]: failures and exit
//!   codes; [`output`]: tables, colour and `--json`.
//! - [`auth`]: `login`, `logout`, `whoami`, `token`; [`jobs`]: `submit`, `ls`, `show`,
//!   `status`, `events`, `cancel`, `retry`, `rm`, `types`; [`payload`]: a payload from
//!   flags; [`live`]: `logs -f`, `submit --wait`, `watch`; [`files`]: `files`, `artifacts`.

pub mod api;
pub mod auth;
pub mod creds;
pub mod error;
pub mod files;
pub mod jobs;
pub mod live;
pub mod output;
pub mod payload;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use api::Api;
use error::{CliError, CliResult, Kind};
use output::Out;

/// The server a command talks to when neither `--url`, `KILN_URL` nor a saved login names
/// one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where and as whom a client command connects.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server URL [default: the server last logged in to, else http://127.0.0.1:8080].
    #[arg(long, env = "KILN_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token (an API token from `kiln token create`) [default: the one `kiln login`
    /// saved for the URL].
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's, e.g. `kiln dev-cert`'s
    /// `ca.pem`.
    #[arg(long, env = "KILN_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for a server that asks for one (mutual TLS), e.g.
    /// `kiln dev-cert`'s `client.pem`.
    #[arg(long, env = "KILN_CLIENT_CERT", global = true, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `--client-cert`.
    #[arg(long, env = "KILN_CLIENT_KEY", global = true, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Machine output on stdout: one JSON document, or JSON Lines for a stream.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Conn {
    /// The server URL this command uses.
    pub fn url(&self, saved: &creds::Credentials) -> String {
        self.url
            .clone()
            .or_else(|| saved.default_url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }

    /// A client with the token from `--token`/`KILN_TOKEN` or the saved login; without
    /// any, an authentication error telling how to log in.
    pub fn api(&self) -> CliResult<Api> {
        let saved = creds::Credentials::load()?;
        let url = self.url(&saved);
        let token = self
            .token
            .clone()
            .or_else(|| saved.servers.get(&url).map(|s| s.token.clone()))
            .ok_or_else(|| {
                CliError::new(
                    Kind::Auth,
                    format!("not logged in to {url}: run `kiln login --url {url}` or pass --token"),
                )
            })?;
        Api::new(&url, Some(token), self)
    }

    /// A client without a token (to log in).
    pub fn anonymous(&self) -> CliResult<Api> {
        let saved = creds::Credentials::load()?;
        Api::new(&self.url(&saved), None, self)
    }

    /// How to print.
    pub fn out(&self) -> Out {
        Out::new(self.json)
    }
}

/// The client subcommands (flattened into `kiln`'s own).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Logs in and saves a token for the server (password prompted, or --password-stdin).
    #[command(
        after_help = "Example:\n  kiln login --url https://kiln.example.com:8443 alice\n  echo \"$PW\" | kiln login --password-stdin admin"
    )]
    Login(auth::LoginArgs),
    /// Logs out: revokes the saved token on the server and forgets it.
    #[command(after_help = "Example:\n  kiln logout")]
    Logout(Conn),
    /// Shows who the token belongs to.
    #[command(after_help = "Example:\n  kiln whoami --json")]
    Whoami(Conn),
    /// Submits a job; with --wait, follows it to the end and exits with its outcome.
    #[command(
        after_help = "Examples:\n  kiln submit sleep ms=2000 --wait\n  kiln submit primes --payload '{\"n\": 1000000}' --priority 10\n  kiln submit matrix_multiply @payload.json --delay 10m\n  echo '{\"n\": 64}' | kiln submit matrix_multiply -\n  kiln submit command 'argv=[\"sh\",\"-c\",\"echo hi\"]' --wait"
    )]
    Submit(jobs::SubmitArgs),
    /// Lists your jobs, newest first.
    #[command(
        after_help = "Examples:\n  kiln ls --state running,queued\n  kiln ls --type sleep --since 1h --all --json"
    )]
    Ls(jobs::LsArgs),
    /// Shows a job's full record.
    #[command(after_help = "Example:\n  kiln show 0193a4b2")]
    Show(IdArg),
    /// Shows a job's state, progress and result or error.
    #[command(after_help = "Example:\n  kiln status 0193a4b2")]
    Status(IdArg),
    /// Prints a job's log; -f follows it live until the job ends.
    #[command(after_help = "Example:\n  kiln logs -f 0193a4b2")]
    Logs(live::LogsArgs),
    /// Shows a job's state history.
    #[command(after_help = "Example:\n  kiln events 0193a4b2")]
    Events(IdArg),
    /// Cancels jobs.
    #[command(after_help = "Example:\n  kiln cancel 0193a4b2 0193a4c7")]
    Cancel(IdsArg),
    /// Queues failed or dead jobs again, with a fresh attempt budget.
    #[command(after_help = "Example:\n  kiln retry 0193a4b2")]
    Retry(IdsArg),
    /// Deletes finished jobs with their logs and artifacts.
    #[command(after_help = "Example:\n  kiln rm 0193a4b2")]
    Rm(IdsArg),
    /// Lists the job types, their payloads and policies.
    #[command(after_help = "Example:\n  kiln types --json")]
    Types(Conn),
    /// A live table of your most recent jobs, redrawn as they change.
    #[command(after_help = "Example:\n  kiln watch --limit 30")]
    Watch(live::WatchArgs),
    /// Manages your API tokens (for scripts and machines).
    Token(auth::TokenArgs),
    /// Manages your uploaded files.
    Files(files::FilesArgs),
    /// Lists a job's artifacts, or downloads one.
    #[command(
        after_help = "Examples:\n  kiln artifacts 0193a4b2\n  kiln artifacts 0193a4b2 primes.npy -o primes.npy"
    )]
    Artifacts(files::ArtifactsArgs),
}

/// One job id (or a unique prefix of at least 8 characters).
#[derive(Debug, Clone, Args)]
pub struct IdArg {
    /// Job id, or a unique prefix of at least 8 characters.
    pub id: String,
    /// Where and as whom to connect.
    #[command(flatten)]
    conn: Conn,
}

/// Job ids (or unique prefixes).
#[derive(Debug, Clone, Args)]
pub struct IdsArg {
    /// Job ids, or unique prefixes of at least 8 characters.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Where and as whom to connect.
    #[command(flatten)]
    conn: Conn,
}

/// Runs a client command; returns the exit code (failures are printed here).
pub async fn run(command: ClientCommand) -> i32 {
    match dispatch(command).await {
        Ok(code) => code,
        Err(e) => {
            output::error(&e.message);
            e.kind.exit_code()
        }
    }
}

async fn dispatch(command: ClientCommand) -> CliResult<i32> {
    use ClientCommand as C;
    match command {
        C::Login(args) => auth::login(args).await,
        C::Logout(conn) => auth::logout(&conn).await,
        C::Whoami(conn) => auth::whoami(&conn.api()?, conn.out()).await,
        C::Token(args) => auth::token(&args.conn.api()?, args.conn.out(), args.command).await,
        C::Submit(args) => jobs::submit(&args.conn.api()?, args.conn.out(), args).await,
        C::Ls(args) => jobs::ls(&args.conn.api()?, args.conn.out(), args).await,
        C::Show(a) => jobs::show(&a.conn.api()?, a.conn.out(), &a.id).await,
        C::Status(a) => jobs::status(&a.conn.api()?, a.conn.out(), &a.id).await,
        C::Events(a) => jobs::events(&a.conn.api()?, a.conn.out(), &a.id).await,
        C::Cancel(a) => jobs::each(&a.conn.api()?, a.conn.out(), jobs::Act::Cancel, &a.ids).await,
        C::Retry(a) => jobs::each(&a.conn.api()?, a.conn.out(), jobs::Act::Retry, &a.ids).await,
        C::Rm(a) => jobs::each(&a.conn.api()?, a.conn.out(), jobs::Act::Remove, &a.ids).await,
        C::Types(conn) => jobs::types(&conn.api()?, conn.out()).await,
        C::Logs(args) => live::logs(&args.conn.api()?, args.conn.out(), args).await,
        C::Watch(args) => live::watch(&args.conn.api()?, args.conn.out(), args).await,
        C::Files(args) => files::files(&args.conn.api()?, args.conn.out(), args.command).await,
        C::Artifacts(args) => files::artifacts(&args.conn.api()?, args.conn.out(), args).await,
    }
}

/// The shortest id prefix accepted.
const MIN_PREFIX: usize = 8;

/// A job id from what the user typed: a whole id as it is, else a unique prefix of at least
/// 8 characters, looked up among the caller's jobs. Ids are UUIDv7, whose first 12 hex
/// digits are the creation time in milliseconds, so a prefix names a window of creation
/// times and only the jobs created in it are listed.
pub async fn resolve_id(api: &Api, typed: &str) -> CliResult<String> {
    let hex: String = typed
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() < MIN_PREFIX || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CliError::usage(format!(
            "`{typed}` is not a job id or a prefix of at least {MIN_PREFIX} of its hex digits"
        )));
    }
    if hex.len() == 32 {
        return Ok(hyphenate(&hex));
    }
    let (from, to) = prefix_window(&hex);
    let mut query = vec![
        ("created_after", ms_to_rfc3339(from)),
        ("created_before", ms_to_rfc3339(to)),
        ("limit", "100".to_owned()),
    ];
    let mut found = Vec::new();
    loop {
        let page = api.get(&format!("/api/v1/jobs?{}", encode(&query))).await?;
        for job in page["items"].as_array().into_iter().flatten() {
            let id = job["id"].as_str().unwrap_or_default();
            if id.replace('-', "").starts_with(&hex) {
                found.push(id.to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                query.retain(|(k, _)| *k != "cursor");
                query.push(("cursor", cursor.to_owned()));
            }
            None => break,
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CliError::new(
            Kind::NotFound,
            format!("no job of yours starts with `{typed}` (not_found)"),
        )),
        n => Err(CliError::usage(format!(
            "`{typed}` matches {n} jobs ({}…): give more characters",
            found[..n.min(3)].join(", ")
        ))),
    }
}

/// The creation-time window (unix ms, padded a second each side for clock differences
/// between the id and `created_at`) of the ids starting with `hex`.
fn prefix_window(hex: &str) -> (i64, i64) {
    let time_digits = &hex[..hex.len().min(12)];
    let low = format!("{time_digits:0<12}");
    let high = format!("{time_digits:f<12}");
    let parse = |h: &str| i64::from_str_radix(h, 16).unwrap_or(0);
    (parse(&low) - 1000, parse(&high) + 1001)
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.max(0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn hyphenate(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A query string.
pub fn encode(pairs: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_names_a_window_of_creation_times() {
        // 0x0193a4b2c5d6 ms; 8 digits leave 16 bits of milliseconds open.
        let (from, to) = prefix_window("0193a4b2");
        assert_eq!(from, 0x0193_a4b2_0000 - 1000);
        assert_eq!(to, 0x0193_a4b2_ffff + 1001);
        let (from, to) = prefix_window("0193a4b2c5d67");
        assert_eq!(
            (from, to),
            (0x0193_a4b2_c5d6 - 1000, 0x0193_a4b2_c5d6 + 1001)
        );
    }

    #[test]
    fn a_whole_id_is_rebuilt_with_its_hyphens() {
        assert_eq!(
            hyphenate("0193a4b2c5d67e1f8a9b0c1d2e3f4a5b"),
            "0193a4b2-c5d6-7e1f-8a9b-0c1d2e3f4a5b"
        );
    }
}
