//! OpenID Connect bearer tokens (Microsoft Entra ID or any other provider) beside Kiln's own
//! tokens.
//!
//! A request may carry a JWT issued by the configured provider instead of a `kiln_…` token.
//! [`Oidc::verify`] checks it: RS256 or ES256 only (so `alg: none` and HS256 are refused, and
//! so is the RSA-public-key-as-HMAC-secret trick), a signing key from the provider's JWKS,
//! `iss` equal to the configured issuer, `aud` containing the configured audience, `exp` and
//! `nbf` judged by the server's clock with [`CLOCK_SKEW`] of tolerance. The keys are fetched
//! through discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`) on first use
//! and again when a token names a key id the cache does not hold, at most once per
//! [`REFRESH_EVERY`] (a flood of tokens with made-up key ids costs one fetch a minute).
//!
//! The person is the pair (issuer, subject) with Entra's `oid` as the subject when present
//! (stable across the tenant's applications), else `sub`; their first verified token creates
//! a Kiln user ([`crate::auth::token`] does that), named after `preferred_username`/`email`.
//! A name never selects an existing user: a token saying `preferred_username: admin` gets a
//! user of its own (`admin-3f9a…`), not the local admin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kiln_domain::{Role, Timestamp};
use kiln_store::ExternalIdentity;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::problem::ApiError;

/// Tolerance for `exp` and `nbf` between the provider's clock and ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The least time between two fetches of the provider's keys.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Time limit of one fetch from the provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or key set read (Entra's are a few KB).
const FETCH_MAX: usize = 1024 * 1024;
/// A JWT longer than this is refused before any parsing (Entra's are 1–3 KB; a group-heavy
/// token stays far below).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What `kiln serve` is told about the provider.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer identifier, exactly as tokens carry it in `iss` (Entra v2:
    /// `https://login.microsoftonline.com/{tenant-id}/v2.0`).
    pub issuer: String,
    /// The audience Kiln's tokens are issued for (`aud`; Entra: the application's client id
    /// or its Application ID URI).
    pub audience: String,
    /// The claim holding the person's roles (Entra app roles: `roles`); `None`: roles are
    /// managed in Kiln and a new user is a client.
    pub roles_claim: Option<String>,
    /// The dashboard's client id at the provider: the dashboard offers signing in through
    /// it (its ID tokens are for this audience).
    pub client_id: Option<String>,
    /// The client secret sent when redeeming a code, for a confidential client.
    pub client_secret: Option<String>,
}

impl OidcConfig {
    /// Checks the settings: an `https://` issuer (plain `http://` only on a loopback host,
    /// for a local provider) and a non-empty audience.
    pub fn new(issuer: &str, audience: &str, roles_claim: Option<&str>) -> Result<Self, String> {
        let issuer = issuer.trim();
        check_url(issuer).map_err(|e| format!("KILN_OIDC_ISSUER {e}"))?;
        let audience = audience.trim();
        if audience.is_empty() {
            return Err("KILN_OIDC_AUDIENCE must be set with KILN_OIDC_ISSUER".to_owned());
        }
        let roles_claim = roles_claim.map(str::trim).filter(|c| !c.is_empty());
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            roles_claim: roles_claim.map(str::to_owned),
            client_id: None,
            client_secret: None,
        })
    }

    /// These settings with the dashboard's client id (and secret).
    pub fn with_client(mut self, client_id: Option<String>, client_secret: Option<String>) -> Self {
        self.client_id = client_id;
        self.client_secret = client_secret;
        self
    }
}

/// `https://…`, or `http://` to a loopback host; a host is required.
pub(super) fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        _ => Err(format!(
            "`{url}` must be an https:// URL (http:// only to a loopback address)"
        )),
    }
}

/// Why a bearer JWT was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The token is not valid (401).
    #[error("{0}")]
    Invalid(String),
    /// The provider's keys could not be fetched (503: try again).
    #[error("the identity provider is unreachable: {0}")]
    Unavailable(String),
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Invalid(detail) => ApiError::unauthorized(detail),
            OidcError::Unavailable(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity_provider_unavailable",
                    "the identity provider's signing keys could not be fetched; try again",
                );
                e.retry_after = Some(REFRESH_EVERY.as_secs());
                e
            }
        }
    }
}

pub(super) fn invalid(detail: impl Into<String>) -> OidcError {
    OidcError::Invalid(detail.into())
}

/// A verified token: who it names and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The person (issuer, `oid` or `sub`).
    pub identity: ExternalIdentity,
    /// The name a new user gets (`preferred_username`, `email` or `upn`; may be empty).
    pub name: String,
    /// The role the roles claim gives (`None` without a configured claim).
    pub role: Option<Role>,
    /// `exp`.
    pub expires_at: Timestamp,
}

/// A signing key from the provider's JWKS.
struct Key {
    decoding: DecodingKey,
    /// The one algorithm this key verifies (from its type and curve, or its `alg`).
    alg: Algorithm,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (a provider with one key may omit it).
    anonymous: Vec<Arc<Key>>,
}

