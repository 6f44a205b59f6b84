//! [`ensure_admin`]: the first start of an empty database creates the `admin` user.

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
