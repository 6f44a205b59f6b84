//! The fake driven over real HTTP on loopback: what a correct client gets, and what a client
//! that sends the wrong shape is refused with.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::validate::decode_base64;
use super::{DEFAULT_ANSWER, FakeGemini, Reply};
use crate::http::{Client, TestResponse};

const KEY: &str = "test-key-1234";
const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n";

fn client(fake: &FakeGemini) -> Client {
    let addr = fake.base_url().trim_start_matches("http://").parse();
    Client::new(addr.expect("the fake's base URL holds a socket address"))
}

async fn generate(fake: &FakeGemini, body: &Value) -> TestResponse {
    client(fake)
        .request(Method::POST, GENERATE)
        .header("x-goog-api-key", KEY)
        .json(body)
        .send()
        .await
}

fn prompt(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

fn answer_text(resp: &TestResponse) -> String {
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let text = &resp.json()["candidates"][0]["content"]["parts"][0]["text"];
    text.as_str().expect("an answer text").to_owned()
}

fn assert_error(resp: &TestResponse, code: u16, status: &str, needle: &str) {
    assert_eq!(resp.status.as_u16(), code, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    let message = body["error"]["message"].as_str().expect("an error message");
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

/// Standard base64 with padding, as a client would send it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn upload_start(client: &Client, length: usize) -> crate::http::RequestBuilder<'_> {
    client
        .request(Method::POST, "/upload/v1beta/files")
        .header("x-goog-api-key", KEY)
        .header("X-Goog-Upload-Protocol", "resumable")
        .header("X-Goog-Upload-Command", "start")
        .header("X-Goog-Upload-Header-Content-Length", &length.to_string())
        .header("X-Goog-Upload-Header-Content-Type", "application/pdf")
}

#[tokio::test]
async fn a_valid_request_gets_the_answer_with_usage() {
    let fake = FakeGemini::start(KEY).await;
    let body = json!({
        "systemInstruction": {"parts": [{"text": "You summarise documents."}]},
        "contents": [{"role": "user", "parts": [
            {"text": "Summarise this PDF."},
            {"inlineData": {"mimeType": "application/pdf", "data": base64(PDF)}}
        ]}],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT"},
            "temperature": 0.2,
            "maxOutputTokens": 1024
        }
    });
    let resp = generate(&fake, &body).await;
    assert_eq!(answer_text(&resp), DEFAULT_ANSWER);
    let got = resp.json();
    let candidate = &got["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["index"], 0);
    let usage = &got["usageMetadata"];
    let prompt_tokens = usage["promptTokenCount"].as_u64().expect("prompt tokens");
    let answer_tokens = usage["candidatesTokenCount"]
        .as_u64()
        .expect("answer tokens");
    assert!(prompt_tokens > 258 && answer_tokens > 0, "{usage}");
    assert_eq!(usage["totalTokenCount"], prompt_tokens + answer_tokens);
    assert_eq!(got["modelVersion"], "gemini-2.5-flash");
    assert!(got["responseId"].is_string(), "{got}");

    assert_eq!(fake.generate_calls(), 1);
    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(recorded[0].path, GENERATE);
    assert_eq!(recorded[0].query, None);
    assert_eq!(recorded[0].header("X-Goog-Api-Key"), Some(KEY));
    assert_eq!(recorded[0].json.as_ref(), Some(&body));
    assert_eq!(recorded[0].body, serde_json::to_vec(&body).expect("JSON"));
}

#[tokio::test]
async fn snake_case_nulls_and_a_query_key_are_accepted() {
    let fake = FakeGemini::start(KEY).await;
    let body = json!({
        "contents": [{"parts": [
            {"text": "Summarise this PDF.", "inline_data": null},
            {"inline_data": {"mime_type": "application/pdf", "data": base64(PDF)}}
        ]}],
        "generation_config": {"response_mime_type": "application/json", "response_json_schema": {}},
        "tools": null
    });
    let resp = client(&fake)
        .request(Method::POST, &format!("{GENERATE}?key={KEY}"))
        .json(&body)
        .send()
        .await;
    assert_eq!(answer_text(&resp), DEFAULT_ANSWER);
    assert_eq!(
        fake.requests()[0].query.as_deref(),
        Some("key=test-key-1234")
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_without_consuming_a_reply() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Answer("kept".to_owned()));
    let part = |part: Value| json!({"contents": [{"role": "user", "parts": [part]}]});
    let config = |config: Value| json!({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": config});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "Invalid JSON payload"),
        (b"[]".to_vec(), "GenerateContentRequest"),
        (
            serde_json::to_vec(&json!({"contents": [{"parts": [{"text": "hi"}]}], "prompt": "hi"}))
                .expect("JSON"),
            "Unknown name \"prompt\"",
        ),
        (
            b"{\"generationConfig\": {}}".to_vec(),
            "contents is not specified",
        ),
        (b"{\"contents\": []}".to_vec(), "contents is not specified"),
        (
            b"{\"contents\": [{\"role\": \"user\"}]}".to_vec(),
            "contents[0].parts",
        ),
        (
            b"{\"contents\": [{\"role\": \"system\", \"parts\": [{\"text\": \"hi\"}]}]}".to_vec(),
            "valid role",
        ),
        (
            serde_json::to_vec(&part(json!({
                "text": "hi",
                "inlineData": {"mimeType": "application/pdf", "data": base64(PDF)}
            })))
            .expect("JSON"),
            "Oneof field 'data'",
        ),
        (
            serde_json::to_vec(&part(json!({}))).expect("JSON"),
            "required oneof field 'data'",
        ),
        (
            serde_json::to_vec(&part(json!({"image": "x"}))).expect("JSON"),
            "Unknown name \"image\" at 'contents[0].parts[0]'",
        ),
        (
            serde_json::to_vec(&part(
                json!({"inlineData": {"mimeType": "application/pdf", "data": "not base64!"}}),
            ))
            .expect("JSON"),
            "Base64 decoding failed",
        ),
        (
            serde_json::to_vec(&part(json!({"inlineData": {"data": base64(PDF)}}))).expect("JSON"),
            "inline_data.mime_type",
        ),
        (
            serde_json::to_vec(&part(json!({"fileData": {"mimeType": "application/pdf"}})))
                .expect("JSON"),
            "file_data.file_uri",
        ),
        (
            serde_json::to_vec(&config(json!({"responseFormat": "json"}))).expect("JSON"),
            "Unknown name \"responseFormat\" at 'generation_config'",
        ),
        (
            serde_json::to_vec(&config(json!({"temperature": "hot"}))).expect("JSON"),
            "generation_config.temperature",
        ),
        (
            serde_json::to_vec(&config(json!({"responseSchema": {"type": "OBJECT"}})))
                .expect("JSON"),
            "response_mime_type must be application/json",
        ),
        (
            serde_json::to_vec(&config(json!({
                "responseMimeType": "text/plain",
                "responseSchema": {"type": "OBJECT"}
            })))
            .expect("JSON"),
            "response_mime_type must be application/json",
        ),
    ];
    let c = client(&fake);
    for (body, needle) in &cases {
        let resp = c
            .request(Method::POST, GENERATE)
            .header("x-goog-api-key", KEY)
            .header("content-type", "application/json")
            .raw(body.clone())
            .send()
            .await;
        assert_error(&resp, 400, "INVALID_ARGUMENT", needle);
    }
    assert_eq!(
        fake.generate_calls(),
        cases.len(),
        "refused calls still count"
    );
    assert_eq!(
        fake.requests().len(),
        cases.len(),
        "refused calls are still recorded"
    );
    assert_eq!(answer_text(&generate(&fake, &prompt("hi")).await), "kept");
    assert_eq!(
        answer_text(&generate(&fake, &prompt("hi")).await),
        DEFAULT_ANSWER
    );
}

#[tokio::test]
async fn a_request_over_20_mb_is_refused() {
    let fake = FakeGemini::start(KEY).await;
    // 16 MiB of PDF is over 21 MiB once base64-encoded: the limit is on the request's size.
    let pdf = vec![b'%'; 16 * 1024 * 1024];
    let body = json!({"contents": [{"parts": [
        {"inlineData": {"mimeType": "application/pdf", "data": base64(&pdf)}}
    ]}]});
    let resp = generate(&fake, &body).await;
    assert_error(
        &resp,
        400,
        "INVALID_ARGUMENT",
        "Request payload size exceeds the limit",
    );
}

#[tokio::test]
async fn pushed_replies_come_out_in_order_then_the_default() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Answer("first".to_owned()));
    fake.push(Reply::Status {
        code: 500,
        retry_after: None,
    });
    fake.push(Reply::Answer("second".to_owned()));
    assert_eq!(answer_text(&generate(&fake, &prompt("1")).await), "first");
    let failed = generate(&fake, &prompt("2")).await;
    assert_error(&failed, 500, "INTERNAL", "internal error");
    assert_eq!(answer_text(&generate(&fake, &prompt("3")).await), "second");
    assert_eq!(
        answer_text(&generate(&fake, &prompt("4")).await),
        DEFAULT_ANSWER
    );
    fake.set_default(Reply::Answer("fallback".to_owned()));
    assert_eq!(
        answer_text(&generate(&fake, &prompt("5")).await),
        "fallback"
    );
    assert_eq!(
        answer_text(&generate(&fake, &prompt("6")).await),
        "fallback"
    );
    assert_eq!(fake.generate_calls(), 6);
}

#[tokio::test]
async fn a_429_carries_retry_after_and_a_503_does_not() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Status {
        code: 429,
        retry_after: Some(7),
    });
    fake.push(Reply::Status {
        code: 503,
        retry_after: None,
    });
    let limited = generate(&fake, &prompt("hi")).await;
    assert_error(&limited, 429, "RESOURCE_EXHAUSTED", "exhausted");
    assert_eq!(limited.header("retry-after"), Some("7"));
    let detail = &limited.json()["error"]["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(detail["retryDelay"], "7s");
    let overloaded = generate(&fake, &prompt("hi")).await;
    assert_error(&overloaded, 503, "UNAVAILABLE", "overloaded");
    assert_eq!(overloaded.header("retry-after"), None);
}

