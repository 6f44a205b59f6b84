//! Signing in with an OpenID Connect token: the verified person's Kiln user, made on first
//! sight, with the role the provider's roles claim gives (when one is configured).

use kiln_domain::{Role, Timestamp, User};
use kiln_store::{NewUser, Store, StoreError, TokenInfo, TokenKind, UserPatch};

use super::oidc::{Oidc, Verified, username_for};
use crate::problem::ApiError;
use crate::state::AppState;

/// The password hash of a user made from an external identity: not a PHC string, so no
/// password ever matches it (they sign in through their provider only; an admin may set a
/// password later).
pub const NO_PASSWORD: &str = "!external";

/// The user `token` (a JWT from the configured provider) signs in as, and what the token
/// cache keeps of it (expiring with the JWT's `exp`).
pub(crate) async fn oidc_user(
    state: &AppState,
    oidc: &Oidc,
    token: &str,
    now: Timestamp,
) -> Result<(User, TokenInfo), ApiError> {
    let verified = oidc.verify(token, now).await?;
    let user = person(state, &verified, now).await?;
    let info = TokenInfo {
        // Stored tokens have ids from 1; 0 never matches a `DELETE /tokens/{id}`.
        id: 0,
        user: user.id,
        kind: TokenKind::Session,
        name: "oidc".to_owned(),
        created_at: now,
        expires_at: Some(verified.expires_at),
    };
    Ok((user, info))
}

/// The Kiln user of the person the provider `verified`: found by their identity, made on
/// first sight, with the role its roles claim gives (when one is configured); refused if
/// disabled.
pub(crate) async fn person(
    state: &AppState,
    verified: &Verified,
    now: Timestamp,
) -> Result<User, ApiError> {
    let store = state.store();
    let mut user = match store.user_by_identity(&verified.identity).await? {
        Some(user) => user,
        None => provision(store, verified, now).await?,
    };
    if user.disabled {
        return Err(ApiError::unauthorized("this user is disabled"));
    }
    if let Some(role) = verified.role
        && role != user.role
    {
        let patch = UserPatch {
            role: Some(role),
            ..UserPatch::default()
        };
        user = store.user_update(user.id, patch).await?;
        // The role change revoked the user's Kiln tokens in the store; forget them here too.
        state.tokens().forget_user(user.id);
        tracing::info!(user = %user.username, %role, "role set by the identity provider's roles claim");
    }
    Ok(user)
}

/// Creates the user of a person seen for the first time: named after their token's name,
/// with a tag from their identity if that name is taken.
async fn provision(
    store: &dyn Store,
    verified: &Verified,
    now: Timestamp,
) -> Result<User, ApiError> {
    for tagged in [false, true] {
        let user = NewUser {
            username: username_for(verified, tagged),
            password_hash: NO_PASSWORD.to_owned(),
            role: verified.role.unwrap_or(Role::Client),
        };
        match store
            .user_insert_linked(user, verified.identity.clone(), now)
            .await
        {
            Ok(user) => {
                tracing::info!(user = %user.username, role = %user.role, issuer = %verified.identity.issuer, "user created for a new OpenID Connect identity");
                return Ok(user);
            }
            // The name is taken, or a concurrent request linked this person first.
            Err(StoreError::Conflict { .. }) => {
                if let Some(user) = store.user_by_identity(&verified.identity).await? {
                    return Ok(user);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "conflict",
        "no free username for this identity; ask an admin",
    ))
}
