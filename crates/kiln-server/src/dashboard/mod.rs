//! The web dashboard at `/` (ADR 0016): page shells rendered here with maud, the data
//! views in hand-written scripts (`crates/kiln-server/assets/`) that call `/api/v1` like
//! any client, signed in by an HttpOnly session cookie ([`crate::auth::cookie`]).
//!
//! Every page answers with a Content-Security-Policy that allows only this server's own
//! scripts, styles, images and connections (no inline script, handler or `style=`), and
//! `Cache-Control: no-store`. A page asked for without a valid session redirects to
//! `/login`.

mod assets;
mod login;
mod microsoft;
mod ops;
mod pages;
mod submit;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::auth::{CurrentUser, cookie};
use crate::state::AppState;

/// What pages may load: only this server's own files, and no framing, no `<base>`, forms
/// posting only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/submit", get(submit::page))
        .route("/ops/jobs", get(pages::all_jobs))
        .route("/ops", get(ops::page))
        .route("/admin/users", get(ops::users))
        .route(
            "/login",
            get(login::page)
                .post(login::submit)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::routes::auth::LOGIN_BODY_LIMIT,
                )),
        )
        .route("/login/microsoft", get(microsoft::start))
        .route("/login/microsoft/callback", get(microsoft::callback))
        .route("/assets/{file}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .layer(from_fn(page_headers))
}

/// Adds the CSP to every dashboard response, and `no-store` to those that set no cache
/// policy of their own (the assets do). Pages send a `Referer` to this server only
/// (`same-origin`, where the API's answers say `no-referrer`): under `no-referrer` a
/// browser sends `Origin: null` with a form, and the login form must show its origin.
async fn page_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The signed-in user of a page, with the CSRF token its scripts send back. Without a
/// valid session cookie the page redirects to `/login`.
pub struct Viewer {
    pub me: CurrentUser,
    pub csrf: String,
}

impl Viewer {
    /// A redirect to the viewer's own jobs when they lack `role` (a page for operators or
    /// admins); `None` when they have it.
    pub fn lacks(&self, role: kiln_domain::Role) -> Option<Response> {
        (self.me.user.role < role).then(|| Redirect::to("/").into_response())
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/login").into_response();
        let Some(session) = cookie::session_token(&parts.headers).map(str::to_owned) else {
            return Err(to_login());
        };
        // Only the cookie signs in a page (a browser sends no bearer token on its own).
        parts.headers.remove(axum::http::header::AUTHORIZATION);
        let me = CurrentUser::from_request_parts(parts, state)
            .await
            .map_err(|e| match e.status {
                StatusCode::UNAUTHORIZED => to_login(),
                _ => e.into_response(),
            })?;
        Ok(Self {
            me,
            csrf: cookie::csrf_token(&session),
        })
    }
}
