//! Users and their tokens.
//!
//! Tokens are stored as the SHA-256 of the secret, never the secret; a lookup finds a token
//! only while it has not expired and its user is enabled.

use kiln_domain::{Timestamp, User, UserId};
use rusqlite::{Connection, OptionalExtension, Row};

use super::row::{self, ms, opt_ms, user_columns};
use super::writer::Tx;
use crate::error::{Result, StoreError};
use crate::model::{
    ExternalIdentity, NewToken, NewUser, TokenInfo, TokenKind, UserLimits, UserPatch, UserRecord,
};

/// Creates a user; `Conflict` if the name is taken.
pub(super) fn insert(tx: &Tx<'_>, user: NewUser, now: Timestamp) -> Result<User> {
    let id: i64 = tx
        .db
        .prepare_cached(
            "INSERT INTO users (username, password_hash, role, disabled, created_at)
             VALUES (?1, ?2, ?3, 0, ?4) RETURNING id",
        )?
        .query_row(
            (
                &user.username,
                &user.password_hash,
                user.role.as_str(),
                ms(now),
            ),
            |r| r.get(0),
        )
        .map_err(|e| StoreError::from(e).conflict_as("username already taken"))?;
    Ok(user.stored(UserId(id), now))
}

/// Creates a user and links `identity` to them; `Conflict` if the name is taken or the
/// identity already linked (the caller's transaction then stores neither).
pub(super) fn insert_linked(
    tx: &Tx<'_>,
    user: NewUser,
    identity: &ExternalIdentity,
    now: Timestamp,
) -> Result<User> {
    let user = insert(tx, user, now)?;
    tx.db
        .prepare_cached(
            "INSERT INTO user_identities (issuer, subject, user_id, created_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute((&identity.issuer, &identity.subject, user.id.0, ms(now)))
        .map_err(|e| StoreError::from(e).conflict_as("identity already linked"))?;
    Ok(user)
}

/// The limits set for `user`; `NotFound` without such a user.
pub(super) fn limits(db: &Connection, user: UserId) -> Result<UserLimits> {
    get(db, user)?;
    let limits = db
        .prepare_cached(
            "SELECT submit_rate, submit_burst, max_active, slot_share, storage
             FROM user_limits WHERE user_id = ?1",
        )?
        .query_row([user.0], |r| {
            let unsigned = |at| {
                Ok::<_, rusqlite::Error>(r.get::<_, Option<i64>>(at)?.map(|n| n.max(0) as u64))
            };
            Ok(UserLimits {
                submit_rate: r.get(0)?,
                submit_burst: r.get(1)?,
                max_active: unsigned(2)?,
                slot_share: r.get(3)?,
                storage: unsigned(4)?,
            })
        })
        .optional()?;
    Ok(limits.unwrap_or_default())
}

/// Replaces the limits set for `user` (a row only while some limit is set).
pub(super) fn limits_set(tx: &Tx<'_>, user: UserId, limits: UserLimits) -> Result<UserLimits> {
    get(tx.db, user)?;
    if limits.is_default() {
        tx.db
            .prepare_cached("DELETE FROM user_limits WHERE user_id = ?1")?
            .execute([user.0])?;
        return Ok(limits);
    }
    tx.db
        .prepare_cached(
            "INSERT INTO user_limits (user_id, submit_rate, submit_burst, max_active,
                                      slot_share, storage)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (user_id) DO UPDATE SET submit_rate = ?2, submit_burst = ?3,
                 max_active = ?4, slot_share = ?5, storage = ?6",
        )?
        .execute((
            user.0,
            &limits.submit_rate,
            limits.submit_burst,
            limits.max_active.map(crate::model::clamp_i64),
            limits.slot_share,
            limits.storage.map(crate::model::clamp_i64),
        ))?;
    Ok(limits)
}

/// The user linked to an external identity.
pub(super) fn by_identity(db: &Connection, identity: &ExternalIdentity) -> Result<Option<User>> {
    let user = db
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = (SELECT user_id FROM user_identities
                                     WHERE issuer = ?1 AND subject = ?2)"
        ))?
        .query_row((&identity.issuer, &identity.subject), |r| row::user(r, 0))
        .optional()?;
    Ok(user)
}

/// A user and their password hash, by name.
pub(super) fn by_name(db: &Connection, username: &str) -> Result<Option<UserRecord>> {
    let record = db
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE username = ?1"
        ))?
        .query_row([username], |r| {
            Ok(UserRecord {
                user: row::user(r, 0)?,
                password_hash: r.get(5)?,
            })
        })
        .optional()?;
    Ok(record)
}

