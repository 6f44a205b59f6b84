//! [`ensure_admin`]: the first start of an empty database creates the `admin` user; a
//! generated password is kept in an owner-only file ([`write_password_file`]) until the
//! password is changed ([`retire_password_file`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiln_domain::{Role, Timestamp};
use kiln_store::{NewUser, Store, StoreError};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::auth::password;

/// Why the first admin could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configured admin password is not acceptable.
    #[error("the admin password is not acceptable")]
    Invalid(#[from] kiln_domain::Invalid),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] password::HashError),
    /// The hashing task died.
    #[error("the password hashing task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// When the store has no users, creates `admin` (role admin) with `admin_password`, or with
/// a generated 24-character password that is returned (`Some`) so the caller can show it
/// once. Does nothing (`Ok(None)`) when users exist.
pub async fn ensure_admin(
    store: &dyn Store,
    admin_password: Option<&str>,
    now: Timestamp,
) -> Result<Option<String>, SetupError> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match admin_password {
        Some(p) => {
            kiln_domain::user::check_password(p)?;
            (p.to_owned(), false)
        }
        None => {
            let p: String = rand::rng()
                .sample_iter(&Alphanumeric)
                .take(24)
                .map(char::from)
                .collect();
            (p, true)
        }
    };
    let to_hash = password.clone();
    let password_hash = tokio::task::spawn_blocking(move || password::hash(&to_hash)).await??;
    let user = NewUser {
        username: "admin".to_owned(),
        password_hash,
        role: Role::Admin,
    };
    match store.user_insert(user, now).await {
        Ok(_) => Ok(generated.then_some(password)),
        // Another node created it between the count and the insert: fine.
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a generated admin password to `path`, readable by this user only (0600). Anything
/// already at `path` (a file of an earlier first start, or a link planted there) is removed
/// first, and the file is created anew (`O_EXCL`: a link that appears meanwhile is not
/// followed but refused).
pub fn write_password_file(path: &Path, password: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{password}")?;
    file.sync_all()
}

/// Removes the generated-password file once it no longer opens the `admin` account (the
/// password was changed, or the user is gone). Returns whether the file is still there.
pub async fn retire_password_file(store: &dyn Store, path: &Path) -> Result<bool, SetupError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(false);
    };
    let password = text.lines().next().unwrap_or_default().to_owned();
    let still_valid = match store.user_by_name("admin").await? {
        Some(admin) => {
            let phc = admin.password_hash;
            tokio::task::spawn_blocking(move || password::verify(&password, &phc)).await?
        }
        None => false,
    };
    if !still_valid {
        remove_password_file(path);
    }
    Ok(still_valid)
}

/// Removes the generated-password file, if any (a failure is logged).
pub fn remove_password_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the generated admin password file")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the generated admin password file")
        }
    }
}
