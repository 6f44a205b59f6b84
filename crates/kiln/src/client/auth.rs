//! `kiln login`, `logout`, `whoami` and `token create|ls|rm`.

use std::io::BufRead;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::Conn;
use super::api::Api;
use super::creds::{Credentials, Saved};
use super::error::{CliError, CliResult, Kind};
use super::output::{Out, field, table, when};

/// `kiln login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// Username [default: asked].
    pub username: Option<String>,
    /// Read the password from the first line of stdin instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln login`: asks for the password (no echo), logs in, saves the token.
pub async fn login(args: LoginArgs) -> CliResult<i32> {
    let conn = &args.conn;
    let api = conn.anonymous()?;
    let username = match args.username {
        Some(name) => name,
        None if args.password_stdin => {
            return Err(CliError::usage("give the username with --password-stdin"));
        }
        None => ask("username: ")?,
    };
    let password = if args.password_stdin {
        first_line_of_stdin()?
    } else {
        rpassword::prompt_password(format!("password for {username} at {}: ", api.base())).map_err(
            |e| {
                CliError::usage(format!(
                    "cannot ask for the password ({e}): use --password-stdin"
                ))
            },
        )?
    };
    let body = json!({"username": username, "password": password});
    let answer = api
        .json(Method::POST, "/api/v1/auth/login", Some(&body))
        .await?;
    let token = answer["token"]
        .as_str()
        .ok_or_else(|| CliError::server("the login answer has no token"))?;
    let mut saved = Credentials::load()?;
    saved.servers.insert(
        api.base().to_owned(),
        Saved {
            token: token.to_owned(),
            username: username.clone(),
            expires_at: answer["expires_at"].as_str().map(str::to_owned),
        },
    );
    saved.default_url = Some(api.base().to_owned());
    let path = saved.save()?;
    let out = conn.out();
    if out.json {
        let doc =
            json!({"url": api.base(), "user": answer["user"], "expires_at": answer["expires_at"]});
        let _ = out.json(&doc, false);
    } else {
        let _ = out.line(&format!(
            "Logged in to {} as {username} until {} (token saved in {}).",
            api.base(),
            when(&answer["expires_at"]),
            path.display()
        ));
    }
    Ok(0)
}

fn ask(prompt: &str) -> CliResult<String> {
    eprint!("{prompt}");
    first_line_of_stdin()
}

fn first_line_of_stdin() -> CliResult<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    if line.is_empty() {
        return Err(CliError::usage("nothing on stdin"));
    }
    Ok(line)
}

/// `kiln logout`: revokes the saved token and forgets it.
pub async fn logout(conn: &Conn) -> CliResult<i32> {
    let mut saved = Credentials::load()?;
    let url = conn.url(&saved);
    let Some(entry) = saved.servers.remove(&url) else {
        return Err(CliError::new(Kind::Auth, format!("not logged in to {url}")));
    };
    let api = Api::new(&url, Some(entry.token), conn)?;
    // An expired or revoked token is logged out already.
    match api.json(Method::POST, "/api/v1/auth/logout", None).await {
        Ok(_) => {}
        Err(e) if e.kind == Kind::Auth => {}
        Err(e) => return Err(e),
    }
    if saved.default_url.as_deref() == Some(url.as_str()) {
        saved.default_url = None;
    }
    saved.save()?;
    let out = conn.out();
    if out.json {
        let _ = out.json(&json!({"url": url, "logged_out": true}), false);
    } else {
        let _ = out.line(&format!("Logged out of {url}."));
    }
    Ok(0)
}

/// `kiln whoami`.
pub async fn whoami(api: &Api, out: Out) -> CliResult<i32> {
    let me = api.get("/api/v1/me").await?;
    if out.json {
        let _ = out.json(&me, false);
    } else {
        let _ = out.line(&format!(
            "{} ({}) at {}",
            field(&me["username"]),
            field(&me["role"]),
            api.base()
        ));
    }
    Ok(0)
}

/// `kiln token …`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
    /// Where and as whom to connect.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kiln token create|ls|rm`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Creates an API token and prints it once.
    #[command(after_help = "Example:\n  kiln token create ci --days 90")]
    Create {
        /// A name to recognise it by.
        name: String,
        /// Days until it expires [default: 90, or the server's maximum if shorter].
        #[arg(long)]
        days: Option<u32>,
    },
    /// Lists your API tokens.
    #[command(after_help = "Example:\n  kiln token ls")]
    Ls,
    /// Deletes API tokens by id.
    #[command(after_help = "Example:\n  kiln token rm 3")]
    Rm {
        /// Token ids (from `kiln token ls`).
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// Runs a `kiln token` subcommand.
pub async fn token(api: &Api, out: Out, command: TokenCommand) -> CliResult<i32> {
    match command {
        TokenCommand::Create { name, days } => {
            let mut body = json!({"name": name});
            if let Some(days) = days {
                body["expires_in_days"] = json!(days);
            }
            let made = api
                .json(Method::POST, "/api/v1/tokens", Some(&body))
                .await?;
            if out.json {
                let _ = out.json(&made, false);
            } else {
                let _ = out.line(&field(&made["token"]));
                eprintln!(
                    "API token {} `{}` created (expires: {}); it is shown only this once.",
                    field(&made["id"]),
                    field(&made["name"]),
                    when(&made["expires_at"])
                );
            }
        }
        TokenCommand::Ls => {
            let tokens = api.get("/api/v1/tokens").await?;
            if out.json {
                let _ = out.json(&tokens, false);
            } else {
                let rows = rows(&tokens, |t| {
                    vec![
                        field(&t["id"]),
                        field(&t["name"]),
                        when(&t["created_at"]),
                        when(&t["expires_at"]),
                    ]
                });
                let _ = out.line(&table(&["id", "name", "created", "expires"], rows));
            }
        }
        TokenCommand::Rm { ids } => {
            for id in ids {
                api.json(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                    .await?;
                if !out.json {
                    let _ = out.line(&format!("Deleted token {id}."));
                }
            }
        }
    }
    Ok(0)
}

/// Table rows from a JSON array.
pub fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().into_iter().flatten().map(row).collect()
}
