//! `kiln user add | list | set-role`: user management straight on the database.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kiln_domain::{Clock, Role, SystemClock};
use kiln_store::{NewUser, UserPatch};

use super::DbArgs;

/// `kiln user …`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Creates a user. The password comes from --password, KILN_USER_PASSWORD or stdin.
    Add {
        /// Login name.
        username: String,
        /// Role: client, operator or admin.
        #[arg(long, default_value = "client")]
        role: Role,
        /// Password (prefer KILN_USER_PASSWORD or stdin: flags show up in `ps`).
        #[arg(long, env = "KILN_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Lists users.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Changes a user's role.
    SetRole {
        /// Login name.
        username: String,
        /// New role.
        role: Role,
    },
}

/// Runs a user subcommand.
pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let store = args.db.open().await?;
    match args.command {
        UserCommand::Add {
            username,
            role,
            password,
        } => {
            let username = kiln_domain::user::parse_username(&username)?.to_owned();
            let password = match password {
                Some(p) => p,
                None => read_password()?,
            };
            kiln_domain::user::check_password(&password)?;
            let password_hash = kiln_server::auth::password::hash(&password)
                .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
            let user = store
                .user_insert(
                    NewUser {
                        username,
                        password_hash,
                        role,
                    },
                    SystemClock.now(),
                )
                .await
                .context("while creating the user")?;
            println!(
                "created user `{}` (id {}, role {})",
                user.username, user.id, user.role
            );
        }
        UserCommand::List { json } => {
            let users = store.user_list().await?;
            if json {
                let views: Vec<kiln_api::UserView> = users.into_iter().map(Into::into).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("{:<6} {:<24} {:<9} DISABLED", "ID", "USERNAME", "ROLE");
                for u in users {
                    println!(
                        "{:<6} {:<24} {:<9} {}",
                        u.id, u.username, u.role, u.disabled
                    );
                }
            }
        }
        UserCommand::SetRole { username, role } => {
            let Some(record) = store.user_by_name(&username).await? else {
                bail!("no user named `{username}`");
            };
            let patch = UserPatch {
                role: Some(role),
                ..UserPatch::default()
            };
            let user = store.user_update(record.user.id, patch).await?;
            println!("user `{}` is now {}", user.username, user.role);
        }
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    eprintln!("password (one line on stdin):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("while reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
