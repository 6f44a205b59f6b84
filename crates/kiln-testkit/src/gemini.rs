//! [`FakeGemini`]: a fake of Google's Gemini REST API (Generative Language API, v1beta) on a
//! loopback port, for testing Kiln's Gemini client without ever reaching the real service.
//!
//! It speaks the real wire format: `POST /v1beta/models/{model}:generateContent` and the File
//! API's resumable upload (`/upload/v1beta/files`, then `GET`/`DELETE /v1beta/files/{id}`).
//! It is strict where the real service is strict (unknown fields, empty contents, a part that
//! is not exactly one kind of data, bad base64, a request over 20 MB, an unknown file, a wrong
//! key), answering with Google's error body, so a client that sends the wrong shape fails its
//! tests here rather than in production.
//!
//! Answers are scripted: [`FakeGemini::push`] queues [`Reply`]s, which the `generateContent`
//! calls that pass validation take in order; [`FakeGemini::set_default`] answers the others.
//! A call refused by validation is still recorded and counted but consumes no reply, so a
//! test's script is not shifted by a request its client got wrong.

mod files;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The largest `generateContent` request the real service takes; past it, inline data must go
/// through the File API instead.
const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

/// The answer of every call while nothing else is scripted: the JSON shape Kiln asks for.
const DEFAULT_ANSWER: &str = r#"{"summary":"fake summary","topics":["testing"],"language":"en"}"#;

/// A fake Gemini API server; its task stops when this is dropped.
pub struct FakeGemini {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// How the fake answers one `generateContent` call that passed validation.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with one candidate whose single text part is this string (`finishReason` STOP),
    /// with `usageMetadata` derived from the request and answer sizes.
    Answer(String),
    /// That HTTP status with Google's error body and, if given, `Retry-After: <seconds>`.
    Status {
        /// The HTTP status code (429, 500, 503...).
        code: u16,
        /// Seconds to put in `Retry-After` (and in the body's `RetryInfo`), if any.
        retry_after: Option<u64>,
    },
    /// Waits, then answers like [`Reply::Answer`].
    Slow {
        /// How long to wait before answering.
        delay: Duration,
        /// The answer's text.
        answer: String,
    },
    /// 200 with a body that is not JSON (cut off mid-object).
    Malformed,
    /// 200 with `promptFeedback.blockReason` SAFETY and no candidates.
    Blocked,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The HTTP method (`POST`, `GET`...).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The headers, names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server task and the test share.
struct Shared {
    api_key: String,
    base: String,
    state: Mutex<State>,
}

struct State {
    queue: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Recorded>,
    generate_calls: usize,
    /// Numbers response, upload and file ids, so that every run names them alike.
    next_id: u64,
    uploads: HashMap<String, files::Upload>,
    files: HashMap<String, files::StoredFile>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Shared {
    /// The state; a test that panicked while holding it leaves it usable for the others.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FakeGemini {
    /// Starts a fake on 127.0.0.1 with a free port, accepting `api_key` only.
    pub async fn start(api_key: &str) -> FakeGemini {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fake Gemini API");
        let addr = listener.local_addr().expect("the fake's address");
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            base: format!("http://{addr}"),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                default: Reply::Answer(DEFAULT_ANSWER.to_owned()),
                requests: Vec::new(),
                generate_calls: 0,
                next_id: 0,
                uploads: HashMap::new(),
                files: HashMap::new(),
            }),
        });
        // Uploads are larger than axum's default body limit, and an oversized
        // `generateContent` call must get Google's error, not axum's 413.
        let app = Router::new()
            .fallback(handle)
            .with_state(shared.clone())
            .layer(DefaultBodyLimit::disable());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGemini { shared, server }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// Queues a reply for the next `generateContent` call (first in, first out).
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Sets the reply used while the queue is empty.
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Every request received so far, in order (`generateContent`, File API and others).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many `generateContent` calls arrived, whatever their answer.
    pub fn generate_calls(&self) -> usize {
        self.shared.lock().generate_calls
    }

    /// Waits until at least `n` `generateContent` calls have arrived; panics after 30 s.
    pub async fn wait_for_calls(&self, n: usize) {
        crate::wait_until(
            &format!("{n} generateContent calls to the fake Gemini API"),
            Duration::from_secs(30),
            || {
                let seen = self.generate_calls();
                async move { if seen >= n { Ok(()) } else { Err(seen) } }
            },
        )
        .await;
    }
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Every request lands here: the real paths put a `:` inside the last segment
/// (`models/gemini-2.5-flash:generateContent`), which a router cannot split, so the fake
/// routes by hand.
async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let model = generate_target(&method, &path);
    {
        let mut state = shared.lock();
        state.requests.push(Recorded {
            method: method.as_str().to_owned(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), value)
                })
                .collect(),
            body: body.to_vec(),
            json: serde_json::from_slice(&body).ok(),
            at: Instant::now(),
        });
        if model.is_some() {
            state.generate_calls += 1;
        }
    }
    let query = query.as_deref();
    if let Some(model) = model {
        return generate_content(&shared, &model, &headers, query, &body).await;
    }
    match (&method, path.as_str()) {
        (&Method::POST, "/upload/v1beta/files") => files::upload(&shared, &headers, query, &body),
        (_, p) if p.starts_with("/v1beta/files/") => {
            let id = &p["/v1beta/files/".len()..];
            files::resource(&shared, &method, id, &headers, query)
        }
        _ => google_error(404, "NOT_FOUND", "Method not found.", None).into_response(),
    }
}

