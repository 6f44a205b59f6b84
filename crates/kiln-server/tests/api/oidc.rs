//! OpenID Connect bearer tokens against a local issuer: discovery and JWKS served on
//! loopback, keys made here (RSA and P-256), tokens signed here.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use chrono::TimeDelta;
use hyper::{Method, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln_domain::{Clock, ManualClock};
use kiln_server::ServerConfig;
use kiln_server::auth::oidc::{Oidc, OidcConfig};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const AUDIENCE: &str = "api://kiln-test";

/// A signing key of the test issuer.
#[derive(Clone)]
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
}

impl Key {
    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }
}

/// An RSA key (made once per test binary: RSA key generation is slow) under `kid`.
fn rsa_key(kid: &str) -> Key {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    let der = DER.get_or_init(|| {
        use rsa::Generate;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::PrivateKey::generate();
        key.to_pkcs1_der().unwrap().as_bytes().to_vec()
    });
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der),
    }
}

/// A fresh P-256 key under `kid`.
fn ec_key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
    }
}

#[derive(Default)]
struct Published {
    keys: Vec<Jwk>,
    /// Key-set requests served.
    fetches: usize,
}

/// The issuer: `/.well-known/openid-configuration` and `/keys` on a loopback port.
struct Issuer {
    url: String,
    published: Arc<Mutex<Published>>,
}

