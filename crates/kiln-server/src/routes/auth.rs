//! `/api/v1/auth/*`, `/me` and `/tokens`: sessions and the caller's API tokens.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::TimeDelta;
use kiln_api::{
    CreateToken, DEFAULT_TOKEN_DAYS, LoginRequest, LoginResponse, MAX_TOKEN_DAYS, TokenView,
    UserView,
};
use kiln_domain::User;
use kiln_store::{NewToken, TokenKind};

use crate::auth::throttle::Refused;
use crate::auth::{CurrentUser, Via, cookie, password, token};
use crate::extract::{Json, Path};
use crate::problem::ApiError;
use crate::state::AppState;
use crate::view;

/// A hash verified when the username is unknown, so that a wrong name and a wrong
/// password take the same time (no user enumeration by timing).
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| password::hash("no user has this password").unwrap_or_default());

/// The largest login body: a 64-character name and a 1,024-byte password, even with every
/// character escaped, fit in it. A larger body answers 413 once this much is read, so a
/// flood of huge logins costs the server a few KB each, not a parse of each megabyte.
pub const LOGIN_BODY_LIMIT: usize = 16 * 1024;

/// How long a login with an oversized body waits for its 413. No client sends one by
/// mistake; a flood of them is held to a trickle per connection (200 connections: 200
/// requests a second instead of thousands), while the unread body waits in the kernel.
pub const OVERSIZED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers 413, reading none of it, to a login whose `Content-Length` is over
/// [`LOGIN_BODY_LIMIT`]: after [`OVERSIZED_LOGIN_DELAY`], closing the connection (so the rest
/// of the body is never read either). A body without a length is cut at the limit by the
/// body limit.
pub async fn refuse_large_login(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > LOGIN_BODY_LIMIT as u64) {
        tokio::time::sleep(OVERSIZED_LOGIN_DELAY).await;
        let mut resp = ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a login body is at most {LOGIN_BODY_LIMIT} bytes"),
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    next.run(req).await
}

/// `POST /auth/login` → a session token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A session token and the user", body = LoginResponse),
        (status = 400, description = "The body is not a login request"),
        (status = 401, description = "Wrong username or password (or the user is disabled)"),
        (status = 429, description = "Too many failed logins for this username (`Retry-After`)"),
        (status = 503, description = "Too many logins being checked at once (`Retry-After`)"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    crate::extract::PeerAddr(address): crate::extract::PeerAddr,
    Json(body): Json<LoginRequest>,
) -> Result<([(HeaderName, &'static str); 1], Json<LoginResponse>), ApiError> {
    let user = authenticate(&state, body, address).await?;
    Ok((NO_STORE, Json(session(&state, user, "login").await?)))
}

/// A response that carries a secret (a token): no cache may keep it.
const NO_STORE: [(HeaderName, &str); 1] = [(CACHE_CONTROL, "no-store")];

/// The user whose name and password these are; 429 while the name is throttled, 503 while
/// every hashing slot is busy (see [`crate::auth::throttle`]).
pub(crate) async fn authenticate(
    state: &AppState,
    body: LoginRequest,
    address: Option<std::net::IpAddr>,
) -> Result<User, ApiError> {
    let LoginRequest { username, password } = body;
    // No user can have a malformed name: refused without hashing or remembering it.
    if kiln_domain::user::parse_username(&username).is_err() {
        return Err(ApiError::unauthorized("wrong username or password"));
    }
    let logins = state.logins();
    logins.begin(&username, address).map_err(refused)?;
    let record = state.store().user_by_name(&username).await?;
    let phc = record
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |r| r.password_hash.clone());
    let slot = logins.hashing_slot().await.map_err(refused)?;
    let ok = tokio::task::spawn_blocking(move || password::verify(&password, &phc))
        .await
        .map_err(ApiError::internal)?;
    drop(slot);
    match record {
        Some(r) if ok && !r.user.disabled => {
            logins.succeeded(&username, address);
            Ok(r.user)
        }
        _ => Err(ApiError::unauthorized("wrong username or password")),
    }
}

/// The problem for a login stopped before its password was checked.
pub(crate) fn refused(why: Refused) -> ApiError {
    let (status, code, detail, wait) = match why {
        Refused::Throttled(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_logins",
            "too many failed logins for this user; wait before trying again",
            wait,
        ),
        Refused::AddressThrottled(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_logins",
            "too many failed logins from this address; wait before trying again",
            wait,
        ),
        Refused::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "logins_busy",
            "too many logins are being checked at once; try again shortly",
            1,
        ),
    };
    let mut e = ApiError::new(status, code, detail);
    e.retry_after = Some(wait);
    e
}

