//! Users and their tokens as the store keeps them.

use kiln_domain::{Role, Timestamp, User, UserId};

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique login name (already validated).
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// What the user may do; a [`UserPatch`] can change it later.
    pub role: Role,
}

impl NewUser {
    /// The user this becomes once stored under `id` at `now` (enabled, at the stored
    /// precision).
    pub(crate) fn stored(self, id: UserId, now: Timestamp) -> User {
        User {
            id,
            username: self.username,
            role: self.role,
            disabled: false,
            created_at: kiln_domain::clock::truncate_ms(now),
        }
    }
}

/// An identity vouched for by an external issuer (an OpenID Connect provider): the issuer and
/// the subject id it gives the person. Kiln links it to one user, made on first sight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalIdentity {
    /// The issuer's identifier (`iss`), exactly as the provider writes it.
    pub issuer: String,
    /// The person's stable id at that issuer (Entra's `oid`, else `sub`).
    pub subject: String,
}

/// Limits an admin set for one user; `None` keeps the server's default for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserLimits {
    /// Submissions per period (`N/s`, `N/m`, `N/h`) or `off`.
    pub submit_rate: Option<String>,
    /// Submissions at once after being idle.
    pub submit_burst: Option<u32>,
    /// Jobs waiting or running at once (`0`: no limit).
    pub max_active: Option<u64>,
    /// Share of a node's slots their jobs may hold (0 < share ≤ 1).
    pub slot_share: Option<f64>,
    /// Bytes of uploaded files they may keep (`0`: no limit).
    pub storage: Option<u64>,
}

impl UserLimits {
    /// Whether every limit is the default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `n` as a database integer (values past `i64::MAX` mean "no limit" anyway).
pub(crate) fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A user with their password hash, for login only.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The user, disabled or not: login must refuse a disabled user itself.
    pub user: User,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// New argon2id hash.
    pub password_hash: Option<String>,
    /// `Some(true)` disables the user (login and their tokens stop working), `Some(false)`
    /// enables them again.
    pub disabled: Option<bool>,
}

impl UserPatch {
    /// Whether the change ends the user's sessions and API tokens: a new password, a new
    /// role, or disabling (a token must not outlive the trust it was issued under; enabling
    /// a user again brings no old token back).
    pub fn revokes_tokens(&self) -> bool {
        self.password_hash.is_some() || self.role.is_some() || self.disabled == Some(true)
    }
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Issued by `POST /auth/login`; short-lived.
    Session,
    /// A long-lived API token for machines.
    Api,
}

impl TokenKind {
    /// Name in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Api => "api",
        }
    }
}

/// A stored kind name that is not one of [`TokenKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown token kind `{0}`")]
pub struct UnknownTokenKind(pub String);

impl std::str::FromStr for TokenKind {
    type Err = UnknownTokenKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [TokenKind::Session, TokenKind::Api]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownTokenKind(s.to_owned()))
    }
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The user the token signs in as; it stops working while that user is disabled.
    pub user: UserId,
    /// SHA-256 of the secret (the secret itself is never stored).
    pub hash: Vec<u8>,
    /// Session (from a login) or API token; `GET /tokens` lists only API tokens.
    pub kind: TokenKind,
    /// A label the user chose (API tokens) or `login`.
    pub name: String,
    /// Expiry; `None` never expires.
    pub expires_at: Option<Timestamp>,
}

impl NewToken {
    /// What is known of this token once stored under `id` at `now` (times at the stored
    /// precision).
    pub(crate) fn stored(self, id: i64, now: Timestamp) -> TokenInfo {
        TokenInfo {
            id,
            user: self.user,
            kind: self.kind,
            name: self.name,
            created_at: kiln_domain::clock::truncate_ms(now),
            expires_at: self.expires_at.map(kiln_domain::clock::truncate_ms),
        }
    }
}

/// A stored token's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// The store's row id: the API names a token by it (`DELETE /tokens/{id}`), never by
    /// its secret.
    pub id: i64,
    /// The user the token signs in as.
    pub user: UserId,
    /// Session (from a login) or API token.
    pub kind: TokenKind,
    /// The label the user chose (API tokens) or `login`.
    pub name: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// When it stops working; `None`: never.
    pub expires_at: Option<Timestamp>,
}