#[tokio::test]
async fn a_slow_reply_answers_after_a_later_quick_one() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Slow {
        delay: Duration::from_millis(300),
        answer: "slow".to_owned(),
    });
    fake.push(Reply::Answer("quick".to_owned()));
    let c = client(&fake);
    let slow = tokio::spawn(async move {
        let resp = c
            .request(Method::POST, GENERATE)
            .header("x-goog-api-key", KEY)
            .json(&prompt("first"))
            .send()
            .await;
        answer_text(&resp)
    });
    fake.wait_for_calls(1).await;
    assert_eq!(
        answer_text(&generate(&fake, &prompt("second")).await),
        "quick"
    );
    assert_eq!(slow.await.expect("the slow call's task"), "slow");
    assert_eq!(fake.generate_calls(), 2);
}

#[tokio::test]
async fn malformed_and_blocked_replies() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Malformed);
    fake.push(Reply::Blocked);
    let malformed = generate(&fake, &prompt("hi")).await;
    assert_eq!(malformed.status, StatusCode::OK);
    assert!(
        serde_json::from_slice::<Value>(&malformed.body).is_err(),
        "{}",
        malformed.text()
    );
    let blocked = generate(&fake, &prompt("hi")).await;
    assert_eq!(blocked.status, StatusCode::OK);
    let body = blocked.json();
    assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
    assert!(body.get("candidates").is_none(), "{body}");
}