impl Issuer {
    async fn start(keys: &[&Key]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/tenant/v2.0", listener.local_addr().unwrap());
        let published = Arc::new(Mutex::new(Published::default()));
        let issuer = Self { url, published };
        issuer.publish(keys);
        let discovery = json!({
            "issuer": issuer.url,
            "jwks_uri": format!("{}/keys", issuer.url),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let app = axum::Router::new()
            .route(
                "/tenant/v2.0/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .route(
                "/tenant/v2.0/keys",
                get(|State(p): State<Arc<Mutex<Published>>>| async move {
                    let mut p = p.lock().unwrap();
                    p.fetches += 1;
                    Json(JwkSet {
                        keys: p.keys.clone(),
                    })
                }),
            )
            .with_state(Arc::clone(&issuer.published));
        tokio::spawn(async move { axum::serve(listener, app).await });
        issuer
    }

    /// Replaces the published keys (a rotation).
    fn publish(&self, keys: &[&Key]) {
        self.published.lock().unwrap().keys = keys.iter().map(|k| k.jwk()).collect();
    }

    fn fetches(&self) -> usize {
        self.published.lock().unwrap().fetches
    }

    /// Claims of a valid token for `oid` at `now`.
    fn claims(&self, oid: &str, name: &str, now: i64) -> Value {
        json!({
            "iss": self.url, "aud": AUDIENCE, "sub": format!("pairwise-{oid}"), "oid": oid,
            "preferred_username": name, "iat": now, "nbf": now - 10, "exp": now + 3600,
        })
    }
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// A server trusting `issuer`, on a manual clock.
async fn app(issuer: &Issuer, roles_claim: Option<&str>) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let oidc = OidcConfig::new(&issuer.url, AUDIENCE, roles_claim).unwrap();
    let config = ServerConfig {
        oidc: Some(Arc::new(Oidc::new(oidc))),
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with_clock(config, Arc::clone(&clock) as Arc<dyn Clock>).await;
    (app, clock)
}

fn assert_refused(resp: &kiln_testkit::TestResponse, detail: &str) {
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["status"], 401);
    let said = body["detail"].as_str().unwrap();
    assert!(said.contains(detail), "{said:?} should say {detail:?}");
}

#[tokio::test]
async fn tokens_from_the_issuer_sign_in_and_every_bad_one_is_refused() {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let issuer = Issuer::start(&[&rsa, &ec]).await;
    let (app, clock) = app(&issuer, None).await;
    let now = clock.now().timestamp();
    let claims = issuer.claims("oid-ada", "ada@example.com", now);

    // A valid RS256 token: the person becomes a client named after their username.
    let token = sign(&rsa, &claims);
    let me = app.get(&token, "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let me = me.json();
    assert_eq!(me["username"], "ada@example.com");
    assert_eq!(me["role"], "client");
    // ES256 for the same person: the same user. Jobs work with either token.
    let es = sign(&ec, &claims);
    let again = app.get(&es, "/api/v1/me").await.json();
    assert_eq!(again["id"], me["id"]);
    let id = app
        .submit_ok(&es, json!({"type": "echo", "payload": {}}))
        .await;
    let job = app.get(&token, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job.status, StatusCode::OK);
    // Kiln's own tokens still work beside them.
    assert_eq!(
        app.get(&app.admin, "/api/v1/me").await.json()["username"],
        "admin"
    );
    // Such a user has no password to log in with.
    let login = app
        .client
        .send_json(
            Method::POST,
            None,
            "/api/v1/auth/login",
            &json!({"username": "ada@example.com", "password": kiln_server::auth::sign_in::NO_PASSWORD}),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);

    let with = |change: Value| {
        let mut c = claims.clone();
        c.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        c
    };
    let cases = [
        (sign(&rsa, &with(json!({"exp": now - 120}))), "expired"),
        (sign(&ec, &with(json!({"nbf": now + 300}))), "not valid yet"),
        (sign(&rsa, &with(json!({"aud": "api://other"}))), "audience"),
        (
            sign(&rsa, &with(json!({"iss": "https://evil.example/v2.0"}))),
            "issuer",
        ),
        (sign(&rsa, &with(json!({"exp": null}))), "exp"),
        (
            sign(&rsa, &with(json!({"oid": null, "sub": null}))),
            "names nobody",
        ),
        (
            sign(&rsa_key("rsa-unknown"), &claims),
            "not one of the issuer's",
        ),
    ];
    for (token, why) in &cases {
        assert_refused(&app.get(token, "/api/v1/me").await, why);
    }

    // `alg: none`, HS256 with a key id the issuer publishes, an RS256 header on the EC key,
    // a forged signature.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(&claims)
    );
    assert_refused(&app.get(&none, "/api/v1/me").await, "not a valid JWT");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".to_owned());
    let hs =
        jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(b"guess").unwrap()).unwrap();
    assert_refused(&app.get(&hs, "/api/v1/me").await, "not accepted");
    let mut swapped = ec.clone();
    swapped.kid = "rsa-1".to_owned();
    assert_refused(
        &app.get(&sign(&swapped, &claims), "/api/v1/me").await,
        "not one of",
    );
    let tampered = format!(
        "{}.{}.{}",
        token.split('.').next().unwrap(),
        b64(&with(json!({"oid": "oid-mallory"}))),
        token.rsplit_once('.').unwrap().1
    );
    assert_refused(&app.get(&tampered, "/api/v1/me").await, "signature");
    assert!(
        app.store()
            .user_by_name("ada@example.com")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        app.store().user_count().await.unwrap(),
        2,
        "admin and ada only"
    );
}

#[tokio::test]
async fn an_unknown_key_refetches_the_keys_at_most_once_a_minute() {
    let (old, new) = (rsa_key("2026-old"), ec_key("2026-new"));
    let issuer = Issuer::start(&[&old]).await;
    let (app, clock) = app(&issuer, None).await;
    let now = clock.now().timestamp();
    let claims = issuer.claims("oid-1", "grace", now);
    let old_token = sign(&old, &claims);
    assert_eq!(
        app.get(&old_token, "/api/v1/me").await.status,
        StatusCode::OK
    );
    assert_eq!(issuer.fetches(), 1);

    // The issuer rotates to a new key: a token signed with it is unknown until the next
    // fetch, which waits for a minute after the last one.
    issuer.publish(&[&new]);
    let new_token = sign(&new, &claims);
    assert_refused(&app.get(&new_token, "/api/v1/me").await, "not one of");
    assert_eq!(issuer.fetches(), 1, "no fetch within the minute");
    clock.advance(TimeDelta::seconds(61));
    let me = app.get(&new_token, "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(issuer.fetches(), 2);
    // A flood of made-up key ids right after costs nothing more.
    for i in 0..5 {
        let made_up = sign(&ec_key(&format!("made-up-{i}")), &claims);
        assert_refused(&app.get(&made_up, "/api/v1/me").await, "not one of");
    }
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test]
async fn the_roles_claim_sets_the_role_and_names_never_select_a_user() {
    let key = rsa_key("k");
    let issuer = Issuer::start(&[&key]).await;
    let (app, clock) = app(&issuer, Some("roles")).await;
    let now = clock.now().timestamp();

    // Somebody whose provider calls them `admin` is not the local admin.
    let mut claims = issuer.claims("oid-op", "admin", now);
    claims["roles"] = json!(["Kiln.Operator", "Other.Role"]);
    let operator = sign(&key, &claims);
    let me = app.get(&operator, "/api/v1/me").await.json();
    assert_ne!(me["username"], "admin");
    assert!(me["username"].as_str().unwrap().starts_with("admin-"));
    assert_eq!(me["role"], "operator");
    assert_eq!(
        app.get(&operator, "/api/v1/admin/jobs").await.status,
        StatusCode::OK
    );

    // The provider takes the role away: the next token (a new one) is a client's.
    claims["roles"] = json!([]);
    claims["iat"] = json!(now + 1);
    let client = sign(&key, &claims);
    let me = app.get(&client, "/api/v1/me").await.json();
    assert_eq!(me["role"], "client");
    assert_eq!(
        app.get(&client, "/api/v1/admin/jobs").await.status,
        StatusCode::FORBIDDEN
    );

    // An admin disables the user: their provider's tokens stop working.
    let id = me["id"].as_i64().unwrap();
    let resp = app
        .send(
            Method::PATCH,
            &app.admin,
            &format!("/api/v1/admin/users/{id}"),
            &json!({"disabled": true}),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_refused(&app.get(&client, "/api/v1/me").await, "disabled");
}

#[tokio::test]
async fn an_unreachable_issuer_answers_503() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = Issuer {
        url: format!("http://127.0.0.1:{port}/tenant/v2.0"),
        published: Arc::default(),
    };
    let (app, clock) = app(&issuer, None).await;
    let token = sign(
        &rsa_key("k"),
        &issuer.claims("o", "n", clock.now().timestamp()),
    );
    let resp = app.get(&token, "/api/v1/me").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.text()
    );
    assert_eq!(resp.json()["code"], "identity_provider_unavailable");
    assert!(resp.header("retry-after").is_some());
}
