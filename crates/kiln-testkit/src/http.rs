//! A small HTTP/1.1 client for tests: keep-alive, bearer tokens, JSON in and out.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client bound to one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// The response status; any status is returned, so tests assert on it.
    pub status: StatusCode,
    /// The response headers; [`TestResponse::header`] reads one as text.
    pub headers: HeaderMap,
    /// The whole body, read before the response was returned.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request being built.
pub struct RequestBuilder<'a> {
    client: &'a Client,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Client {
    /// A client for `http://addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Starts a request to `path` (e.g. `/api/v1/jobs`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `GET path` with an optional token.
    pub async fn get(&self, token: Option<&str>, path: &str) -> TestResponse {
        self.request(Method::GET, path).bearer(token).send().await
    }

    /// `method path` with a JSON body and an optional token.
    pub async fn send_json(
        &self,
        method: Method,
        token: Option<&str>,
        path: &str,
        body: &Value,
    ) -> TestResponse {
        self.request(method, path)
            .bearer(token)
            .json(body)
            .send()
            .await
    }

    /// Logs in and returns the bearer token (panics unless 200).
    pub async fn login(&self, username: &str, password: &str) -> String {
        let body = serde_json::json!({"username": username, "password": password});
        let resp = self
            .send_json(Method::POST, None, "/api/v1/auth/login", &body)
            .await;
        assert_eq!(resp.status, StatusCode::OK, "login failed: {}", resp.text());
        resp.json()["token"].as_str().expect("a token").to_owned()
    }
}

impl RequestBuilder<'_> {
    /// Adds `Authorization: Bearer token` when a token is given.
    pub fn bearer(self, token: Option<&str>) -> Self {
        match token {
            Some(t) => self.header(AUTHORIZATION.as_str(), &format!("Bearer {t}")),
            None => self,
        }
    }

    /// Adds a header; panics if the name or value is not valid.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.push((name, value));
        self
    }

    /// Sets a JSON body.
    pub fn json(self, body: &Value) -> Self {
        let bytes = serde_json::to_vec(body).expect("serialisable JSON");
        self.header(CONTENT_TYPE.as_str(), "application/json")
            .raw(bytes)
    }

    /// Sets a `multipart/form-data` body of `parts`.
    pub fn multipart(self, parts: &[Part<'_>]) -> Self {
        let (content_type, body) = multipart_body(parts);
        self.header(CONTENT_TYPE.as_str(), &content_type).raw(body)
    }

    /// Sets a raw body.
    pub fn raw(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends it and returns as soon as the response head arrives.
    pub async fn open(self) -> Streaming {
        let mut req = Request::builder()
            .method(self.method)
            .uri(format!("{}{}", self.client.base, self.path));
        for (name, value) in self.headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(self.body)).expect("a valid request");
        let resp = self
            .client
            .inner
            .request(req)
            .await
            .expect("the server answers");
        let (parts, body) = resp.into_parts();
        Streaming {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends it and reads the whole response.
    pub async fn send(self) -> TestResponse {
        let streaming = self.open().await;
        let (status, headers) = (streaming.status, streaming.headers.clone());
        let body = streaming
            .body
            .collect()
            .await
            .expect("a readable body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }
}

/// A response whose body is read as it arrives (a live stream).
pub struct Streaming {
    /// The response status, known once the response head has arrived.
    pub status: StatusCode,
    /// The response headers (e.g. `content-type: text/event-stream` for a live stream).
    pub headers: HeaderMap,
    body: hyper::body::Incoming,
}

impl Streaming {
    /// The next chunk of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    /// Reads the body until it holds `marker` and the event or line it is in has ended
    /// (or the body ends), and returns the text read.
    pub async fn rest_until(mut self, marker: &str) -> String {
        let mut text = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            text.extend_from_slice(&chunk);
            let seen = String::from_utf8_lossy(&text);
            if let Some(at) = seen.find(marker)
                && seen[at..].contains("\n\n")
            {
                break;
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Reads the rest of the body, up to its end.
    pub async fn rest(mut self) -> String {
        let mut text = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            text.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The form field's name (`name=` in `Content-Disposition`).
    pub name: &'a str,
    /// The file name, for a file part.
    pub file_name: Option<&'a str>,
    /// The part's `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// The part's content, sent as is.
    pub data: &'a [u8],
}

impl<'a> Part<'a> {
    /// A file part `name` holding `data` as `file_name` of type `content_type`.
    pub fn file(name: &'a str, file_name: &'a str, content_type: &'a str, data: &'a [u8]) -> Self {
        Self {
            name,
            file_name: Some(file_name),
            content_type: Some(content_type),
            data,
        }
    }

    /// A plain text field.
    pub fn text(name: &'a str, value: &'a str) -> Self {
        Self {
            name,
            file_name: None,
            content_type: None,
            data: value.as_bytes(),
        }
    }
}

/// The `Content-Type` header and the body of a `multipart/form-data` request.
pub fn multipart_body(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "kiln-test-boundary-7d3f9a";
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(file_name) = part.file_name {
            disposition.push_str(&format!("; filename=\"{file_name}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(ct) = part.content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(part.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}
