//! The File API, which Kiln uses for PDFs too large to send inline: a resumable upload
//! (`start`, then `upload, finalize` on the URL the start returned), then `GET` and `DELETE`
//! on `/v1beta/files/{id}`. Uploaded files are what a `fileData.fileUri` may name.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::validate::file_denied;
use super::{Refusal, Shared, State, api_key, authorize, bad_request, google_error, query_param};

/// An upload session between `start` and `finalize`.
pub(super) struct Upload {
    display_name: Option<String>,
    mime_type: String,
    announced: u64,
    received: Vec<u8>,
}

/// A finalized upload.
pub(super) struct StoredFile {
    id: String,
    display_name: Option<String>,
    mime_type: String,
    size: u64,
    created: String,
    expires: String,
}

impl StoredFile {
    fn uri(&self, base: &str) -> String {
        format!("{base}/v1beta/files/{}", self.id)
    }

    /// The `File` resource as the real service describes it (`sizeBytes` is an int64, which
    /// protocol-buffer JSON writes as a string).
    fn json(&self, base: &str) -> Value {
        let mut file = json!({
            "name": format!("files/{}", self.id),
            "mimeType": self.mime_type,
            "sizeBytes": self.size.to_string(),
            "createTime": self.created,
            "updateTime": self.created,
            "expirationTime": self.expires,
            "uri": self.uri(base),
            "state": "ACTIVE",
            "source": "UPLOADED",
        });
        if let Some(name) = &self.display_name {
            file["displayName"] = json!(name);
        }
        file
    }
}

/// Whether `uri` is the URI of a file uploaded (and not deleted) here.
pub(super) fn exists(state: &State, base: &str, uri: &str) -> bool {
    uri.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix("/v1beta/files/"))
        .is_some_and(|id| state.files.contains_key(id))
}

/// `POST /upload/v1beta/files`: a new session, or, with `?upload_id=`, bytes for one.
pub(super) fn upload(
    shared: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let answer = match query_param(query, "upload_id") {
        Some(id) => upload_bytes(shared, &id, headers, query, body),
        None => start(shared, headers, query, body),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn start(
    shared: &Shared,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Response, Refusal> {
    authorize(shared, headers, query)?;
    if header(headers, "x-goog-upload-protocol") != Some("resumable") {
        return Err(bad_request(
            "This fake takes resumable uploads only: send X-Goog-Upload-Protocol: resumable.",
        ));
    }
    if header(headers, "x-goog-upload-command") != Some("start") {
        return Err(bad_request(
            "A new upload needs X-Goog-Upload-Command: start.",
        ));
    }
    let Some(announced) =
        header(headers, "x-goog-upload-header-content-length").and_then(|v| v.parse().ok())
    else {
        return Err(bad_request(
            "X-Goog-Upload-Header-Content-Length must give the file's size in bytes.",
        ));
    };
    let (display_name, body_mime) = metadata(body)?;
    let header_mime = header(headers, "x-goog-upload-header-content-type").map(str::to_owned);
    let Some(mime_type) = header_mime.or(body_mime).filter(|m| !m.is_empty()) else {
        return Err(bad_request(
            "X-Goog-Upload-Header-Content-Type (or file.mimeType) must give the file's MIME type.",
        ));
    };
    let upload_id = {
        let mut state = shared.lock();
        let id = format!("fake-upload-{}", state.next_id());
        let upload = Upload {
            display_name,
            mime_type,
            announced,
            received: Vec::new(),
        };
        state.uploads.insert(id.clone(), upload);
        id
    };
    let url = format!("{}/upload/v1beta/files?upload_id={upload_id}", shared.base);
    Ok(with_headers(
        StatusCode::OK.into_response(),
        &[
            ("x-goog-upload-url", &url),
            ("x-goog-upload-status", "active"),
            ("x-goog-upload-chunk-granularity", "8388608"),
        ],
    ))
}

/// The start request's optional body: `{"file": {"displayName" | "display_name", ...}}`.
fn metadata(body: &[u8]) -> Result<(Option<String>, Option<String>), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("Invalid JSON payload received. {e}")))?;
    let empty = Map::new();
    let request = value.as_object().unwrap_or(&empty);
    if let Some(name) = request.keys().find(|k| *k != "file") {
        return Err(unknown(name, ""));
    }
    let Some(file) = request.get("file").and_then(Value::as_object) else {
        return Ok((None, None));
    };
    let known = [
        "name",
        "displayName",
        "display_name",
        "mimeType",
        "mime_type",
    ];
    if let Some(name) = file.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(unknown(name, "file"));
    }
    let text = |a: &str, b: &str| {
        (file.get(a).or_else(|| file.get(b)))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok((
        text("displayName", "display_name"),
        text("mimeType", "mime_type"),
    ))
}

