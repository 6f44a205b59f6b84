//! The Gemini REST client: `models/{model}:generateContent` with the PDF inline (base64) or,
//! above the inline limit, uploaded first through the File API (resumable upload), and
//! a structured JSON answer requested (`responseMimeType` + `responseSchema`) and checked.
//!
//! Written on hyper (the client every other outgoing call of Kiln's uses) rather than
//! pulling in a vendor SDK: two endpoints, and the error classification below is what the
//! job's retries and the circuit breaker need.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The HTTP client the model calls go through (`http://` and `https://`).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The most bytes of an answer read (answers are a few KiB of JSON).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Where and how to call the model.
#[derive(Debug, Clone)]
pub struct GeminiConfig {
    /// The API key (`x-goog-api-key`).
    pub api_key: String,
    /// The model name, e.g. `gemini-2.5-flash`.
    pub model: String,
    /// The API's base URL, without a trailing slash.
    pub base_url: String,
    /// The longest one HTTP exchange may take.
    pub timeout: Duration,
    /// PDFs larger than this go through the File API instead of inline (the API refuses
    /// requests over 20 MB; base64 adds a third).
    pub inline_limit: usize,
}

impl GeminiConfig {
    /// The default model.
    pub const DEFAULT_MODEL: &str = "gemini-2.5-flash";
    /// The public API.
    pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
    /// 14 MiB: its base64 and the prompt stay under the 20 MB request limit.
    pub const DEFAULT_INLINE_LIMIT: usize = 14 << 20;
}

/// The model's answer, checked against [`answer_schema`].
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The JSON object the model wrote.
    pub analysis: Value,
    /// Tokens of the request, as the API counted them.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
    /// How long the call took (the upload included).
    pub latency_ms: f64,
    /// The model version that answered, if the API said.
    pub model_version: Option<String>,
    /// Whether the PDF went through the File API.
    pub uploaded: bool,
}

/// Why a call gave no answer, classified for retries and the circuit breaker.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 429: the API's quota; retry no sooner than `retry_after` when it said.
    #[error("the model's API is rate limiting (429): {message}")]
    RateLimited {
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The API's message.
        message: String,
    },
    /// 5xx, a time-out, a broken connection or a malformed answer: the model's side.
    #[error("the model's API failed: {0}")]
    Unavailable(String),
    /// Another 4xx: the request itself is wrong; no retry can succeed.
    #[error("the model's API refused the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The model declined to answer (a safety block).
    #[error("the model declined to answer: {0}")]
    Blocked(String),
}

impl CallError {
    /// Whether the failure says something about the model's health (and so counts for
    /// its circuit breaker): not a request of ours it refused, nor a refusal to answer.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            CallError::RateLimited { .. } | CallError::Unavailable(_)
        )
    }
}

/// The JSON Schema (the API's OpenAPI subset) the model's answer must follow.
pub fn answer_schema() -> Value {
    json!({
        "type": "OBJECT",
        "properties": {
            "summary": {"type": "STRING", "description": "what the document is and says, in 2-5 sentences"},
            "topics": {"type": "ARRAY", "items": {"type": "STRING"}, "description": "up to 10 short topics"},
            "language": {"type": "STRING", "description": "the document's language, an ISO 639-1 code"},
            "answer": {"type": "STRING", "description": "the answer to the user's question, when one is asked"},
        },
        "required": ["summary", "topics", "language"],
    })
}

/// The instruction every call carries.
const SYSTEM: &str = "You analyse PDF documents. Answer only with a JSON object: `summary` \
    (what the document is and says, 2-5 sentences), `topics` (up to 10 short topics), \
    `language` (an ISO 639-1 code) and, when the user asks a question, `answer`.";

/// The prompt when the job has none.
pub const DEFAULT_PROMPT: &str = "Summarise this document.";

/// A client of one model.
#[derive(Debug, Clone)]
pub struct Gemini {
    config: GeminiConfig,
    http: HttpClient,
}

impl Gemini {
    /// A client calling `config`'s model through `http`.
    pub fn new(config: GeminiConfig, http: HttpClient) -> Self {
        Self { config, http }
    }