impl Keys {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match (self.anonymous.as_slice(), self.by_kid.len()) {
                ([only], 0) => Some(Arc::clone(only)),
                _ => None,
            },
        };
        key.filter(|k| k.alg == alg)
    }
}

/// The last fetch of the provider's keys.
#[derive(Default)]
struct Fetched {
    at: Option<Timestamp>,
    error: Option<String>,
}

/// The verifier: configuration, the provider's keys and an HTTP client to fetch them.
pub struct Oidc {
    config: OidcConfig,
    pub(super) http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The provider's sign-in endpoints, once discovered.
    pub(super) endpoints: tokio::sync::OnceCell<super::oidc_code::Endpoints>,
    keys: RwLock<Keys>,
    /// Held while fetching (one fetch at a time); when the last one ran and how it ended.
    fetched: tokio::sync::Mutex<Fetched>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// A verifier for `config`; nothing is fetched before the first token.
    pub fn new(config: OidcConfig) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        // A host without a CA bundle still reaches a loopback provider over http.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let connector = match tls {
            Ok(tls) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .build(),
            // ring supports the safe defaults; this arm is only a fallback that keeps
            // construction infallible.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build(),
        };
        Self {
            config,
            http: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::default(),
            fetched: tokio::sync::Mutex::default(),
            endpoints: tokio::sync::OnceCell::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Checks `token` at `now`; the exact reason when it is refused.
    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<Verified, OidcError> {
        let claims = self.decode(token, &self.config.audience, now).await?;
        self.accept(claims, now)
    }

    /// The claims of `token` once its signature, issuer and `audience` are checked (its
    /// times are checked by [`Oidc::accept`]).
    pub(super) async fn decode(
        &self,
        token: &str,
        audience: &str,
        now: Timestamp,
    ) -> Result<Map<String, Value>, OidcError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("the bearer token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("the bearer token is not a valid JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(format!(
                "the token's algorithm {:?} is not accepted (RS256 or ES256 only)",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref(), header.alg, now).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Times are judged below by the server's clock, the one everything else uses.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| invalid(refusal(&e)))?;
        Ok(data.claims)
    }

    /// Checks the times and reads the person from verified claims.
    pub(super) fn accept(
        &self,
        claims: Map<String, Value>,
        now: Timestamp,
    ) -> Result<Verified, OidcError> {
        let skew = CLOCK_SKEW.as_secs() as i64;
        let at = |name: &str| claims.get(name).and_then(Value::as_i64);
        let exp = at("exp").ok_or_else(|| invalid("the token's `exp` is not a number"))?;
        if now.timestamp() > exp.saturating_add(skew) {
            return Err(invalid("the token has expired"));
        }
        if let Some(nbf) = at("nbf")
            && now.timestamp() < nbf.saturating_sub(skew)
        {
            return Err(invalid("the token is not valid yet (`nbf`)"));
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let subject = text("oid")
            .or_else(|| text("sub"))
            .ok_or_else(|| invalid("the token names nobody (no `oid` or `sub`)"))?;
        let name = text("preferred_username")
            .or_else(|| text("email"))
            .or_else(|| text("upn"))
            .unwrap_or_default();
        let role = self
            .config
            .roles_claim
            .as_deref()
            .map(|claim| role_from(claims.get(claim)));
        Ok(Verified {
            identity: ExternalIdentity {
                issuer: self.config.issuer.clone(),
                subject: subject.to_owned(),
            },
            name: name.to_owned(),
            role,
            expires_at: chrono::DateTime::from_timestamp(exp, 0)
                .unwrap_or_else(kiln_domain::clock::far_future),
        })
    }

    /// The key for (`kid`, `alg`): from the cache, else after one fetch (at most one per
    /// [`REFRESH_EVERY`]).
    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        now: Timestamp,
    ) -> Result<Arc<Key>, OidcError> {
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        let recent = fetched
            .at
            .is_some_and(|at| now < kiln_domain::clock::later(at, REFRESH_EVERY) && now >= at);
        if !recent {
            fetched.at = Some(now);
            match self.fetch_keys().await {
                Ok(keys) => {
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
                    fetched.error = None;
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "could not fetch the identity provider's keys");
                    fetched.error = Some(e);
                }
            }
        }
        if let Some(key) = self.cached(kid, alg) {
            return Ok(key);
        }
        match &fetched.error {
            Some(e) => Err(OidcError::Unavailable(e.clone())),
            None => Err(invalid(match kid {
                Some(kid) => format!("the token's signing key `{kid}` is not one of the issuer's"),
                None => "the token names no signing key (`kid`)".to_owned(),
            })),
        }
    }

    fn cached(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .find(kid, alg)
    }

    /// Discovery, then the key set.
    async fn fetch_keys(&self) -> Result<Keys, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
        if discovery.issuer != self.config.issuer {
            return Err(format!(
                "{url} names the issuer `{}`, not `{}`",
                discovery.issuer, self.config.issuer
            ));
        }
        let set: JwkSet = serde_json::from_slice(&self.get(&discovery.jwks_uri).await?)
            .map_err(|e| format!("{}: not a JWK set: {e}", discovery.jwks_uri))?;
        let mut keys = Keys::default();
        for jwk in &set.keys {
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                // Other types and algorithms are never accepted: skip them.
                _ => continue,
            };
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Arc::new(Key { decoding, alg });
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.anonymous.push(key),
            }
        }
        Ok(keys)
    }

    /// GET `url` (https, or http to loopback): the body of a 200 answer.
    pub(super) async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri = check_url(url)?;
        let fetch = async {
            let answer = self
                .http
                .get(uri)
                .await
                .map_err(|e| format!("{url}: {}", crate::problem::error_chain(&e)))?;
            if answer.status() != StatusCode::OK {
                return Err(format!("{url} answered {}", answer.status()));
            }
            Limited::new(answer.into_body(), FETCH_MAX)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("{url}: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("{url} did not answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// The highest Kiln role the claim's values name: `Kiln.Admin`/`admin` → admin,
/// `Kiln.Operator`/`operator` → operator, anything else (or nothing) → client.
pub fn role_from(claim: Option<&Value>) -> Role {
    let values: Vec<&str> = match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => one.split([' ', ',']).collect(),
        _ => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|v| {
            let v = v.trim();
            let name = v
                .get(..5)
                .filter(|p| p.eq_ignore_ascii_case("kiln."))
                .map_or(v, |_| &v[5..]);
            name.to_ascii_lowercase().parse::<Role>().ok()
        })
        .max()
        .unwrap_or(Role::Client)
}

/// The reason a verification failed, for the 401's detail.
fn refusal(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidIssuer => "the token was issued by another issuer (`iss`)".to_owned(),
        ErrorKind::InvalidAudience => "the token is for another audience (`aud`)".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature is not valid".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        ErrorKind::InvalidAlgorithm => {
            "the token's algorithm does not match its signing key".to_owned()
        }
        other => format!("the bearer token is not valid: {other:?}"),
    }
}