/// A new session token for `user` named `name`, valid for `session_ttl`.
pub(crate) async fn session(
    state: &AppState,
    user: User,
    name: &str,
) -> Result<LoginResponse, ApiError> {
    let now = state.now();
    let expires_at = kiln_domain::clock::later(now, state.config().session_ttl);
    let secret = token::generate();
    let new = NewToken {
        user: user.id,
        hash: token::digest(&secret).to_vec(),
        kind: TokenKind::Session,
        name: name.to_owned(),
        expires_at: Some(expires_at),
    };
    state.store().token_insert(new, now).await?;
    Ok(LoginResponse {
        token: secret,
        expires_at,
        user: user.into(),
    })
}

/// `POST /auth/logout`: the token used for this request stops working (and the dashboard's
/// cookie is removed when it was the credential).
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    operation_id = "logout",
    security(("bearer" = [])),
    responses((status = 204, description = "The token no longer works"))
)]
pub async fn logout(State(state): State<AppState>, me: CurrentUser) -> Result<Response, ApiError> {
    state.store().token_delete_hash(&me.token_hash).await?;
    state.tokens().forget_hash(&me.token_hash);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if me.via == Via::Cookie {
        cookie::append(&mut resp, &cookie::clear_session());
    }
    Ok(resp)
}

/// `GET /me`: the caller.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "me",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = UserView))
)]
pub async fn me(me: CurrentUser) -> Json<UserView> {
    Json(me.user.into())
}

/// `GET /tokens`: the caller's API tokens (never their secrets).
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "auth",
    operation_id = "list_tokens",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's API tokens, without secrets", body = Vec<TokenView>))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let tokens = state.store().token_list(me.user.id, TokenKind::Api).await?;
    Ok(Json(
        tokens.into_iter().map(|t| view::token(t, None)).collect(),
    ))
}

/// `POST /tokens` → 201 with the secret, shown this once.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "auth",
    operation_id = "create_token",
    security(("bearer" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token, with its secret in `token` (shown this once)", body = TokenView),
        (status = 400, description = "A bad name or lifetime"),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    me: CurrentUser,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, [(HeaderName, &'static str); 1], Json<TokenView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid("name", "must be 1-100 bytes"));
    }
    let now = state.now();
    let max = state.config().token_max_days.clamp(1, MAX_TOKEN_DAYS);
    let days = body.expires_in_days.unwrap_or(DEFAULT_TOKEN_DAYS.min(max));
    if !(1..=max).contains(&days) {
        return Err(ApiError::invalid(
            "expires_in_days",
            format!("must be 1 to {max} (this server's longest token lifetime)"),
        ));
    }
    let expires_at = Some(now + TimeDelta::days(i64::from(days)));
    let secret = token::generate();
    let new = NewToken {
        user: me.user.id,
        hash: token::digest(&secret).to_vec(),
        kind: TokenKind::Api,
        name: name.to_owned(),
        expires_at,
    };
    let info = state.store().token_insert(new, now).await?;
    Ok((
        StatusCode::CREATED,
        NO_STORE,
        Json(view::token(info, Some(secret))),
    ))
}

/// `DELETE /tokens/{id}`: 204; 404 if it is not the caller's.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "auth",
    operation_id = "delete_token",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 204, description = "The token no longer works"),
        (status = 400, description = "The id is not a number"),
        (status = 404, description = "No such token of the caller's"),
    )
)]
pub async fn delete_token(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    state.store().token_delete(me.user.id, id).await?;
    state.tokens().forget_token(id);
    Ok(StatusCode::NO_CONTENT)
}
