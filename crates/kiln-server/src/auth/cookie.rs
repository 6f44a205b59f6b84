//! The dashboard's session cookie and the CSRF rules that come with it.
//!
//! The dashboard signs in with a form and keeps the session token in an HttpOnly cookie,
//! `__Host-kiln_session` (`Secure`, `Path=/`, `SameSite=Strict`): no script, URL or
//! storage ever holds it, and `EventSource` sends it like any same-origin request.
//! A cookie is sent by the browser on its own, so a request authenticated by it that
//! changes something (POST, PUT, PATCH, DELETE) must also show that it comes from one of
//! Kiln's own pages: an `Origin` naming this server, and an `X-Kiln-Csrf` header with the
//! token derived from the session ([`csrf_token`]), which only a page holding the
//! session can know (pages carry it in a `<meta>` tag). `SameSite=Strict` alone is not
//! enough: a sibling host of the same site still sends the cookie.
//!
//! Bearer tokens (`Authorization`) are unaffected and take precedence.

use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// The session cookie's name. The `__Host-` prefix makes the browser refuse it unless it is
/// `Secure`, host-only and for `Path=/`: no sibling host can set or shadow it.
pub const SESSION_COOKIE: &str = "__Host-kiln_session";

/// The header a page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-kiln-csrf";

/// The session token in the request's cookies, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    get(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` the request carries, if any (and not empty).
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The CSRF token of a session: SHA-256 of a fixed label and the session's secret, in hex.
/// Nothing is stored; the server derives it again on each request.
pub fn csrf_token(session: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"kiln-csrf:");
    hash.update(session.as_bytes());
    hex::encode(hash.finalize())
}

/// Whether a request with this method changes state (and so needs the CSRF proof).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// 403 `csrf_failed` unless the request comes from one of this server's pages: `Origin`
/// names the host the request was sent to, and `X-Kiln-Csrf` holds the session's token.
pub fn check_csrf(parts: &Parts, session: &str) -> Result<(), ApiError> {
    if !same_origin(&parts.headers, &parts.uri) {
        return Err(csrf_failed(
            "a request signed in by the dashboard's cookie must come from the dashboard (its Origin is another site's or missing)",
        ));
    }
    let sent = parts
        .headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if !constant_time_eq(sent, csrf_token(session).as_bytes()) {
        return Err(csrf_failed(
            "a request signed in by the dashboard's cookie needs the page's `X-Kiln-Csrf` token",
        ));
    }
    Ok(())
}

/// Whether `Origin` is present and names the host (and port) this request was sent to.
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((_scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    request_host(headers, uri).is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// The host (and port) the request was sent to: its `Host` header, or the URI's authority.
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Adds the cookie `value` (a whole `Set-Cookie` value) to `resp`.
pub fn append(resp: &mut axum::response::Response, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        resp.headers_mut().append(SET_COOKIE, value);
    }
}

fn csrf_failed(detail: &'static str) -> ApiError {
    ApiError::new(axum::http::StatusCode::FORBIDDEN, "csrf_failed", detail)
}

/// Equality that takes as long for every mismatch of the same length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value that stores `token` for `max_age` seconds.
pub fn set_session(token: &str, max_age: u64) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_session() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().method(method).uri("/api/v1/jobs");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn the_session_is_found_among_other_cookies() {
        let p = parts(
            Method::GET,
            &[("cookie", "a=1; __Host-kiln_session=kiln_abc ; b=2")],
        );
        assert_eq!(session_token(&p.headers), Some("kiln_abc"));
        let p = parts(Method::GET, &[("cookie", "kiln_session=x; a=1")]);
        assert_eq!(session_token(&p.headers), None);
        let p = parts(Method::GET, &[("cookie", "__Host-kiln_session=")]);
        assert_eq!(session_token(&p.headers), None);
    }

    #[test]
    fn csrf_needs_our_origin_and_the_sessions_token() {
        let token = csrf_token("kiln_s");
        assert_ne!(token, csrf_token("kiln_t"));
        let host = ("host", "127.0.0.1:8080");
        let good = [
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("x-kiln-csrf", &token),
        ];
        assert!(check_csrf(&parts(Method::POST, &good), "kiln_s").is_ok());
        // Another session's token, another origin, no origin, no token: all refused.
        assert!(check_csrf(&parts(Method::POST, &good), "kiln_t").is_err());
        let other = [
            host,
            ("origin", "http://evil.test"),
            ("x-kiln-csrf", &token),
        ];
        assert!(check_csrf(&parts(Method::POST, &other), "kiln_s").is_err());
        let none = [host, ("x-kiln-csrf", &token)];
        assert!(check_csrf(&parts(Method::POST, &none), "kiln_s").is_err());
        let bare = [host, ("origin", "http://127.0.0.1:8080")];
        let err = check_csrf(&parts(Method::POST, &bare), "kiln_s").expect_err("refused");
        assert_eq!(err.code, "csrf_failed");
        assert!(is_unsafe(&Method::DELETE) && !is_unsafe(&Method::GET));
    }
}