    /// The settings.
    pub fn config(&self) -> &GeminiConfig {
        &self.config
    }

    /// Asks the model about `pdf` with `prompt`.
    pub async fn analyse(&self, pdf: &[u8], prompt: &str) -> Result<Answer, CallError> {
        let started = Instant::now();
        let uploaded = pdf.len() > self.config.inline_limit;
        let document = if uploaded {
            let uri = self.upload(pdf).await?;
            json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}})
        } else {
            let data = base64::engine::general_purpose::STANDARD.encode(pdf);
            json!({"inlineData": {"mimeType": "application/pdf", "data": data}})
        };
        let body = json!({
            "systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [document, {"text": prompt}]}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": answer_schema(),
            },
        });
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            self.config.base_url, self.config.model
        );
        let (_, answer) = self.post(&url, &[], body.to_string().into()).await?;
        let mut parsed = parse_answer(&answer)?;
        parsed.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        parsed.uploaded = uploaded;
        Ok(parsed)
    }

    /// Uploads `pdf` through the File API (start, then upload and finalize in one
    /// request); returns the file's URI.
    async fn upload(&self, pdf: &[u8]) -> Result<String, CallError> {
        let start = format!("{}/upload/v1beta/files", self.config.base_url);
        let length = pdf.len().to_string();
        let headers = [
            ("x-goog-upload-protocol", "resumable"),
            ("x-goog-upload-command", "start"),
            ("x-goog-upload-header-content-length", length.as_str()),
            ("x-goog-upload-header-content-type", "application/pdf"),
        ];
        let body = json!({"file": {"display_name": "kiln-document.pdf"}});
        let (headers, _) = self.post(&start, &headers, body.to_string().into()).await?;
        let url = headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| CallError::Unavailable("the upload start gave no upload URL".into()))?
            .to_owned();
        let finish = [
            ("x-goog-upload-command", "upload, finalize"),
            ("x-goog-upload-offset", "0"),
        ];
        let (_, file) = self
            .post(&url, &finish, Bytes::copy_from_slice(pdf))
            .await?;
        file.pointer("/file/uri")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| CallError::Unavailable("the upload answer has no file URI".into()))
    }

    /// POSTs `body` (JSON unless the headers say otherwise) with the key; the answer's
    /// headers and JSON body, or the failure classified.
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(hyper::HeaderMap, Value), CallError> {
        let mut req = Request::post(url)
            .header("x-goog-api-key", &self.config.api_key)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body)).map_err(|e| CallError::Rejected {
            status: 0,
            message: format!("cannot build the request: {e}"),
        })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CallError::Unavailable(format!("cannot reach {url}: {e}")))?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Unavailable(format!("the answer broke off: {e}")))?
                .to_bytes();
            Ok::<_, CallError>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| {
                CallError::Unavailable(format!(
                    "no answer within {} s",
                    self.config.timeout.as_secs_f64()
                ))
            })??;
        let status = parts.status.as_u16();
        if !parts.status.is_success() {
            let message = error_message(&bytes);
            return Err(match status {
                429 => CallError::RateLimited {
                    retry_after: parts
                        .headers
                        .get(RETRY_AFTER)
                        .and_then(retry_after)
                        .or_else(|| retry_delay(&bytes)),
                    message,
                },
                500..=599 => CallError::Unavailable(format!("{status}: {message}")),
                _ => CallError::Rejected { status, message },
            });
        }
        // The upload's start answers with headers only.
        if bytes.is_empty() {
            return Ok((parts.headers, Value::Null));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Unavailable(format!("the answer is not JSON ({status}): {e}"))
        })?;
        Ok((parts.headers, value))
    }
}

/// `Retry-After` in seconds (the API sends seconds, not dates).
fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let secs: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3_600.0)))
}

/// The delay of a `google.rpc.RetryInfo` detail in Google's error body
/// (`"retryDelay": "7s"`), which is how the API says when to come back.
fn retry_delay(body: &[u8]) -> Option<Duration> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let details = body.pointer("/error/details")?.as_array()?;
    let delay = details.iter().find_map(|d| d.get("retryDelay")?.as_str())?;
    let secs: f64 = delay.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3_600.0)))
}

