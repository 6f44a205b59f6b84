//! "Sign in with Microsoft" against a local OpenID Connect provider: discovery, keys, an
//! authorization endpoint that signs the person in at once and a token endpoint that
//! checks the code, the redirect URI, the client id and the PKCE verifier, as Entra does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln_testkit::browser::Width;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;
use crate::helpers::{Opts, TestApp};

const CLIENT_ID: &str = "kiln-dashboard";

/// A code the provider gave, waiting to be redeemed.
struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: String,
}

struct Provider {
    issuer: String,
    key: EncodingKey,
    /// The claims of whoever signs in next; `None`: the person declines.
    person: Option<Value>,
    grants: HashMap<String, Grant>,
    /// What the token endpoint saw (`code_challenge_method` and each redemption's outcome).
    log: Vec<String>,
}

type Shared = Arc<Mutex<Provider>>;

/// Starts the provider; returns its issuer URL and its state.
async fn provider(person: Option<Value>) -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}/tenant/v2.0", listener.local_addr().unwrap());
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let shared = Arc::new(Mutex::new(Provider {
        issuer: issuer.clone(),
        key,
        person,
        grants: HashMap::new(),
        log: Vec::new(),
    }));
    let discovery = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
    });
    let keys = JwkSet { keys: vec![jwk] };
    let app = axum::Router::new()
        .route(
            "/tenant/v2.0/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/tenant/v2.0/keys", get(move || async move { Json(keys) }))
        .route("/tenant/v2.0/authorize", get(authorize))
        .route("/tenant/v2.0/token", post(token))
        .with_state(Arc::clone(&shared));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (issuer, shared)
}

async fn authorize(State(p): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut p = p.lock().unwrap();
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    p.log.push(format!(
        "authorize {} {} {}",
        field("response_type"),
        field("code_challenge_method"),
        field("scope")
    ));
    let redirect = field("redirect_uri");
    if field("client_id") != CLIENT_ID || !redirect.ends_with("/login/microsoft/callback") {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect URI").into_response();
    }
    let state = field("state");
    if p.person.is_none() {
        let to = format!("{redirect}?error=access_denied&error_description=declined&state={state}");
        return Redirect::to(&to).into_response();
    }
    let code = format!("code-{}", p.grants.len() + 1);
    p.grants.insert(
        code.clone(),
        Grant {
            redirect_uri: redirect.clone(),
            challenge: field("code_challenge"),
            nonce: field("nonce"),
        },
    );
    Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
}

async fn token(State(p): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let mut p = p.lock().unwrap();
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    // Each code once.
    let Some(grant) = p.grants.remove(&field("code")) else {
        p.log.push("token: unknown code".into());
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier_ok = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()))
        == grant.challenge;
    if field("grant_type") != "authorization_code"
        || field("client_id") != CLIENT_ID
        || field("redirect_uri") != grant.redirect_uri
        || !verifier_ok
    {
        p.log.push("token: refused".into());
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = p.person.clone().unwrap();
    claims["iss"] = json!(p.issuer);
    claims["aud"] = json!(CLIENT_ID);
    claims["nonce"] = json!(grant.nonce);
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now - 10);
    claims["exp"] = json!(now + 3600);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let id_token = jsonwebtoken::encode(&header, &claims, &p.key).unwrap();
    p.log.push("token: issued".into());
    Json(json!({"token_type": "Bearer", "id_token": id_token, "access_token": "opaque"}))
        .into_response()
}

