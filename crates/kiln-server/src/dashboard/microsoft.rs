//! "Sign in with Microsoft": `GET /login/microsoft` sends the browser to the OpenID Connect
//! provider, `GET /login/microsoft/callback` brings it back signed in (the flow is in
//! [`crate::auth::oidc_code`]). Offered when `KILN_OIDC_ISSUER` and `KILN_OIDC_CLIENT_ID`
//! are set.
//!
//! The sign-in in progress waits in the cookie `__Host-kiln_oidc` (HttpOnly, ten minutes,
//! `SameSite=Lax`: a `Strict` cookie is not sent on the provider's redirect back, a
//! navigation begun on its site). The callback makes a Kiln session (never keeping the
//! provider's tokens) and answers with a page that goes on to `/` itself: after a
//! navigation that began on another site, a redirect would arrive there without the new
//! `SameSite=Strict` cookie; a navigation from our own page carries it.

use axum::extract::{Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, html};
use serde::Deserialize;

use crate::auth::cookie;
use crate::auth::oidc::{Oidc, OidcError};
use crate::auth::oidc_code::Pending;
use crate::problem::ApiError;
use crate::routes::auth::session;
use crate::state::AppState;

/// The cookie that holds a sign-in on its way to the provider and back.
pub const PENDING_COOKIE: &str = "__Host-kiln_oidc";
/// How long a sign-in may take at the provider.
const PENDING_MAX_AGE: u32 = 600;

/// The provider, when the dashboard may sign in through it.
pub fn provider(state: &AppState) -> Option<&Oidc> {
    state
        .config()
        .oidc
        .as_deref()
        .filter(|o| o.config().client_id.is_some())
}

fn back(code: &str) -> Response {
    with_cookie(
        Redirect::to(&format!("/login?error={code}")).into_response(),
        &clear_pending(),
    )
}

fn with_cookie(mut resp: Response, value: &str) -> Response {
    cookie::append(&mut resp, value);
    resp
}

fn clear_pending() -> String {
    format!("{PENDING_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The code of the sign-in page's message for a provider's refusal.
fn code(e: &OidcError) -> &'static str {
    match e {
        OidcError::Unavailable(_) => "provider_unavailable",
        OidcError::Invalid(_) => "provider_refused",
    }
}

/// `GET /login/microsoft`: off to the provider.
pub async fn start(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(oidc) = provider(&state) else {
        return ApiError::not_found("signing in through an identity provider is not configured")
            .into_response();
    };
    let host = cookie::request_host(&headers, &uri);
    let Some(host) = host.filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@'])) else {
        return ApiError::invalid("Host", "the request names no host to come back to")
            .into_response();
    };
    // Behind a proxy that ends TLS, it says so; the provider accepts only the callback
    // URLs registered with it, so a forged header only makes the sign-in fail.
    let https = state.config().https
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if https { "https" } else { "http" };
    let pending = Pending::new(format!("{scheme}://{host}/login/microsoft/callback"));
    match oidc.authorize_url(&pending).await {
        Ok(url) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            if let Ok(location) = HeaderValue::from_str(&url) {
                resp.headers_mut().insert(LOCATION, location);
            }
            let cookie = format!(
                "{PENDING_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={PENDING_MAX_AGE}",
                pending.encode()
            );
            with_cookie(resp, &cookie)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a sign-in through the identity provider");
            back(code(&e))
        }
    }
}

/// The provider's answer.
#[derive(Deserialize)]
pub struct Answer {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/microsoft/callback`: back from the provider.
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(answer): Query<Answer>,
) -> Response {
    let Some(oidc) = provider(&state) else {
        return back("provider_unavailable");
    };
    if let Some(error) = &answer.error {
        tracing::info!(
            error,
            description = answer.error_description.as_deref().unwrap_or_default(),
            "the identity provider did not sign the person in"
        );
        return back("provider_refused");
    }
    let pending = cookie::get(&headers, PENDING_COOKIE).and_then(Pending::decode);
    let (Some(pending), Some(code_given)) = (pending, answer.code.as_deref()) else {
        return back("sign_in_expired");
    };
    // Not this browser's sign-in (or a forged answer): nothing is redeemed.
    if answer.state.as_deref() != Some(pending.state.as_str()) {
        return back("sign_in_expired");
    }
    let now = state.now();
    let verified = match oidc.redeem(&pending, code_given, now).await {
        Ok(verified) => verified,
        Err(e) => {
            tracing::warn!(error = %e, "a sign-in through the identity provider failed");
            return back(code(&e));
        }
    };
    let user = match crate::auth::sign_in::person(&state, &verified, now).await {
        Ok(user) => user,
        // The person is known but disabled in Kiln.
        Err(e) if e.code == "unauthorized" => return back("user_disabled"),
        Err(e) => return back(e.code),
    };
    let login = match session(&state, user, "microsoft").await {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/";
                title { "Signed in · Kiln" }
            }
            body { p { "Signed in. " a href="/" { "Go on to your jobs" } } }
        }
    };
    let resp = axum::response::Html(page.into_string()).into_response();
    let resp = with_cookie(resp, &clear_pending());
    let max_age = state.config().session_ttl.as_secs();
    with_cookie(resp, &cookie::set_session(&login.token, max_age))
}
