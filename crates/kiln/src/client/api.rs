//! [`Api`]: the client commands' HTTP client: a base URL, a bearer token, JSON in and
//! out, streamed bodies both ways, and every failure turned into a [`CliError`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::error::{CliError, CliResult, Kind};

/// A request body: whole, or streamed from a file.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a request (not a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one Kiln server.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

/// A body as a request [`Body`].
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Api {
    /// A client for `base` (`http://host:port` or `https://…`), trusting `tls.ca_cert`
    /// besides the system's roots and presenting `tls.client_cert` when asked.
    pub fn new(base: &str, token: Option<String>, tls: &super::Conn) -> CliResult<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--url `{base}` must start with http:// or https://"
            )));
        }
        let identity = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(CliError::usage(
                    "give --client-cert and --client-key together",
                ));
            }
        };
        let connector = crate::tls::client::connector(tls.ca_cert.as_deref(), identity)
            .map_err(|e| CliError::usage(format!("TLS: {e:#}")))?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            token,
            client,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET path` → JSON.
    pub async fn get(&self, path: &str) -> CliResult<Value> {
        self.json(Method::GET, path, None).await
    }

    /// `method path` with an optional JSON body → the JSON answer (`null` for 204).
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> CliResult<Value> {
        self.json_with(method, path, body, &[]).await
    }

    /// [`Api::json`] with extra headers.
    pub async fn json_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&'static str, String)],
    ) -> CliResult<Value> {
        let (content_type, bytes) = match body {
            Some(v) => (Some("application/json".to_owned()), full(v.to_string())),
            None => (None, full(Bytes::new())),
        };
        let resp = self
            .call(
                method,
                path,
                "application/json",
                content_type,
                headers,
                bytes,
            )
            .await?;
        let bytes = read_all(resp).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::server(format!("the server's answer is not JSON: {e}")))
    }

    /// `GET path` as text.
    pub async fn text(&self, path: &str) -> CliResult<String> {
        let resp = self
            .call(
                Method::GET,
                path,
                "text/plain",
                None,
                &[],
                full(Bytes::new()),
            )
            .await?;
        let bytes = read_all(resp).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends `body` of `content_type` (an upload) → the JSON answer.
    pub async fn upload(&self, path: &str, content_type: String, body: Body) -> CliResult<Value> {
        let json = "application/json";
        let request = self.request(Method::POST, path, json, Some(content_type), &[], body)?;
        let resp = self.send(request, None).await?;
        let bytes = read_all(resp).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::server(format!("the server's answer is not JSON: {e}")))
    }

    /// `GET path` with `accept`, answered as soon as the head arrives (an error status is
    /// read whole and returned as its problem); the body streams.
    pub async fn open(&self, path: &str, accept: &str) -> CliResult<Response<Incoming>> {
        let request = self.request(Method::GET, path, accept, None, &[], full(Bytes::new()))?;
        self.send(request, None).await
    }

    /// [`Api::open`] of an SSE stream, resuming after the event `last_id`.
    pub async fn open_resuming(&self, path: &str, last_id: &str) -> CliResult<Response<Incoming>> {
        let headers = [("last-event-id", last_id.to_owned())];
        let request = self.request(
            Method::GET,
            path,
            "text/event-stream",
            None,
            &headers,
            full(Bytes::new()),
        )?;
        self.send(request, None).await
    }

    /// A request with a time limit on the answer's head.
    async fn call(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        content_type: Option<String>,
        headers: &[(&'static str, String)],
        body: Body,
    ) -> CliResult<Response<Incoming>> {
        let request = self.request(method, path, accept, content_type, headers, body)?;
        self.send(request, Some(REQUEST_TIMEOUT)).await
    }

    /// Sends `request`; with `limit`, the answer's head must come within it (a stream or an
    /// upload may take as long as it takes). An error status becomes its problem.
    async fn send(
        &self,
        request: Request<Body>,
        limit: Option<Duration>,
    ) -> CliResult<Response<Incoming>> {
        let sent = self.client.request(request);
        let resp = match limit {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| {
                CliError::server(format!(
                    "{} did not answer within {} s",
                    self.base,
                    limit.as_secs()
                ))
            })?,
            None => sent.await,
        };
        check(resp.map_err(|e| self.unreachable(&e))?).await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        content_type: Option<String>,
        headers: &[(&'static str, String)],
        body: Body,
    ) -> CliResult<Request<Body>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(ACCEPT, accept);
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| CliError::new(Kind::Auth, "the token is not a valid header value"))?;
            req = req.header(AUTHORIZATION, value);
        }
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        req.body(body)
            .map_err(|e| CliError::usage(format!("cannot build the request: {e}")))
    }

    fn unreachable(&self, e: &hyper_util::client::legacy::Error) -> CliError {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        CliError::server(format!("cannot reach {}: {cause}", self.base))
    }
}

/// An error status becomes its problem; a success passes through.
async fn check(resp: Response<Incoming>) -> CliResult<Response<Incoming>> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let bytes = read_all(resp).await.unwrap_or_default();
    Err(CliError::from_response(status.as_u16(), &bytes))
}

/// The whole body.
pub async fn read_all(resp: Response<Incoming>) -> CliResult<Bytes> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| CliError::server(format!("the answer was cut off: {e}")))
}
