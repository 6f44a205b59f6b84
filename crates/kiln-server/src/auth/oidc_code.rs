//! The dashboard's sign-in through the OpenID Connect provider: the authorization-code
//! flow with PKCE (RFC 7636, `S256`).
//!
//! Leaving for the provider, the server makes a [`Pending`] sign-in: a random `state`
//! (ties the answer to this browser), `nonce` (ties the ID token to this sign-in) and PKCE
//! verifier (only this server can redeem the code), kept in a short-lived HttpOnly cookie
//! (nothing stored server-side). Coming back, the code is redeemed at the provider's token
//! endpoint with the verifier (and the client secret, for a confidential client), and the
//! ID token is verified like a bearer token (signature by the issuer's published keys,
//! issuer, expiry) but for the dashboard's client id and with the sign-in's nonce.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use kiln_domain::Timestamp;
use rand::RngCore;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::oidc::{Oidc, OidcError, Verified, check_url, invalid};

/// The provider's endpoints of the flow, from its discovery document.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser is sent to sign in.
    pub authorization: String,
    /// Where a code is redeemed.
    pub token: String,
}

/// A sign-in on its way to the provider and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Echoed by the provider with the code.
    pub state: String,
    /// Must come back inside the ID token.
    pub nonce: String,
    /// The PKCE code verifier (43+ characters of `[0-9a-f]`).
    pub verifier: String,
    /// The callback URL the code was issued for (sent again when redeeming it).
    pub redirect_uri: String,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Pending {
    /// A new sign-in whose code comes back to `redirect_uri`.
    pub fn new(redirect_uri: String) -> Self {
        Self {
            state: random_hex(),
            nonce: random_hex(),
            verifier: random_hex(),
            redirect_uri,
        }
    }

    /// The PKCE `S256` challenge of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    /// The cookie value that keeps it (no secret of the server's: the verifier is only
    /// useful with a code the provider gives this browser).
    pub fn encode(&self) -> String {
        let uri = URL_SAFE_NO_PAD.encode(self.redirect_uri.as_bytes());
        format!("{}.{}.{}.{uri}", self.state, self.nonce, self.verifier)
    }

    /// The sign-in a cookie value keeps; `None` if it is not one.
    pub fn decode(value: &str) -> Option<Self> {
        let mut parts = value.split('.');
        let (state, nonce, verifier, uri) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !hex64(state) || !hex64(nonce) || !hex64(verifier) {
            return None;
        }
        let redirect_uri = String::from_utf8(URL_SAFE_NO_PAD.decode(uri).ok()?).ok()?;
        Some(Self {
            state: state.to_owned(),
            nonce: nonce.to_owned(),
            verifier: verifier.to_owned(),
            redirect_uri,
        })
    }
}

/// Largest token endpoint answer read.
const TOKEN_MAX: usize = 256 * 1024;

impl Oidc {
    /// The provider's endpoints (read from discovery once).
    pub async fn endpoints(&self) -> Result<&Endpoints, OidcError> {
        #[derive(Deserialize)]
        struct Discovery {
            authorization_endpoint: String,
            token_endpoint: String,
        }
        self.endpoints
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config().issuer.trim_end_matches('/')
                );
                let body = self.get(&url).await.map_err(OidcError::Unavailable)?;
                let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
                    OidcError::Unavailable(format!("{url}: no sign-in endpoints: {e}"))
                })?;
                for endpoint in [&d.authorization_endpoint, &d.token_endpoint] {
                    check_url(endpoint).map_err(OidcError::Unavailable)?;
                }
                Ok(Endpoints {
                    authorization: d.authorization_endpoint,
                    token: d.token_endpoint,
                })
            })
            .await
    }

    /// The URL that sends the browser to the provider for `pending`.
    pub async fn authorize_url(&self, pending: &Pending) -> Result<String, OidcError> {
        let client_id = self.client_id()?;
        let endpoints = self.endpoints().await?;
        let query = serde_urlencoded::to_string([
            ("client_id", client_id),
            ("response_type", "code"),
            ("redirect_uri", &pending.redirect_uri),
            ("response_mode", "query"),
            ("scope", "openid profile email"),
            ("state", &pending.state),
            ("nonce", &pending.nonce),
            ("code_challenge", &pending.challenge()),
            ("code_challenge_method", "S256"),
        ])
        .map_err(|e| invalid(format!("cannot write the sign-in request: {e}")))?;
        let sep = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{query}", endpoints.authorization))
    }

    /// Redeems `code` for `pending` and returns the person its ID token names.
    pub async fn redeem(
        &self,
        pending: &Pending,
        code: &str,
        now: Timestamp,
    ) -> Result<Verified, OidcError> {
        let client_id = self.client_id()?;
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("client_id", client_id),
            ("code_verifier", &pending.verifier),
        ];
        if let Some(secret) = &self.config().client_secret {
            form.push(("client_secret", secret));
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| invalid(format!("cannot write the token request: {e}")))?;
        let answer = self.post_form(&endpoints.token, body).await?;
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the provider's answer has no ID token"))?;
        let claims = self.decode(id_token, client_id, now).await?;
        if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
            return Err(invalid("the ID token is not for this sign-in (nonce)"));
        }
        self.accept(claims, now)
    }

    fn client_id(&self) -> Result<&str, OidcError> {
        self.config()
            .client_id
            .as_deref()
            .ok_or_else(|| invalid("signing in through the provider is not configured"))
    }

    /// POSTs a form to the token endpoint: its JSON answer, or why it refused.
    async fn post_form(&self, url: &str, body: String) -> Result<Value, OidcError> {
        let uri = check_url(url).map_err(OidcError::Unavailable)?;
        let req = axum::http::Request::post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| invalid(e.to_string()))?;
        let exchange = async {
            let answer = self
                .http
                .request(req)
                .await
                .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))?;
            let status = answer.status();
            let bytes = Limited::new(answer.into_body(), TOKEN_MAX)
                .collect()
                .await
                .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))?
                .to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                Ok(json)
            } else if status.is_client_error() {
                // The provider refused the code (used, expired, wrong verifier): the
                // person signs in again.
                let why = json["error_description"]
                    .as_str()
                    .or(json["error"].as_str());
                Err(invalid(format!(
                    "the provider refused the sign-in: {}",
                    why.unwrap_or("no reason given")
                )))
            } else {
                Err(OidcError::Unavailable(format!("{url} answered {status}")))
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .map_err(|_| OidcError::Unavailable(format!("{url} did not answer within 10 s")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_sign_in_survives_its_cookie_and_nothing_else_passes_for_one() {
        let p = Pending::new("https://kiln.example/login/microsoft/callback".to_owned());
        assert_eq!(Pending::decode(&p.encode()), Some(p.clone()));
        assert_ne!(p.state, p.nonce);
        assert_eq!(p.challenge().len(), 43);
        for bad in [
            "",
            "a.b.c.d",
            &format!("{}.x", p.encode()),
            &p.encode()[1..],
        ] {
            assert_eq!(Pending::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        let p = Pending {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned(),
            ..Pending::new(String::new())
        };
        assert_eq!(p.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
