//! [`router()`]: the routes and the layers around them.
//!
//! Layers, outermost first: security headers (`nosniff`, no framing, no referrer) on every
//! response → request id (a client's kept only if it is a short token; set,
//! then echoed back) → `observe` (problem bodies
//! and the request log line) → catch-panic (a panic is a 500, not a crash) → CORS (only
//! with an allow-list) → time limit (408; uploads have a longer one) → the shutdown gate
//! (503) → the routes, whose body extractors stop at `body_limit` (413; uploads at the
//! upload limit).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::middleware::{
    REQUEST_ID, clean_request_id, fallback, observe, panic_response, security_headers,
    shutdown_gate, time_limit,
};
use crate::routes::{admin, artifacts, auth, counts, events, files, jobs, logs, ops, pdf, series};
use crate::state::AppState;
use crate::{dashboard, openapi};

/// The whole HTTP API with `state` applied.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .nest("/api/v1", api(state.config().upload_limit))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .route("/docs/{file}", get(openapi::docs_file))
        .merge(dashboard::routes())
        .fallback(fallback);
    with_layers(routes, state)
}

/// The metrics listener's routes (`KILN_METRICS_ADDR`): `/metrics` without a token, and
/// `/healthz`; nothing else, for a Prometheus on a private network.
pub fn metrics_router(state: AppState) -> Router {
    let layers = ServiceBuilder::new()
        .layer(from_fn(security_headers))
        .layer(from_fn(clean_request_id))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(from_fn_with_state(state.clone(), observe))
        .layer(CatchPanicLayer::custom(panic_response));
    Router::new()
        .route("/metrics", get(ops::metrics_open))
        .route("/healthz", get(ops::healthz))
        .fallback(fallback)
        .layer(layers)
        .with_state(state)
}

/// Wraps `routes` in the layers (module docs) and applies `state`.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let config = state.config().clone();
    let layers = ServiceBuilder::new()
        .layer(from_fn(security_headers))
        .layer(from_fn(clean_request_id))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(from_fn_with_state(state.clone(), observe))
        .layer(CatchPanicLayer::custom(panic_response))
        .option_layer(cors(&config.cors_origins))
        .layer(from_fn_with_state(state.clone(), time_limit))
        .layer(from_fn_with_state(state.clone(), shutdown_gate));
    routes
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(layers)
        .with_state(state)
}

/// The `/api/v1` routes; uploads are limited to `upload_limit` (plus multipart framing)
/// instead of the JSON body limit.
fn api(upload_limit: u64) -> Router<AppState> {
    let upload_body = upload_limit.saturating_add(files::MULTIPART_OVERHEAD);
    let upload_body = usize::try_from(upload_body).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/auth/login",
            post(auth::login)
                .layer(DefaultBodyLimit::max(auth::LOGIN_BODY_LIMIT))
                .layer(from_fn(auth::refuse_large_login)),
        )
        .route("/auth/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/tokens", get(auth::list_tokens).post(auth::create_token))
        .route("/tokens/{id}", axum::routing::delete(auth::delete_token))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/counts", get(counts::counts))
        .route(
            "/jobs/{id}",
            get(jobs::get).patch(jobs::report).delete(jobs::delete),
        )
        .route("/jobs/{id}/status", get(jobs::status))
        .route("/jobs/{id}/result", get(jobs::result))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/logs", get(logs::logs))
        .route("/events", get(events::events))
        .route("/jobs/{id}/artifacts", get(artifacts::list))
        .route("/jobs/{id}/artifacts/{name}", get(artifacts::download))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/retry", post(jobs::retry).put(jobs::retry))
        .route(
            "/files",
            post(files::upload)
                .layer(DefaultBodyLimit::max(upload_body))
                .get(files::list),
        )
        .route("/files/{id}", get(files::get).delete(files::delete))
        .route(
            "/pdf-processing",
            post(pdf::process).layer(DefaultBodyLimit::max(upload_body)),
        )
        .route("/files/{id}/content", get(files::content))
        .route("/job-types", get(ops::job_types))
        .route(
            "/admin/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route(
            "/admin/users/{id}",
            axum::routing::patch(admin::update_user),
        )
        .route("/admin/users/{id}/unlock", post(admin::unlock_user))
        .route(
            "/admin/users/{id}/limits",
            get(admin::get_limits).put(admin::put_limits),
        )
        .route("/admin/jobs", get(admin::list_jobs))
        .route(
            "/admin/jobs/{id}",
            get(admin::get_job).delete(admin::delete_job),
        )
        .route("/admin/jobs/{id}/cancel", post(admin::cancel_job))
        .route(
            "/admin/jobs/{id}/retry",
            post(admin::retry_job).put(admin::retry_job),
        )
        .route("/admin/queues", get(admin::list_queues))
        .route("/admin/nodes", get(admin::list_nodes))
        .route("/admin/series", get(series::series))
        .route("/admin/queues/{queue}/pause", post(admin::pause_queue))
        .route("/admin/queues/{queue}/resume", post(admin::resume_queue))
}

/// CORS for the allowed origins; `None` (no CORS headers) when there are none.
///
/// `*` among them allows any origin: API tokens travel in the `Authorization` header, which
/// no browser sends on its own, and the dashboard's session cookie is never allowed across
/// origins (no `Access-Control-Allow-Credentials`, so a browser withholds the answer to a
/// credentialed cross-origin request; its writes also need the CSRF token). tower-http's
/// list would panic on `*`.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    let any = origins.iter().any(|o| o.trim() == "*");
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let allow = if any {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(crate::submit::IDEMPOTENCY_KEY),
                HeaderName::from_static(REQUEST_ID),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static(REQUEST_ID),
                HeaderName::from_static(crate::routes::jobs::REPLAYED),
            ]),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use kiln_domain::SystemClock;
    use kiln_store::sqlite::{SqliteOptions, SqlitePath, SqliteStore};
    use tower::ServiceExt;

    use super::*;
    use crate::config::ServerConfig;

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_problem_not_a_crash() {
        let store = SqliteStore::open(SqliteOptions {
            path: SqlitePath::Memory,
            ..SqliteOptions::default()
        })
        .expect("an in-memory store");
        let state = AppState::new(
            store,
            Arc::default(),
            Arc::new(SystemClock),
            ServerConfig::default(),
        );
        async fn boom() -> &'static str {
            panic!("internal secret")
        }
        let routes = Router::new().route("/boom", get(boom));
        let app = with_layers(routes, state);
        let req = Request::get("/boom")
            .body(Body::empty())
            .expect("a request");
        let resp = app.oneshot(req).await.expect("a response");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("a body");
        let problem: kiln_api::Problem = serde_json::from_slice(&body).expect("a problem");
        assert_eq!(problem.code, "internal_error");
        assert!(!problem.request_id.is_empty());
        assert!(!problem.detail.contains("secret"));
    }
}