#[tokio::test]
async fn an_uploaded_file_can_be_used_then_deleted() {
    let fake = FakeGemini::start(KEY).await;
    let c = client(&fake);
    let start = upload_start(&c, PDF.len())
        .json(&json!({"file": {"display_name": "report.pdf"}}))
        .send()
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text());
    assert_eq!(start.header("x-goog-upload-status"), Some("active"));
    let url = start.header("x-goog-upload-url").expect("an upload URL");
    let upload_path = url
        .strip_prefix(&fake.base_url())
        .expect("a URL of the fake");
    assert!(
        upload_path.starts_with("/upload/v1beta/files?upload_id="),
        "{url}"
    );

    // The upload URL authorizes the bytes by itself, as the real one does.
    let done = c
        .request(Method::POST, upload_path)
        .header("X-Goog-Upload-Command", "upload, finalize")
        .header("X-Goog-Upload-Offset", "0")
        .raw(PDF.to_vec())
        .send()
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(done.header("x-goog-upload-status"), Some("final"));
    let file = done.json()["file"].clone();
    let name = file["name"].as_str().expect("a file name").to_owned();
    assert!(name.starts_with("files/"), "{file}");
    assert_eq!(file["displayName"], "report.pdf");
    assert_eq!(file["mimeType"], "application/pdf");
    assert_eq!(file["sizeBytes"], PDF.len().to_string());
    assert_eq!(file["state"], "ACTIVE");
    assert!(file["createTime"].is_string(), "{file}");
    let uri = file["uri"].as_str().expect("a file URI").to_owned();
    assert_eq!(uri, format!("{}/v1beta/{name}", fake.base_url()));
    let uploaded = fake.requests();
    assert_eq!(uploaded.last().map(|r| r.body.as_slice()), Some(PDF));

    let path = format!("/v1beta/{name}");
    let got = c
        .request(Method::GET, &path)
        .header("x-goog-api-key", KEY)
        .send()
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json(), file);

    let with_file = |uri: &str| {
        json!({"contents": [{"role": "user", "parts": [
            {"text": "Summarise this PDF."},
            {"fileData": {"mimeType": "application/pdf", "fileUri": uri}}
        ]}]})
    };
    assert_eq!(
        answer_text(&generate(&fake, &with_file(&uri)).await),
        DEFAULT_ANSWER
    );
    let unknown = format!("{}/v1beta/files/no-such-file", fake.base_url());
    let refused = generate(&fake, &with_file(&unknown)).await;
    assert_error(&refused, 403, "PERMISSION_DENIED", "File no-such-file");

    let deleted = c
        .request(Method::DELETE, &path)
        .header("x-goog-api-key", KEY)
        .send()
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    assert_eq!(deleted.json(), json!({}));
    let gone = generate(&fake, &with_file(&uri)).await;
    assert_error(&gone, 403, "PERMISSION_DENIED", "may not exist");
    let gone = c
        .request(Method::GET, &path)
        .header("x-goog-api-key", KEY)
        .send()
        .await;
    assert_error(&gone, 403, "PERMISSION_DENIED", "may not exist");
}

