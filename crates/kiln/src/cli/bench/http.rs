//! The benchmark's HTTP/1.1 client: hyper with keep-alive and a connection pool as large as
//! the number of concurrent workers, a bearer token, and bodies read whole; `https://` URLs
//! through rustls ([`crate::tls::client`]: the system's roots plus `--ca-cert`).
//!
//! Written on hyper directly (not the test kit) because its errors must be values the
//! benchmark reports, not panics.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client for one server, or for several nodes of one cluster taken in turn (see
/// [`Client::spread_over`]); cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Client {
    base: String,
    /// With several nodes: every node's base URL, and the turn counter shared by clones.
    spread: Option<(Arc<[String]>, Arc<AtomicUsize>)>,
    auth: Option<HeaderValue>,
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response read whole.
pub struct Response {
    /// The response status; any status is returned, and [`Response::json_if`] turns an
    /// unexpected one into an error.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the response is not JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as JSON if the status is `expected`, else an error naming both.
    pub fn json_if(self, expected: u16, what: &str) -> anyhow::Result<Value> {
        if self.status.as_u16() != expected {
            bail!(
                "{what}: expected {expected}, got {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            );
        }
        self.json()
    }
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080` or `https://…`) keeping up to
    /// `connections` idle connections open; `ca_cert` is trusted besides the system's roots.
    pub fn new(base: &str, connections: usize, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let connector = crate::tls::client::connector(ca_cert, None)?;
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            spread: None,
            auth: None,
            inner,
        })
    }

    /// The same client sending each request to the next of `bases` in turn (the nodes of
    /// one cluster, which share a database: any of them answers for all).
    pub fn spread_over(mut self, bases: &[String]) -> Self {
        if bases.len() > 1 {
            let bases: Arc<[String]> = bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect();
            self.spread = Some((bases, Arc::new(AtomicUsize::new(0))));
        }
        self
    }

    /// The base URL of the next request.
    fn base(&self) -> &str {
        match &self.spread {
            Some((bases, turn)) => &bases[turn.fetch_add(1, Ordering::Relaxed) % bases.len()],
            None => &self.base,
        }
    }

    /// Sends every later request with `Authorization: Bearer token`.
    pub fn with_token(mut self, token: &str) -> anyhow::Result<Self> {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        self.auth = Some(value);
        Ok(self)
    }

    /// The same client (and connection pool) sending no `Authorization` header.
    pub fn anonymous(&self) -> Self {
        Self {
            auth: None,
            ..self.clone()
        }
    }

    /// Logs in and returns the session token.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({"username": username, "password": password});
        let resp = self
            .send(Method::POST, "/api/v1/auth/login", Some(json_bytes(&body)))
            .await?;
        let json = resp.json_if(200, "login")?;
        json["token"]
            .as_str()
            .map(str::to_owned)
            .context("the login response has no token")
    }

    /// `GET path` (relative to the base URL); the whole response is read.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.send(Method::GET, path, None).await
    }

    /// `method path` with an optional JSON body; the whole response is read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        let (status, body) = self.call(method, path, "application/json", body).await?;
        let body = body
            .collect()
            .await
            .context("while reading a response body")?
            .to_bytes();
        Ok(Response { status, body })
    }

    /// Sends a request and returns once the response head has arrived.
    async fn call(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, hyper::body::Incoming)> {
        let base = self.base();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header(ACCEPT, accept);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .context("while building a request")?;
        let resp = self
            .inner
            .request(req)
            .await
            .with_context(|| format!("while calling {base}{path}"))?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, body))
    }

    /// `GET path` with `Accept: accept`, returning as soon as the head arrives; the body is
    /// read as it streams (an SSE stream, say).
    pub async fn open(
        &self,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<(StatusCode, hyper::body::Incoming)> {
        self.call(Method::GET, path, accept, None).await
    }
}

/// A JSON value as a request body.
pub fn json_bytes(value: &Value) -> Bytes {
    // Serialising a `Value` cannot fail: its keys are strings.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
