//! Cross-cutting request handling: the request log line, problem rendering, and the
//! 503-while-shutting-down gate. (Request ids, CORS, timeouts and panics use tower-http; see
//! [`crate::app`].)

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_metrics::trace;
use tracing::Instrument;

use crate::problem::ApiError;
use crate::state::AppState;

/// The request id header (set by `SetRequestIdLayer` before this runs).
pub const REQUEST_ID: &str = "x-request-id";

/// Writes the problem body of every error response (with the request id), logs a 5xx cause
/// once, logs one INFO line per request, and counts it in the metrics under its route
/// template (`unmatched` for no route: never the raw path, which would grow the label set).
///
/// Everything logged while the request runs is inside a `request` span carrying its
/// `request_id` and, when the client sent a valid W3C `traceparent`, its `trace_id`. With
/// an OpenTelemetry exporter installed ([`kiln_metrics::trace`]) the span continues the
/// client's trace (or starts one, whose id it then carries) and is named after its route.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace::traceparent);
    let tracer = trace::tracer();
    match tracer {
        Some(tracer) => {
            if let Some((trace_id, parent_id)) = parent {
                tracer.adopt(&span, trace_id, parent_id);
            }
            span.record("otel.name", format!("{method} {route}"));
            span.record("otel.kind", "server");
            if let Some((trace_id, _)) = tracer.ids(&span) {
                span.record("trace_id", trace_id);
            }
        }
        None => {
            if let Some((trace_id, _)) = parent {
                span.record("trace_id", trace_id);
            }
        }
    }
    let resp = next.run(req).instrument(span.clone()).await;
    let _in_request = span.enter();
    let resp = render_problem(resp, &request_id);
    let status = resp.status().as_u16();
    if tracer.is_some() {
        span.record("http.response.status_code", i64::from(status));
    }
    let took = start.elapsed();
    state
        .metrics()
        .http_request(method.as_str(), route, status, took);
    let latency_ms = took.as_secs_f64() * 1000.0;
    tracing::info!(%method, path, status, latency_ms, "request");
    resp
}

/// Adds the standard security headers to every response that does not set its own: no
/// MIME sniffing, no framing by other sites (clickjacking), no `Referer` sent from Kiln's
/// pages; and `Cache-Control: no-store` on the answer to an authenticated request (bearer
/// token or the dashboard's cookie), so no
/// cache keeps what a token unlocked (job reads set their own `private, no-cache`: a
/// browser may keep them, revalidated by `ETag`, and no shared cache may).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let authenticated = req.headers().contains_key(AUTHORIZATION)
        || crate::auth::cookie::session_token(req.headers()).is_some();
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    if authenticated {
        headers
            .entry(CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    for (name, value) in [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    resp
}

/// Longest client-supplied request id kept.
const MAX_REQUEST_ID: usize = 64;

/// Drops a client-supplied `X-Request-Id` that is not a short token (at most 64 letters,
/// digits, `-`, `_`, `.` or `:`), so the id layer makes a fresh one: the id is echoed in
/// responses and written in every log line, where a client must not inject text.
pub async fn clean_request_id(mut req: Request, next: Next) -> Response {
    let acceptable = |v: &[u8]| {
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    let headers = req.headers_mut();
    let ids = headers.get_all(REQUEST_ID).iter().count();
    if ids > 1
        || headers
            .get(REQUEST_ID)
            .is_some_and(|v| !acceptable(v.as_bytes()))
    {
        headers.remove(REQUEST_ID);
    }
    next.run(req).await
}

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

fn render_problem(mut resp: Response, request_id: &str) -> Response {
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        if let Some(cause) = &err.cause {
            tracing::error!(request_id, code = err.code, cause, "request failed");
        }
        let mut out = err.render(request_id);
        copy_headers(&resp, &mut out);
        return out;
    }
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if (status.is_client_error() || status.is_server_error()) && !is_problem {
        if status.is_server_error() {
            tracing::error!(request_id, status = status.as_u16(), "request failed");
        }
        let mut out = ApiError::from_status(status).render(request_id);
        copy_headers(&resp, &mut out);
        return out;
    }
    resp
}

/// Keeps the headers layers and handlers set on the replaced response (`Allow` on a 405,
/// CORS headers), except the body's and those the problem sets itself.
fn copy_headers(from: &Response, to: &mut Response) {
    let own: Vec<_> = to.headers().keys().cloned().collect();
    for (name, value) in from.headers() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH && !own.contains(name) {
            to.headers_mut().append(name, value.clone());
        }
    }
}

/// The catch-panic layer's response: a 500 whose cause (the panic message) is logged by
/// [`observe`] with the request id, and never sent.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

/// Answers 408 when a request takes longer than its limit: `request_timeout`, or
/// `upload_timeout` for uploads (`POST /api/v1/files`), whose body may be large and slow.
pub async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = state.config();
    let is_upload = req.method() == axum::http::Method::POST && req.uri().path() == "/api/v1/files";
    let limit = if is_upload {
        config.upload_timeout
    } else {
        config.request_timeout
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// Answers 503 to everything but `/healthz` once shutdown has begun.
pub async fn shutdown_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.is_shutting_down() && req.uri().path() != "/healthz" {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; try another node or again shortly",
        );
        e.retry_after = Some(1);
        return e.into_response();
    }
    next.run(req).await
}

/// Unknown routes.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}
