//! A local OpenID Connect issuer for trying and measuring Kiln's OIDC sign-in without an
//! identity provider: discovery and a JWKS on loopback, an RSA key made at start, and
//! signed access tokens printed on standard output.
//!
//! ```sh
//! cargo run --release -p kiln-server --example oidc-issuer -- 127.0.0.1:9400 api://kiln-bench
//! ```
//!
//! prints the issuer (for `KILN_OIDC_ISSUER`) on its first line and one token per line for
//! `alice`, `bob`, … on the following lines (valid for an hour, `roles: ["Kiln.Operator"]`
//! for the first), then serves until stopped.

#![allow(clippy::unwrap_used, clippy::exit)] // a tool: fail loudly

use axum::Json;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9400".to_owned());
    let audience = args.next().unwrap_or_else(|| "api://kiln-bench".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let issuer = format!("http://{}/issuer", listener.local_addr().unwrap());

    let der = {
        use rsa::Generate;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        rsa::PrivateKey::generate()
            .to_pkcs1_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let key = EncodingKey::from_rsa_der(&der);
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("bench-1".to_owned());
    let keys = JwkSet { keys: vec![jwk] };

    println!("{issuer}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (i, name) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("bench-1".to_owned());
        let roles = if i == 0 {
            json!(["Kiln.Operator"])
        } else {
            json!([])
        };
        let claims = json!({
            "iss": issuer, "aud": audience, "sub": format!("sub-{name}"), "oid": format!("oid-{name}"),
            "preferred_username": format!("{name}@example.com"), "roles": roles,
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        println!("{}", jsonwebtoken::encode(&header, &claims, &key).unwrap());
    }

    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")});
    let app = axum::Router::new()
        .route(
            "/issuer/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/issuer/keys", get(move || async move { Json(keys) }));
    axum::serve(listener, app).await.unwrap();
}
