//! Cross-cutting request handling: the request log line, problem rendering, and the
//! 503-while-shutting-down gate. (Request ids, CORS, timeouts and panics use tower-http; see
//! [`crate::app`].)

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
/// `request_id` and, when the client sent a valid W3C `traceparent`, its `trace_id`.
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
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty
    );
    if let Some(trace_id) = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
    {
        span.record("trace_id", trace_id);
    }
    let resp = next.run(req).instrument(span.clone()).await;
    let _in_request = span.enter();
    let resp = render_problem(resp, &request_id);
    let status = resp.status().as_u16();
    let took = start.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state
        .metrics()
        .http_request(method.as_str(), route, status, took);
    let latency_ms = took.as_secs_f64() * 1000.0;
    tracing::info!(%method, path, status, latency_ms, "request");
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

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`), if the header is well formed and the ids are not all zeros; anything else is
/// ignored, as the specification asks.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

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

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn traceparent_gives_its_trace_id_only_when_well_formed() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(&format!("00-{trace}-00f067aa0ba902b7-01")),
            Some(trace)
        );
        // A later version may add fields after the flags.
        assert_eq!(
            trace_id(&format!("01-{trace}-00f067aa0ba902b7-01-extra")),
            Some(trace)
        );
        for bad in [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // invalid version
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 has 4 fields
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }
}
