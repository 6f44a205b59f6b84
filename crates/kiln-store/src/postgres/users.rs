//! Users and their tokens.
//!
//! Tokens are stored as the SHA-256 of the secret, never the secret; a lookup finds a token
//! only while it has not expired and its user is enabled.

use deadpool_postgres::GenericClient;
use kiln_domain::{Timestamp, User, UserId};
use tokio_postgres::Row;

use super::row::{self, query, query_opt, ts, user_columns};
use crate::error::{Result, StoreError};
use crate::model::{
    ExternalIdentity, NewToken, NewUser, TokenInfo, TokenKind, UserLimits, UserPatch, UserRecord,
    clamp_i64,
};

/// Creates a user; `Conflict` if the name is taken.
pub(super) async fn insert(db: &impl GenericClient, user: NewUser, now: Timestamp) -> Result<User> {
    let now = ts(now);
    let found = row::query_one(
        db,
        "INSERT INTO users (username, password_hash, role, disabled, created_at)
         VALUES ($1, $2, $3, false, $4) RETURNING id",
        &[
            &user.username,
            &user.password_hash,
            &user.role.as_str(),
            &now,
        ],
    )
    .await
    .map_err(|e| e.conflict_as("username already taken"))?;
    Ok(user.stored(UserId(row::get(&found, 0)?), now))
}

/// Creates a user and links `identity` to them in one statement; `Conflict` if the name is
/// taken or the identity already linked (then neither is stored).
pub(super) async fn insert_linked(
    db: &impl GenericClient,
    user: NewUser,
    identity: &ExternalIdentity,
    now: Timestamp,
) -> Result<User> {
    let now = ts(now);
    let found = row::query_one(
        db,
        "WITH made AS (
             INSERT INTO users (username, password_hash, role, disabled, created_at)
             VALUES ($1, $2, $3, false, $4) RETURNING id
         ), linked AS (
             INSERT INTO user_identities (issuer, subject, user_id, created_at)
             SELECT $5, $6, id, $4 FROM made
         )
         SELECT id FROM made",
        &[
            &user.username,
            &user.password_hash,
            &user.role.as_str(),
            &now,
            &identity.issuer,
            &identity.subject,
        ],
    )
    .await
    .map_err(|e| e.conflict_as("username taken or identity already linked"))?;
    Ok(user.stored(UserId(row::get(&found, 0)?), now))
}

/// The limits set for `user`; `NotFound` without such a user.
pub(super) async fn limits(db: &impl GenericClient, user: UserId) -> Result<UserLimits> {
    let found = query_opt(
        db,
        "SELECT l.submit_rate, l.submit_burst, l.max_active, l.slot_share, l.storage
         FROM users u LEFT JOIN user_limits l ON l.user_id = u.id WHERE u.id = $1",
        &[&user.0],
    )
    .await?
    .ok_or(StoreError::NotFound)?;
    let unsigned = |at: usize| -> Result<Option<u64>> {
        Ok(row::get::<Option<i64>>(&found, at)?.map(|n| u64::try_from(n).unwrap_or(0)))
    };
    Ok(UserLimits {
        submit_rate: row::get(&found, 0)?,
        submit_burst: row::get::<Option<i64>>(&found, 1)?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        max_active: unsigned(2)?,
        slot_share: row::get(&found, 3)?,
        storage: unsigned(4)?,
    })
}

/// Replaces the limits set for `user` in one statement (a row only while some limit is
/// set); `NotFound` without such a user.
pub(super) async fn limits_set(
    db: &impl GenericClient,
    user: UserId,
    limits: UserLimits,
) -> Result<UserLimits> {
    let found = query_opt(
        db,
        "WITH target AS (SELECT id FROM users WHERE id = $1),
         cleared AS (
             DELETE FROM user_limits WHERE user_id IN (SELECT id FROM target) AND $7
         ), kept AS (
             INSERT INTO user_limits (user_id, submit_rate, submit_burst, max_active,
                                      slot_share, storage)
             SELECT id, $2, $3, $4, $5, $6 FROM target WHERE NOT $7
             ON CONFLICT (user_id) DO UPDATE SET submit_rate = $2, submit_burst = $3,
                 max_active = $4, slot_share = $5, storage = $6
         )
         SELECT id FROM target",
        &[
            &user.0,
            &limits.submit_rate,
            &limits.submit_burst.map(i64::from),
            &limits.max_active.map(clamp_i64),
            &limits.slot_share,
            &limits.storage.map(clamp_i64),
            &limits.is_default(),
        ],
    )
    .await?;
    found.ok_or(StoreError::NotFound)?;
    Ok(limits)
}

/// The user linked to an external identity.
pub(super) async fn by_identity(
    db: &impl GenericClient,
    identity: &ExternalIdentity,
) -> Result<Option<User>> {
    let found = query_opt(
        db,
        concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = (SELECT user_id FROM user_identities
                                     WHERE issuer = $1 AND subject = $2)"
        ),
        &[&identity.issuer, &identity.subject],
    )
    .await?;
    found.map(|r| row::user(&r, 0)).transpose()
}