async fn app_with(issuer: &str) -> TestApp {
    TestApp::spawn_with(Opts {
        flags: [
            "--oidc-issuer",
            issuer,
            "--oidc-audience",
            "api://kiln",
            "--oidc-client-id",
            CLIENT_ID,
            "--oidc-roles-claim",
            "roles",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn signing_in_with_microsoft_makes_a_session_through_pkce() {
    let maria = json!({"sub": "s-1", "oid": "oid-maria", "preferred_username": "maria@example.com", "roles": ["Kiln.Operator"]});
    let (issuer, shared) = provider(Some(maria)).await;
    let app = app_with(&issuer).await;
    let browser = kiln_testkit::browser::Browser::start(Width::Desktop).await;
    browser.goto(&format!("http://{}/login", app.addr())).await;
    let button = browser.find("#microsoft").await;
    assert_eq!(browser.text(&button).await, "Sign in with Microsoft");
    assert_accessible(&browser, "login with Microsoft").await;
    browser.screenshot("login-microsoft-desktop").await;
    browser.click(&button).await;
    on_my_jobs(&browser).await;
    let who = browser.text(&browser.find(".who span").await).await;
    assert!(who.contains("maria") && who.contains("(operator)"), "{who}");
    let cookies = browser.cookies().await;
    let names: Vec<&str> = cookies.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["__Host-kiln_session"],
        "the sign-in's own cookie is gone"
    );
    let log = shared.lock().unwrap().log.clone();
    assert_eq!(
        log,
        ["authorize code S256 openid profile email", "token: issued"],
        "{log:?}"
    );
    // The operator's pages are hers.
    browser.find("nav a[href=\"/ops\"]").await;
    assert_quiet_console(&browser, "after the sign-in").await;
    browser.close().await;

    // A second sign-in is the same user, not a new one.
    let browser = kiln_testkit::browser::Browser::start(Width::Phone).await;
    browser
        .goto(&format!("http://{}/login/microsoft", app.addr()))
        .await;
    browser
        .wait_for(
            "the jobs page",
            WAIT,
            "return location.pathname === '/' && !!document.querySelector('#jobs')",
        )
        .await;
    browser.close().await;
    let users = app
        .client
        .get(Some(&app.admin), "/api/v1/admin/users")
        .await
        .json();
    let marias = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"].as_str().unwrap().starts_with("maria"))
        .count();
    assert_eq!(marias, 1, "{users}");
    app.stop().await;
}

#[tokio::test]
async fn a_declined_or_forged_sign_in_makes_no_session() {
    let (issuer, _shared) = provider(None).await;
    let app = app_with(&issuer).await;
    let browser = kiln_testkit::browser::Browser::start(Width::Desktop).await;
    browser.goto(&format!("http://{}/login", app.addr())).await;
    browser.click(&browser.find("#microsoft").await).await;
    let alert = browser.find("p.error[role=alert]:not([hidden])").await;
    assert_eq!(
        browser.text(&alert).await,
        "Microsoft did not sign you in: try again, or ask an admin."
    );
    assert!(browser.cookies().await.is_empty());
    browser.close().await;

    // An answer this browser did not ask for: no pending sign-in, or another state.
    let resp = app
        .client
        .get(None, "/login/microsoft/callback?code=code-1&state=abc")
        .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER);
    assert_eq!(
        resp.header("location"),
        Some("/login?error=sign_in_expired")
    );
    let started = app.client.get(None, "/login/microsoft").await;
    assert_eq!(started.status, StatusCode::SEE_OTHER);
    let pending = started
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(pending.starts_with("__Host-kiln_oidc="), "{pending}");
    let resp = app
        .client
        .request(
            hyper::Method::GET,
            "/login/microsoft/callback?code=code-1&state=forged",
        )
        .header("cookie", &pending)
        .send()
        .await;
    assert_eq!(
        resp.header("location"),
        Some("/login?error=sign_in_expired")
    );
    let sets: Vec<&str> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        sets.iter().all(|c| !c.starts_with("__Host-kiln_session=")),
        "{sets:?}"
    );
    app.stop().await;

    // Without a client id the sign-in page offers only the password.
    let plain = TestApp::spawn().await;
    let page = plain.client.get(None, "/login").await.text();
    assert!(!page.contains("Sign in with Microsoft"));
    let resp = plain.client.get(None, "/login/microsoft").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    plain.stop().await;
}