/// The model of a `POST /v1beta/models/{model}:generateContent` call (a client may send the
/// `:` percent-encoded, which the real front end decodes).
fn generate_target(method: &Method, path: &str) -> Option<String> {
    let segment = path.strip_prefix("/v1beta/models/")?.replace("%3A", ":");
    let segment = segment.replace("%3a", ":");
    let (model, verb) = segment.split_once(':')?;
    let valid = method == Method::POST && verb == "generateContent";
    (valid && !model.is_empty() && !model.contains('/')).then(|| model.to_owned())
}

async fn generate_content(
    shared: &Shared,
    model: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    if let Err(refused) = authorize(shared, headers, query) {
        return refused.into_response();
    }
    if body.len() > MAX_REQUEST_BYTES {
        let message = format!("Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes.");
        return bad_request(&message).into_response();
    }
    let (checked, reply, id) = {
        let mut state = shared.lock();
        let exists = |uri: &str| files::exists(&state, &shared.base, uri);
        let checked = match validate::generate_request(body, &exists) {
            Ok(checked) => checked,
            Err(refused) => return refused.into_response(),
        };
        let reply = match state.queue.pop_front() {
            Some(reply) => reply,
            None => state.default.clone(),
        };
        (checked, reply, state.next_id())
    };
    // Any deterministic count will do; this one grows with the text sent and, like the real
    // service (258 tokens a PDF page or image), charges a fixed amount per media part.
    let prompt_tokens = (checked.text_chars / 4 + 258 * checked.media_parts).max(1);
    match reply {
        Reply::Answer(text) => answer(model, prompt_tokens, &text, id),
        Reply::Slow {
            delay,
            answer: text,
        } => {
            tokio::time::sleep(delay).await;
            answer(model, prompt_tokens, &text, id)
        }
        Reply::Status { code, retry_after } => scripted_status(code, retry_after),
        Reply::Malformed => json_response(
            StatusCode::OK,
            r#"{"candidates": [{"content": {"parts": [{"text": "cut off"#.to_owned(),
        ),
        Reply::Blocked => {
            let body = json!({
                "promptFeedback": {
                    "blockReason": "SAFETY",
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                    ]
                },
                "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
                "modelVersion": model,
                "responseId": format!("fake-response-{id}"),
            });
            json_response(StatusCode::OK, body.to_string())
        }
    }
}

fn answer(model: &str, prompt_tokens: usize, text: &str, id: u64) -> Response {
    let answer_tokens = (text.chars().count() / 4).max(1);
    let body = json!({
        "candidates": [{
            "content": {"parts": [{"text": text}], "role": "model"},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens
        },
        "modelVersion": model,
        "responseId": format!("fake-response-{id}"),
    });
    json_response(StatusCode::OK, body.to_string())
}

/// A scripted failure, with the status name and message the real service gives for it.
fn scripted_status(code: u16, retry_after: Option<u64>) -> Response {
    let (status, message) = match code {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission"),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        429 => (
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        499 => ("CANCELLED", "The operation was cancelled."),
        500 => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report.",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        _ => ("UNKNOWN", "Unknown error."),
    };
    // The real service says how long to wait in a `RetryInfo` detail; the header is for
    // clients that honour the HTTP convention.
    let details = retry_after.map(|secs| {
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}])
    });
    let mut response = google_error(code, status, message, details).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, secs.to_string().parse().expect("digits"));
    }
    response
}

/// Checks the API key, sent as `x-goog-api-key` or `?key=`, as the real service does: none is
/// a 403, a wrong one a 400 `API_KEY_INVALID`.
fn authorize(shared: &Shared, headers: &HeaderMap, query: Option<&str>) -> Result<(), Refusal> {
    match api_key(headers, query) {
        None => Err(google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
            None,
        )),
        Some(key) if key == shared.api_key => Ok(()),
        Some(_) => Err(google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            }])),
        )),
    }
}

fn api_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match headers.get("x-goog-api-key") {
        Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        None => query_param(query, "key"),
    }
}

/// One parameter of a query string (API keys and upload ids need no percent-decoding).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A refusal in Google's error format: `{"error": {"code", "message", "status", "details"?}}`.
/// Plain data rather than a built response, so that it travels cheaply in a `Result`.
struct Refusal {
    code: u16,
    status: &'static str,
    message: String,
    details: Option<Value>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let http = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(http, json!({ "error": error }).to_string())
    }
}

fn google_error(code: u16, status: &'static str, message: &str, details: Option<Value>) -> Refusal {
    Refusal {
        code,
        status,
        message: message.to_owned(),
        details,
    }
}

/// A 400 INVALID_ARGUMENT naming the problem.
fn bad_request(message: &str) -> Refusal {
    google_error(400, "INVALID_ARGUMENT", message, None)
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json; charset=UTF-8")],
        body,
    )
        .into_response()
}