/// A user and their password hash, by name.
pub(super) async fn by_name(db: &impl GenericClient, username: &str) -> Result<Option<UserRecord>> {
    let found = query_opt(
        db,
        concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE username = $1"
        ),
        &[&username],
    )
    .await?;
    found
        .map(|r| {
            Ok(UserRecord {
                user: row::user(&r, 0)?,
                password_hash: row::get(&r, 5)?,
            })
        })
        .transpose()
}

/// A user by id.
pub(super) async fn get(db: &impl GenericClient, id: UserId) -> Result<User> {
    let found = query_opt(
        db,
        concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
        &[&id.0],
    )
    .await?;
    row::user(&found.ok_or(StoreError::NotFound)?, 0)
}

/// Every user, by id.
pub(super) async fn list(db: &impl GenericClient) -> Result<Vec<User>> {
    let rows = query(
        db,
        concat!("SELECT ", user_columns!(), " FROM users ORDER BY id"),
        &[],
    )
    .await?;
    rows.iter().map(|r| row::user(r, 0)).collect()
}

/// Applies the fields of `patch` that are set.
pub(super) async fn update(db: &impl GenericClient, id: UserId, patch: UserPatch) -> Result<User> {
    // One statement: the user and, for a new password, role or disabling, their tokens.
    let found = query_opt(
        db,
        concat!(
            "WITH revoked AS (DELETE FROM tokens WHERE user_id = $1 AND $5)
             UPDATE users SET role = coalesce($2, role),
                 password_hash = coalesce($3, password_hash),
                 disabled = coalesce($4, disabled)
             WHERE id = $1 RETURNING ",
            user_columns!()
        ),
        &[
            &id.0,
            &patch.role.map(|r| r.as_str()),
            &patch.password_hash,
            &patch.disabled,
            &patch.revokes_tokens(),
        ],
    )
    .await?;
    row::user(&found.ok_or(StoreError::NotFound)?, 0)
}

/// How many users exist.
pub(super) async fn count(db: &impl GenericClient) -> Result<u64> {
    let r = row::query_one(db, "SELECT count(*) FROM users", &[]).await?;
    Ok(u64::try_from(row::get::<i64>(&r, 0)?).unwrap_or(0))
}

/// The token columns [`token`] reads.
macro_rules! token_columns {
    () => {
        "t.id, t.user_id, t.kind, t.name, t.created_at, t.expires_at"
    };
}

fn token(r: &Row, at: usize) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: row::get(r, at)?,
        user: UserId(row::get(r, at + 1)?),
        kind: row::parsed(r, at + 2)?,
        name: row::get(r, at + 3)?,
        created_at: row::get(r, at + 4)?,
        expires_at: row::get(r, at + 5)?,
    })
}

/// Stores a token's hash; `Conflict` if that hash is already stored.
pub(super) async fn token_insert(
    db: &impl GenericClient,
    token: NewToken,
    now: Timestamp,
) -> Result<TokenInfo> {
    let now = ts(now);
    let expires_at = token.expires_at.map(ts);
    let found = row::query_one(
        db,
        "INSERT INTO tokens (user_id, hash, kind, name, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        &[
            &token.user.0,
            &token.hash,
            &token.kind.as_str(),
            &token.name,
            &now,
            &expires_at,
        ],
    )
    .await?;
    Ok(token.stored(row::get(&found, 0)?, now))
}

/// The live token with this hash and its enabled user.
pub(super) async fn token_lookup(
    db: &impl GenericClient,
    hash: &[u8],
    now: Timestamp,
) -> Result<Option<(User, TokenInfo)>> {
    let found = query_opt(
        db,
        concat!(
            "SELECT ",
            token_columns!(),
            ", u.id, u.username, u.role, u.disabled, u.created_at
             FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)
               AND NOT u.disabled"
        ),
        &[&hash, &ts(now)],
    )
    .await?;
    found
        .map(|r| Ok((row::user(&r, 6)?, token(&r, 0)?)))
        .transpose()
}

/// The user's tokens of `kind`, newest first.
pub(super) async fn token_list(
    db: &impl GenericClient,
    user: UserId,
    kind: TokenKind,
) -> Result<Vec<TokenInfo>> {
    let rows = query(
        db,
        concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens t WHERE t.user_id = $1 AND t.kind = $2
             ORDER BY t.created_at DESC, t.id DESC"
        ),
        &[&user.0, &kind.as_str()],
    )
    .await?;
    rows.iter().map(|r| token(r, 0)).collect()
}

/// Deletes one of the user's tokens; `NotFound` if it is not theirs.
pub(super) async fn token_delete(db: &impl GenericClient, user: UserId, id: i64) -> Result<()> {
    let n = row::execute(
        db,
        "DELETE FROM tokens WHERE id = $1 AND user_id = $2",
        &[&id, &user.0],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Deletes the tokens expired at `now`.
pub(super) async fn token_prune(db: &impl GenericClient, now: Timestamp) -> Result<u64> {
    row::execute(db, "DELETE FROM tokens WHERE expires_at <= $1", &[&now]).await
}

/// Deletes the token with this hash, if any; whose it was.
pub(super) async fn token_delete_hash(
    db: &impl GenericClient,
    hash: &[u8],
) -> Result<Option<UserId>> {
    let found = query_opt(
        db,
        "DELETE FROM tokens WHERE hash = $1 RETURNING user_id",
        &[&hash],
    )
    .await?;
    found.map(|r| row::get(&r, 0).map(UserId)).transpose()
}