/// The username for a person seen for the first time: their name reduced to the characters
/// usernames allow; with `suffix`, a short tag from the identity is appended (the name is
/// taken).
pub fn username_for(verified: &Verified, suffix: bool) -> String {
    let mut name: String = verified
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        name.push_str("user");
    }
    if suffix {
        use sha2::{Digest, Sha256};
        let id = &verified.identity;
        let tag = Sha256::digest(format!("{}\n{}", id.issuer, id.subject).as_bytes());
        name.truncate(55);
        name.push('-');
        name.push_str(&hex::encode(&tag[..4]));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_map_to_the_highest_kiln_role() {
        assert_eq!(role_from(None), Role::Client);
        assert_eq!(role_from(Some(&json!(["Other"]))), Role::Client);
        assert_eq!(role_from(Some(&json!(["Kiln.Operator"]))), Role::Operator);
        assert_eq!(
            role_from(Some(&json!(["Kiln.Operator", "kiln.admin", "x"]))),
            Role::Admin
        );
        assert_eq!(role_from(Some(&json!("operator"))), Role::Operator);
        assert_eq!(role_from(Some(&json!(7))), Role::Client);
    }

    #[test]
    fn issuers_must_be_https_unless_on_loopback() {
        assert!(OidcConfig::new("https://login.example/t/v2.0", "api://kiln", None).is_ok());
        assert!(OidcConfig::new("http://127.0.0.1:8080/issuer", "aud", None).is_ok());
        assert!(OidcConfig::new("http://[::1]:8080", "aud", None).is_ok());
        assert!(OidcConfig::new("http://localhost:1", "aud", None).is_ok());
        assert!(OidcConfig::new("http://login.example", "aud", None).is_err());
        assert!(OidcConfig::new("ftp://login.example", "aud", None).is_err());
        assert!(OidcConfig::new("https://login.example", " ", None).is_err());
        assert!(OidcConfig::new("not a url", "aud", None).is_err());
    }

    #[test]
    fn usernames_keep_safe_characters_and_a_tag_when_taken() {
        let verified = |name: &str| Verified {
            identity: ExternalIdentity {
                issuer: "https://i".to_owned(),
                subject: "s".to_owned(),
            },
            name: name.to_owned(),
            role: None,
            expires_at: chrono::DateTime::UNIX_EPOCH,
        };
        assert_eq!(
            username_for(&verified("ada@example.com"), false),
            "ada@example.com"
        );
        assert_eq!(
            username_for(&verified("Ada Lovelace"), false),
            "Ada_Lovelace"
        );
        assert_eq!(username_for(&verified(""), false), "user");
        let tagged = username_for(&verified(&"x".repeat(100)), true);
        assert_eq!(tagged.len(), 64);
        assert!(kiln_domain::user::parse_username(&tagged).is_ok());
        assert_ne!(tagged, username_for(&verified(&"x".repeat(100)), false));
    }
}
