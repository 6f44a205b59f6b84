//! Authentication: password hashing, bearer tokens and the [`CurrentUser`] extractor.
//!
//! - [`cookie`]: the dashboard's session cookie and its CSRF rules.
//! - [`oidc`]: OpenID Connect bearer JWTs (Entra ID) verified against the provider's keys.
//! - [`oidc_code`]: the dashboard's sign-in through that provider (authorization code + PKCE).
//! - [`password`]: argon2id hashing; slow on purpose, so only login and user management
//!   call it (inside `spawn_blocking`), never a per-request check.
//! - [`throttle`]: failed-login counters per username (429 after too many).
//! - [`token`]: opaque random bearer tokens, stored as SHA-256, with a short-lived cache so
//!   a request costs neither a hash storm nor a database read.

pub mod cookie;
pub mod oidc;
pub mod oidc_code;
pub mod password;
pub mod sign_in;
pub mod throttle;
pub mod token;

pub use token::{CurrentUser, Via};