#[tokio::test]
async fn uploads_that_break_the_protocol_are_refused() {
    let fake = FakeGemini::start(KEY).await;
    let c = client(&fake);
    let start = upload_start(&c, 100).send().await;
    let url = start.header("x-goog-upload-url").expect("an upload URL");
    let path = url
        .strip_prefix(&fake.base_url())
        .expect("a URL of the fake")
        .to_owned();
    let bytes = |offset: &str| {
        c.request(Method::POST, &path)
            .header("X-Goog-Upload-Command", "upload, finalize")
            .header("X-Goog-Upload-Offset", offset)
            .raw(PDF.to_vec())
    };
    let wrong_offset = bytes("5").send().await;
    assert_error(
        &wrong_offset,
        400,
        "INVALID_ARGUMENT",
        "X-Goog-Upload-Offset",
    );
    let short = bytes("0").send().await;
    assert_error(&short, 400, "INVALID_ARGUMENT", "announced 100 bytes");

    let no_length = c
        .request(Method::POST, "/upload/v1beta/files")
        .header("x-goog-api-key", KEY)
        .header("X-Goog-Upload-Protocol", "resumable")
        .header("X-Goog-Upload-Command", "start")
        .send()
        .await;
    assert_error(&no_length, 400, "INVALID_ARGUMENT", "Content-Length");
    let unknown_metadata = upload_start(&c, 10)
        .json(&json!({"file": {"title": "report.pdf"}}))
        .send()
        .await;
    assert_error(
        &unknown_metadata,
        400,
        "INVALID_ARGUMENT",
        "Unknown name \"title\"",
    );
    let keyless = c
        .request(Method::POST, "/upload/v1beta/files")
        .header("X-Goog-Upload-Protocol", "resumable")
        .header("X-Goog-Upload-Command", "start")
        .header("X-Goog-Upload-Header-Content-Length", "10")
        .send()
        .await;
    assert_error(&keyless, 403, "PERMISSION_DENIED", "unregistered callers");
}