fn unknown(name: &str, at: &str) -> Refusal {
    let place = if at.is_empty() {
        String::new()
    } else {
        format!(" at '{at}'")
    };
    bad_request(&format!(
        "Invalid JSON payload received. Unknown name \"{name}\"{place}: Cannot find field."
    ))
}

/// Bytes for a session. The session's id in the URL is what authorizes them (the real
/// service's upload URL works without the key), but a key that is sent must be right.
fn upload_bytes(
    shared: &Shared,
    upload_id: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Response, Refusal> {
    if api_key(headers, query).is_some() {
        authorize(shared, headers, query)?;
    }
    let command: Vec<String> = header(headers, "x-goog-upload-command")
        .unwrap_or("")
        .split(',')
        .map(|word| word.trim().to_ascii_lowercase())
        .collect();
    let finalize = command.iter().any(|w| w == "finalize");
    if !command.iter().any(|w| w == "upload") {
        return Err(bad_request(
            "Sending bytes needs X-Goog-Upload-Command: upload (or \"upload, finalize\").",
        ));
    }
    let offset: Option<u64> = header(headers, "x-goog-upload-offset").and_then(|v| v.parse().ok());
    let mut state = shared.lock();
    let Some(upload) = state.uploads.get_mut(upload_id) else {
        return Err(google_error(
            404,
            "NOT_FOUND",
            "No upload session has this upload_id.",
            None,
        ));
    };
    let received = upload.received.len() as u64;
    if offset != Some(received) {
        let message = format!(
            "X-Goog-Upload-Offset must be {received}, the bytes received so far (got {}).",
            header(headers, "x-goog-upload-offset").unwrap_or("none")
        );
        return Err(bad_request(&message));
    }
    upload.received.extend_from_slice(body);
    let (received, announced) = (upload.received.len() as u64, upload.announced);
    if received > announced || (finalize && received != announced) {
        state.uploads.remove(upload_id);
        let message = format!(
            "The upload announced {announced} bytes (X-Goog-Upload-Header-Content-Length) \
             but sent {received}."
        );
        return Err(bad_request(&message));
    }
    if !finalize {
        let received = received.to_string();
        return Ok(with_headers(
            StatusCode::OK.into_response(),
            &[
                ("x-goog-upload-status", "active"),
                ("x-goog-upload-size-received", &received),
            ],
        ));
    }
    let Some(upload) = state.uploads.remove(upload_id) else {
        return Err(google_error(
            404,
            "NOT_FOUND",
            "No upload session has this upload_id.",
            None,
        ));
    };
    let now = Utc::now();
    let file = StoredFile {
        id: format!("fake-file-{}", state.next_id()),
        display_name: upload.display_name,
        mime_type: upload.mime_type,
        size: received,
        created: now.to_rfc3339_opts(SecondsFormat::Micros, true),
        expires: (now + chrono::Duration::hours(48)).to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    let body = json!({ "file": file.json(&shared.base) });
    state.files.insert(file.id.clone(), file);
    let response = (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    Ok(with_headers(response, &[("x-goog-upload-status", "final")]))
}

/// `GET` or `DELETE /v1beta/files/{id}`.
pub(super) fn resource(
    shared: &Shared,
    method: &Method,
    id: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    file_resource(shared, method, id, headers, query).unwrap_or_else(IntoResponse::into_response)
}

fn file_resource(
    shared: &Shared,
    method: &Method,
    id: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, Refusal> {
    authorize(shared, headers, query)?;
    let mut state = shared.lock();
    let body = match *method {
        Method::GET => match state.files.get(id) {
            Some(file) => file.json(&shared.base),
            None => return Err(file_denied(id)),
        },
        Method::DELETE => match state.files.remove(id) {
            Some(_) => json!({}),
            None => return Err(file_denied(id)),
        },
        _ => return Err(google_error(404, "NOT_FOUND", "Method not found.", None)),
    };
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn with_headers(mut response: Response, extra: &[(&'static str, &str)]) -> Response {
    for (name, value) in extra {
        let value = HeaderValue::from_str(value).expect("a header value the fake made");
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
    response
}
