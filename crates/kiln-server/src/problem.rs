//! [`ApiError`]: the one error type of every handler, rendered as an RFC 9457 problem.
//!
//! A handler returns `ApiError`; its `IntoResponse` only records *what* went wrong (status,
//! stable `code`, detail, and for 5xx the hidden cause) in the response's extensions. The
//! `observe` middleware (see [`crate::middleware`]) then writes the
//! `application/problem+json` body with the request id, logs a 5xx cause once, and turns any
//! other error response (405 from the router, 408 from the timeout, 500 from a panic) into a
//! problem too. `From<StoreError>` and `From<Invalid>` are the only places errors are mapped.

use axum::extract::multipart::MultipartError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_api::Problem;
use kiln_domain::Invalid;
use kiln_objects::ObjectsError;
use kiln_store::StoreError;

/// Seconds a client should wait after a 429 (queue full) before trying again.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An error a request ends with.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// This occurrence, in words a user understands (never internals).
    pub detail: String,
    /// The offending input field, for validation errors.
    pub field: Option<String>,
    /// `Retry-After` seconds (429, 503).
    pub retry_after: Option<u64>,
    /// The hidden cause of a 5xx, logged by the middleware and never sent.
    pub cause: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
            cause: None,
        }
    }

    /// 400 naming the offending `field`.
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {reason}"),
        );
        e.field = Some(field);
        e
    }

    /// 401: no valid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: authenticated, but the role does not allow it.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 with a detail.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 500 that hides `cause` from the client and logs it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle the request; see its log for this request id",
        );
        e.cause = Some(cause.to_string());
        e
    }

    /// A problem for an error response that carries no `ApiError` (router 405, timeout 408,
    /// panic 500, …): the status speaks for itself.
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::INTERNAL_SERVER_ERROR => "internal_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "internal_error",
        };
        let detail = status.canonical_reason().unwrap_or("error").to_owned();
        Self::new(status, code, detail)
    }

    /// The RFC 9457 document for this error.
    pub fn to_problem(&self, request_id: &str) -> Problem {
        Problem {
            problem_type: format!("urn:kiln:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            request_id: request_id.to_owned(),
            field: self.field.clone(),
        }
    }

    /// The full response, with the body rendered for `request_id`.
    pub fn render(&self, request_id: &str) -> Response {
        let body = serde_json::to_vec(&self.to_problem(request_id)).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is written by the `observe` middleware, which knows the request id.
        let mut resp = self.status.into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("no such resource"),
            StoreError::Conflict { what } => Self::new(StatusCode::CONFLICT, "conflict", what),
            StoreError::Illegal(illegal) => Self::new(
                StatusCode::CONFLICT,
                "illegal_transition",
                illegal.to_string(),
            ),
            StoreError::LeaseLost => Self::new(
                StatusCode::CONFLICT,
                "lease_lost",
                "the job changed while the request was handled",
            ),
            StoreError::QueueFull { limit } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("the queue is full ({limit} jobs are waiting or running)"),
                );
                e.retry_after = Some(RETRY_AFTER_SECS);
                e
            }
            StoreError::ActiveQuota { limit } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "active_quota",
                    format!(
                        "you have {limit} jobs waiting or running, your quota; submit more \
                         once some have finished"
                    ),
                );
                e.retry_after = Some(RETRY_AFTER_SECS);
                e
            }
            StoreError::Full(source) => {
                let mut e = Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the server has no room to store this (its disk or database is full); nothing was kept",
                );
                e.retry_after = Some(RETRY_AFTER_SECS);
                e.cause = Some(source.to_string());
                e
            }
            StoreError::Transient(source) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy; try again",
                );
                e.retry_after = Some(1);
                e.cause = Some(source.to_string());
                e
            }
            other => Self::internal(error_chain(&other)),
        }
    }
}

impl From<ObjectsError> for ApiError {
    fn from(e: ObjectsError) -> Self {
        Self::objects(e, "such file or artifact")
    }
}

impl ApiError {
    /// The one mapping of object-store errors: a missing object is 404 `no {what}`, an
    /// upload over its limit 413, a broken upload body 400 (413 when the multipart layer
    /// hit the route's limit), anything else a 500 whose cause is logged.
    pub fn objects(e: ObjectsError, what: impl std::fmt::Display) -> Self {
        match e {
            ObjectsError::NotFound => Self::not_found(format!("no {what}")),
            ObjectsError::TooLarge { limit } => Self::too_large(limit),
            ObjectsError::Body(source) => match source.downcast::<MultipartError>() {
                Ok(multipart) => Self::multipart(*multipart),
                Err(other) => Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_multipart",
                    format!("the upload failed: {other}"),
                ),
            },
            full if full.is_full() => Self::full(&full),
            other => Self::internal(error_chain(&other)),
        }
    }

    /// 507: the disk under the object store is full.
    fn full(cause: &dyn std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "the server has no room to store this (its disk is full); nothing was kept",
        );
        e.retry_after = Some(RETRY_AFTER_SECS);
        e.cause = Some(cause.to_string());
        e
    }

    /// 413: an upload over the limit of `limit` bytes.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than the upload limit of {limit} bytes"),
        )
    }

    /// A malformed multipart body is a 400; one over the route's limit a 413.
    pub fn multipart(e: MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the upload limit",
            );
        }
        Self::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::invalid(e.field, e.reason)
    }
}

/// `error: cause: cause…`, for the log.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let e = ApiError::from(StoreError::QueueFull { limit: 3 });
        let resp = e.render("r1");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn backend_errors_hide_their_cause() {
        let e = ApiError::from(StoreError::Backend("disk on fire".into()));
        let problem = e.to_problem("r1");
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("disk"));
        assert!(e.cause.unwrap().contains("disk on fire"));
    }

    #[test]
    fn object_errors_map_to_their_status() {
        let missing = ApiError::objects(ObjectsError::NotFound, "file 42");
        assert_eq!(
            (missing.status, missing.detail.as_str()),
            (StatusCode::NOT_FOUND, "no file 42")
        );
        let big = ApiError::from(ObjectsError::TooLarge { limit: 10 });
        assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
        let broken = ApiError::from(ObjectsError::Body("reset".into()));
        assert_eq!(
            (broken.status, broken.code),
            (StatusCode::BAD_REQUEST, "invalid_multipart")
        );
        let io = ApiError::from(ObjectsError::Io(std::io::Error::other("disk")));
        assert_eq!(io.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!io.detail.contains("disk"));
    }

    #[test]
    fn invalid_fields_are_named() {
        let problem = ApiError::from(Invalid::new("payload.ms", "too big")).to_problem("r");
        assert_eq!(problem.field.as_deref(), Some("payload.ms"));
        assert_eq!(problem.code, "invalid_request");
    }
}
