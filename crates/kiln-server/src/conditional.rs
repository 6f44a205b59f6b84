//! Conditional job reads: an `ETag` on every job read and `304 Not Modified` when the
//! client already holds that version, so pollers and browsers cost a read but no body.
//!
//! The tag is a hash of the body itself rather than a version column: every change a
//! client can see changes the bytes, including progress and results written by another
//! node, so no write path has to remember to bump anything.

use std::hash::{DefaultHasher, Hasher};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::problem::ApiError;

/// Browsers may keep a job read but must ask again before using it (a finished job can
/// still be retried or deleted); with the `ETag` that question costs a `304`.
const CACHE: &str = "private, no-cache";

/// `value` as JSON with its `ETag`, or an empty `304` when `If-None-Match` names the tag.
/// `size_hint` is about how many bytes the body will take (see [`body`]).
pub fn json<T: Serialize>(
    headers: &HeaderMap,
    value: &T,
    size_hint: usize,
) -> Result<Response, ApiError> {
    let body = body(value, size_hint)?;
    let tag = etag(&body);
    let mut resp = if matches(headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    };
    let h = resp.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, value);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE));
    Ok(resp)
}

/// `value` written as JSON into a buffer of `size_hint` bytes from the start: a page of jobs
/// or a large result would otherwise be copied again each time the buffer doubles.
pub fn body<T: Serialize>(value: &T, size_hint: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::with_capacity(size_hint.clamp(256, 1 << 20));
    serde_json::to_writer(&mut body, value).map_err(ApiError::internal)?;
    Ok(body)
}

/// The bytes a job's record takes besides its payload and result.
pub const JOB_OVERHEAD: usize = 512;

/// About how many bytes a job's record takes as JSON.
pub fn job_size(job: &kiln_domain::Job<kiln_domain::RawJson>) -> usize {
    JOB_OVERHEAD + job.payload.get().len() + job.result.as_ref().map_or(0, |r| r.get().len())
}

/// A strong tag of `body`: 64 bits of SipHash with fixed keys, the same on every node
/// running the same build.
fn etag(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    hasher.write(body);
    format!("\"{:016x}\"", hasher.finish())
}

/// Whether `If-None-Match` lists `tag` (weak comparison, as RFC 9110 asks) or is `*`.
fn matches(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_matching_tag_answers_304_without_a_body() {
        let first = json(&HeaderMap::new(), &"a", 0).unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[ETAG].to_str().unwrap().to_owned();
        assert_eq!(first.headers()[CACHE_CONTROL], CACHE);
        for header in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            let again = json(&with(&header), &"a", 0).unwrap();
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(again.headers()[ETAG], tag.as_str());
        }
    }

    #[test]
    fn a_changed_body_gets_a_new_tag_and_a_full_answer() {
        let old = json(&HeaderMap::new(), &"a", 0).unwrap();
        let tag = old.headers()[ETAG].to_str().unwrap().to_owned();
        let new = json(&with(&tag), &"b", 0).unwrap();
        assert_eq!(new.status(), StatusCode::OK);
        assert_ne!(new.headers()[ETAG], tag.as_str());
    }
}