#[tokio::test]
async fn wrong_or_missing_keys_are_refused() {
    let fake = FakeGemini::start(KEY).await;
    fake.push(Reply::Answer("for the right key".to_owned()));
    let c = client(&fake);
    let wrong = c
        .request(Method::POST, GENERATE)
        .header("x-goog-api-key", "not-the-key")
        .json(&prompt("hi"))
        .send()
        .await;
    assert_error(&wrong, 400, "INVALID_ARGUMENT", "API key not valid");
    assert_eq!(
        wrong.json()["error"]["details"][0]["reason"],
        "API_KEY_INVALID"
    );
    let wrong_query = c
        .request(Method::POST, &format!("{GENERATE}?key=not-the-key"))
        .json(&prompt("hi"))
        .send()
        .await;
    assert_error(&wrong_query, 400, "INVALID_ARGUMENT", "API key not valid");
    let missing = c
        .request(Method::POST, GENERATE)
        .json(&prompt("hi"))
        .send()
        .await;
    assert_error(&missing, 403, "PERMISSION_DENIED", "unregistered callers");
    let files = c
        .request(Method::GET, "/v1beta/files/anything")
        .header("x-goog-api-key", "not-the-key")
        .send()
        .await;
    assert_error(&files, 400, "INVALID_ARGUMENT", "API key not valid");
    assert_eq!(fake.generate_calls(), 3);
    assert_eq!(
        answer_text(&generate(&fake, &prompt("hi")).await),
        "for the right key"
    );
}

#[tokio::test]
async fn other_paths_get_google_404s() {
    let fake = FakeGemini::start(KEY).await;
    let c = client(&fake);
    let listing = c
        .request(Method::GET, "/v1beta/models")
        .header("x-goog-api-key", KEY)
        .send()
        .await;
    assert_error(&listing, 404, "NOT_FOUND", "not found");
    let stream = c
        .request(
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        )
        .header("x-goog-api-key", KEY)
        .json(&prompt("hi"))
        .send()
        .await;
    assert_error(&stream, 404, "NOT_FOUND", "not found");
    assert_eq!(fake.generate_calls(), 0);
    assert_eq!(fake.requests().len(), 2);
}

#[test]
fn base64_is_decoded_as_protobuf_json_does() {
    for len in 0..12 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
        let encoded = base64(&bytes);
        assert_eq!(decode_base64(&encoded), Some(bytes.clone()), "{encoded}");
        let unpadded = encoded.trim_end_matches('=');
        assert_eq!(decode_base64(unpadded), Some(bytes.clone()), "{unpadded}");
        let url_safe = encoded.replace('+', "-").replace('/', "_");
        assert_eq!(decode_base64(&url_safe), Some(bytes), "{url_safe}");
    }
    for bad in ["a", "abcde", "ab=c", "ab c", "abc===", "a?bc", "ab=", "*"] {
        assert_eq!(decode_base64(bad), None, "{bad:?} must not decode");
    }
}