/// The message of Google's error body (`{"error": {"message": …}}`), or the body's start.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// The answer of a `generateContent` response: its first candidate's text, which must be a
/// JSON object with the schema's required fields, and the token counts.
pub fn parse_answer(response: &Value) -> Result<Answer, CallError> {
    if let Some(reason) = response
        .pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str)
    {
        return Err(CallError::Blocked(reason.to_owned()));
    }
    let candidate = response
        .pointer("/candidates/0")
        .ok_or_else(|| CallError::Unavailable("the answer has no candidate".into()))?;
    if let Some(reason @ ("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT")) =
        candidate.get("finishReason").and_then(Value::as_str)
    {
        return Err(CallError::Blocked(reason.to_owned()));
    }
    let text: String = candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let analysis: Value = serde_json::from_str(&text).map_err(|e| {
        CallError::Unavailable(format!("the model's answer is not the JSON asked for: {e}"))
    })?;
    check_analysis(&analysis).map_err(CallError::Unavailable)?;
    let tokens = |name: &str| {
        response
            .pointer(&format!("/usageMetadata/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Answer {
        analysis,
        prompt_tokens: tokens("promptTokenCount"),
        output_tokens: tokens("candidatesTokenCount"),
        latency_ms: 0.0,
        model_version: response
            .get("modelVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        uploaded: false,
    })
}

/// Checks an analysis against [`answer_schema`]'s required fields and types.
fn check_analysis(analysis: &Value) -> Result<(), String> {
    let Some(object) = analysis.as_object() else {
        return Err("the model's answer is not a JSON object".into());
    };
    for field in ["summary", "language"] {
        if !object.get(field).is_some_and(Value::is_string) {
            return Err(format!("the model's answer has no text `{field}`"));
        }
    }
    let topics_ok = object
        .get("topics")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().all(Value::is_string));
    if !topics_ok {
        return Err("the model's answer has no list of text `topics`".into());
    }
    if object.get("answer").is_some_and(|a| !a.is_string()) {
        return Err("the model's `answer` is not text".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(text: &str) -> Value {
        json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 80, "totalTokenCount": 1280},
            "modelVersion": "gemini-test-001",
        })
    }

    #[test]
    fn an_answer_is_parsed_with_its_token_counts() {
        let answer = parse_answer(&response(
            r#"{"summary":"s","topics":["a","b"],"language":"en"}"#,
        ))
        .expect("a valid answer");
        assert_eq!(answer.analysis["topics"], json!(["a", "b"]));
        assert_eq!((answer.prompt_tokens, answer.output_tokens), (1200, 80));
        assert_eq!(answer.model_version.as_deref(), Some("gemini-test-001"));
    }

    #[test]
    fn answers_off_the_schema_are_refused_as_the_models_failure() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"summary":"s","language":"en"}"#,
            r#"{"summary":"s","topics":[1],"language":"en"}"#,
            r#"{"summary":"s","topics":[],"language":"en","answer":3}"#,
        ] {
            let e = parse_answer(&response(bad)).expect_err(bad);
            assert!(matches!(e, CallError::Unavailable(_)), "{bad}: {e}");
            assert!(e.is_outage());
        }
    }

    #[test]
    fn blocked_prompts_and_candidates_are_permanent() {
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
        assert!(matches!(parse_answer(&blocked), Err(CallError::Blocked(_))));
        let mut safety = response("{}");
        safety["candidates"][0]["finishReason"] = json!("SAFETY");
        let e = parse_answer(&safety).expect_err("blocked");
        assert!(!e.is_outage());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(retry_after(&v("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&v("1.5")), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&v("soon")), None);
        assert_eq!(retry_after(&v("-1")), None);
    }

    #[test]
    fn retry_info_in_the_body_gives_the_delay() {
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
        ]}});
        let bytes = body.to_string().into_bytes();
        assert_eq!(retry_delay(&bytes), Some(Duration::from_secs(7)));
        assert_eq!(retry_delay(b"{}"), None);
    }
}
