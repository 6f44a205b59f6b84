//! Users and their roles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Invalid, Timestamp};

/// A user's numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a user may do. Ordered: every role may do what the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits and reads their own jobs.
    Client,
    /// A client who may also see queues and metrics and submit `command` jobs.
    Operator,
    /// An operator who may also manage users.
    Admin,
}

impl Role {
    /// The lowercase name, as in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Role::Client),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(Invalid::new(
                "role",
                format!("unknown role `{s}` (expected client, operator or admin)"),
            )),
        }
    }
}

/// A user as the rest of Kiln sees it (never with the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Assigned by the store when the user is created.
    pub id: UserId,
    /// Unique login name.
    pub username: String,
    /// What the user may do (see [`Role`]).
    pub role: Role,
    /// A disabled user cannot log in and their tokens stop working.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: Timestamp,
}

/// Checks a username: 1–64 characters of `[A-Za-z0-9._@-]`.
pub fn parse_username(name: &str) -> Result<&str, Invalid> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(Invalid::new(
            "username",
            "must be 1-64 characters of letters, digits, '.', '_', '@' or '-'",
        ));
    }
    Ok(name)
}

/// Checks a new password: at least 8 characters, at most 1024 bytes.
pub fn check_password(password: &str) -> Result<(), Invalid> {
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(Invalid::new(
            "password",
            "must be at least 8 characters (and at most 1024 bytes)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Client);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn usernames_are_restricted() {
        assert!(parse_username("alice.b@example-1").is_ok());
        assert!(parse_username("").is_err());
        assert!(parse_username("a b").is_err());
        assert!(parse_username(&"x".repeat(65)).is_err());
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
    }
}
