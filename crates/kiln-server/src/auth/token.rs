//! Bearer tokens: generation, hashing, the lookup cache and the [`CurrentUser`] extractor.
//!
//! A token is `kiln_` + 32 random bytes in hex; only its SHA-256 is stored. SHA-256 (not
//! argon2) is right here: the secret has 256 bits of entropy, so a fast hash cannot be
//! brute-forced, and every request can afford it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kiln_domain::{Role, User, UserId};
use kiln_store::TokenInfo;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::cookie;
use crate::problem::ApiError;
use crate::state::AppState;

/// How long a looked-up token is trusted without asking the store again. Logout, token
/// deletion and user changes invalidate at once, on every node: the store signals them
/// ([`kiln_store::Signal::UserChanged`]). This bounds what a missed signal (a listener
/// reconnecting, a change by `kiln user` in another process on SQLite) can keep alive.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries beyond which the cache is swept of stale ones (bounds memory under token spray).
const CACHE_SWEEP_AT: usize = 10_000;

/// A fresh secret token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("kiln_{}", hex::encode(bytes))
}

/// SHA-256 of a token, as stored.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Clone)]
struct Entry {
    user: User,
    info: TokenInfo,
    fetched: Instant,
}

/// Recently validated tokens by hash. Hand-written (a mutex around a map, swept when
/// large) rather than a cache crate: it needs exact invalidation by token id and by user,
/// and a few dozen lines do not justify another dependency on a 2-core CI.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A poisoned lock only means another request panicked mid-update of a cache entry;
        // the map is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Entry> {
        let entries = self.lock();
        entries
            .get(hash)
            .filter(|e| e.fetched.elapsed() < CACHE_TTL)
            .cloned()
    }

    fn put(&self, hash: [u8; 32], user: User, info: TokenInfo) {
        let mut entries = self.lock();
        if entries.len() >= CACHE_SWEEP_AT {
            entries.retain(|_, e| e.fetched.elapsed() < CACHE_TTL);
        }
        let fetched = Instant::now();
        entries.insert(
            hash,
            Entry {
                user,
                info,
                fetched,
            },
        );
    }

    /// Forgets the token with this hash (logout).
    pub fn forget_hash(&self, hash: &[u8; 32]) {
        self.lock().remove(hash);
    }

    /// Forgets the token with this id (token deletion).
    pub fn forget_token(&self, id: i64) {
        self.lock().retain(|_, e| e.info.id != id);
    }

    /// Forgets every token of this user (role change, disabling, password change).
    pub fn forget_user(&self, user: UserId) {
        self.lock().retain(|_, e| e.user.id != user);
    }

    /// Forgets every token.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    /// The user the token belongs to (enabled, token not expired).
    pub user: User,
    /// SHA-256 of the token they used.
    pub token_hash: [u8; 32],
    /// How the token came: `Authorization: Bearer`, or the dashboard's session cookie.
    pub via: Via,
}

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The `Authorization: Bearer` header (API clients, the CLI).
    Bearer,
    /// The dashboard's `__Host-kiln_session` cookie (see [`super::cookie`]).
    Cookie,
}

impl CurrentUser {
    /// 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs the {role} role")))
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (token, via) = match cookie::session_token(&parts.headers) {
            // A bearer token wins: an API client's request is never judged by a cookie.
            Some(session) if !parts.headers.contains_key(AUTHORIZATION) => {
                if cookie::is_unsafe(&parts.method) {
                    cookie::check_csrf(parts, session)?;
                }
                (session, Via::Cookie)
            }
            _ => (bearer(parts)?, Via::Bearer),
        };
        let hash = digest(token);
        let now = state.now();
        if let Some(entry) = state.tokens().get(&hash) {
            if entry.info.expires_at.is_none_or(|at| at > now) {
                return Ok(Self {
                    user: entry.user,
                    token_hash: hash,
                    via,
                });
            }
            state.tokens().forget_hash(&hash);
        }
        let (user, info) = match &state.config().oidc {
            // Kiln's own tokens start `kiln_`; anything else is taken for a JWT. A cookie
            // only ever holds a Kiln session token.
            Some(oidc) if !token.starts_with("kiln_") && via == Via::Bearer => {
                super::sign_in::oidc_user(state, oidc, token, now).await?
            }
            _ => state
                .store()
                .token_lookup(&hash, now)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the token is invalid or expired"))?,
        };
        state.tokens().put(hash, user.clone(), info);
        Ok(Self {
            user,
            token_hash: hash,
            via,
        })
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("an `Authorization: Bearer` token is required"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_to_32_bytes() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 64);
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), digest(&b));
    }
}
