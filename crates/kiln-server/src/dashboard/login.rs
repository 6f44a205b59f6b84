//! `GET /login` and `POST /login`: the dashboard's password sign-in.
//!
//! The form posts here; a good name and password (checked exactly as `POST
//! /api/v1/auth/login` checks them: the same throttling, the same hashing slots) start a
//! session named `dashboard` whose token goes only into the HttpOnly cookie, and the answer
//! is a 303 to `/`. A refusal is a 303 back to `/login?error=<code>` (post, redirect, get:
//! a reload never re-sends the password), whose page says what went wrong.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use kiln_api::LoginRequest;
use maud::html;
use serde::Deserialize;

use super::pages::layout;
use crate::auth::cookie;
use crate::extract::PeerAddr;
use crate::routes::auth::{authenticate, session};
use crate::state::AppState;

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// `/login`'s query: the code of the last refusal.
#[derive(Deserialize)]
pub struct LoginQuery {
    error: Option<String>,
}

/// What a refusal's code means, in words for the person signing in.
fn message(code: &str) -> &'static str {
    match code {
        "unauthorized" => "Wrong username or password.",
        "too_many_logins" => "Too many failed sign-ins: wait a minute before trying again.",
        "logins_busy" => "The server is busy checking other sign-ins: try again shortly.",
        "csrf_failed" => {
            "The sign-in did not come from this server's own page: reload it and try again."
        }
        "provider_refused" => "Microsoft did not sign you in: try again, or ask an admin.",
        "provider_unavailable" => "Microsoft's sign-in cannot be reached: try again shortly.",
        "user_disabled" => "Your Kiln user is disabled: ask an admin.",
        "sign_in_expired" => "That sign-in took too long or did not start here: try again.",
        _ => "Signing in failed: try again.",
    }
}

/// `GET /login`.
pub async fn page(State(state): State<AppState>, Query(query): Query<LoginQuery>) -> Html<String> {
    let microsoft = super::microsoft::provider(&state).is_some();
    let error = query.error.as_deref().map(message);
    let body = html! {
        section.login aria-labelledby="login-title" {
            h1 #login-title { "Sign in to Kiln" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            p.error #insecure hidden role="alert" {
                "This page is not served over HTTPS, so your browser will not keep the sign-in. \
                 Open the dashboard through https:// (or on this machine at 127.0.0.1)."
            }
            form method="post" action="/login" {
                label for="username" { "Username" }
                input #username name="username" type="text" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password name="password" type="password" autocomplete="current-password" required;
                button.primary type="submit" { "Sign in" }
            }
            @if microsoft {
                p.or { "or" }
                p { a.button #microsoft href="/login/microsoft" { "Sign in with Microsoft" } }
            }
        }
    };
    layout("Sign in", None, "login.js", body)
}

/// `POST /login`: the cookie and a 303 to `/`, or a 303 back with the refusal's code.
pub async fn submit(
    State(state): State<AppState>,
    PeerAddr(address): PeerAddr,
    uri: Uri,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let back = |code: &str| Redirect::to(&format!("/login?error={code}")).into_response();
    // A login form posted from another site would sign the browser in as someone else.
    if !cookie::same_origin(&headers, &uri) {
        return back("csrf_failed");
    }
    let body = LoginRequest {
        username: form.username,
        password: form.password,
    };
    let user = match authenticate(&state, body, address).await {
        Ok(user) => user,
        Err(e) => return back(e.code),
    };
    let login = match session(&state, user, "dashboard").await {
        Ok(login) => login,
        Err(e) => return e.into_response(),
    };
    let max_age = state.config().session_ttl.as_secs();
    let mut resp = Redirect::to("/").into_response();
    cookie::append(&mut resp, &cookie::set_session(&login.token, max_age));
    resp
}