/// A user by id.
pub(super) fn get(db: &Connection, id: UserId) -> Result<User> {
    db.prepare_cached(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = ?1"
    ))?
    .query_row([id.0], |r| row::user(r, 0))
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// Every user, by id.
pub(super) fn list(db: &Connection) -> Result<Vec<User>> {
    let users = db
        .prepare_cached(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY id"
        ))?
        .query_map([], |r| row::user(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(users)
}

/// Applies the fields of `patch` that are set; a new password, role or disabling also
/// deletes the user's tokens.
pub(super) fn update(tx: &Tx<'_>, id: UserId, patch: UserPatch) -> Result<User> {
    if patch.revokes_tokens() {
        tx.db
            .prepare_cached("DELETE FROM tokens WHERE user_id = ?1")?
            .execute([id.0])?;
    }
    tx.db
        .prepare_cached(concat!(
            "UPDATE users SET role = coalesce(?2, role),
                 password_hash = coalesce(?3, password_hash),
                 disabled = coalesce(?4, disabled)
             WHERE id = ?1 RETURNING ",
            user_columns!()
        ))?
        .query_row(
            (
                id.0,
                patch.role.map(|r| r.as_str()),
                patch.password_hash,
                patch.disabled,
            ),
            |r| row::user(r, 0),
        )
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// How many users exist.
pub(super) fn count(db: &Connection) -> Result<u64> {
    let n: i64 = db
        .prepare_cached("SELECT count(*) FROM users")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The token columns [`token`] reads.
macro_rules! token_columns {
    () => {
        "t.id, t.user_id, t.kind, t.name, t.created_at, t.expires_at"
    };
}

fn token(r: &Row<'_>, at: usize) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(at)?,
        user: UserId(r.get(at + 1)?),
        kind: row::parsed(r, at + 2)?,
        name: r.get(at + 3)?,
        created_at: row::time(r, at + 4)?,
        expires_at: row::opt_time(r, at + 5)?,
    })
}

/// Stores a token's hash; `Conflict` if that hash is already stored.
pub(super) fn token_insert(tx: &Tx<'_>, token: NewToken, now: Timestamp) -> Result<TokenInfo> {
    let id: i64 = tx
        .db
        .prepare_cached(
            "INSERT INTO tokens (user_id, hash, kind, name, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        )?
        .query_row(
            (
                token.user.0,
                &token.hash,
                token.kind.as_str(),
                &token.name,
                ms(now),
                opt_ms(token.expires_at),
            ),
            |r| r.get(0),
        )?;
    Ok(token.stored(id, now))
}

/// The live token with this hash and its enabled user.
pub(super) fn token_lookup(
    db: &Connection,
    hash: &[u8],
    now: Timestamp,
) -> Result<Option<(User, TokenInfo)>> {
    let found = db
        .prepare_cached(concat!(
            "SELECT ",
            token_columns!(),
            ", u.id, u.username, u.role, u.disabled, u.created_at
             FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = ?1 AND (t.expires_at IS NULL OR t.expires_at > ?2)
               AND u.disabled = 0"
        ))?
        .query_row((hash, ms(now)), |r| Ok((row::user(r, 6)?, token(r, 0)?)))
        .optional()?;
    Ok(found)
}

/// The user's tokens of `kind`, newest first.
pub(super) fn token_list(db: &Connection, user: UserId, kind: TokenKind) -> Result<Vec<TokenInfo>> {
    let tokens = db
        .prepare_cached(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tokens t WHERE t.user_id = ?1 AND t.kind = ?2
             ORDER BY t.created_at DESC, t.id DESC"
        ))?
        .query_map((user.0, kind.as_str()), |r| token(r, 0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tokens)
}

/// Deletes one of the user's tokens; `NotFound` if it is not theirs.
pub(super) fn token_delete(tx: &Tx<'_>, user: UserId, id: i64) -> Result<()> {
    let n = tx
        .db
        .prepare_cached("DELETE FROM tokens WHERE id = ?1 AND user_id = ?2")?
        .execute((id, user.0))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Deletes the tokens expired at `now`.
pub(super) fn token_prune(tx: &Tx<'_>, now: Timestamp) -> Result<u64> {
    let n = tx
        .db
        .prepare_cached("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?1")?
        .execute([ms(now)])?;
    Ok(n as u64)
}

/// Deletes the token with this hash, if any; whose it was.
pub(super) fn token_delete_hash(tx: &Tx<'_>, hash: &[u8]) -> Result<Option<UserId>> {
    let user = tx
        .db
        .prepare_cached("DELETE FROM tokens WHERE hash = ?1 RETURNING user_id")?
        .query_row([hash], |r| r.get(0))
        .optional()?;
    Ok(user.map(UserId))
}
