//! The GCS adapter (see the parent module): object_store's XML uploads made through the
//! emulator's JSON API; every other request passed through unchanged.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The adapter's state: the emulator, and the multipart uploads in progress.
pub(super) struct Adapter {
    pub(super) upstream: Client<HttpConnector, Full<Bytes>>,
    pub(super) emulator: String,
    pub(super) uploads: Mutex<HashMap<String, Upload>>,
    pub(super) next_upload: AtomicU64,
}

/// A multipart upload in progress: its object, and its parts by number (ETag, size).
pub(super) struct Upload {
    bucket: String,
    object: String,
    content_type: Option<String>,
    parts: BTreeMap<u32, (String, usize)>,
    /// Held shared by each part being stored; completing or aborting takes it whole, so
    /// they wait for the parts in flight (and a part object is never left behind).
    in_flight: Arc<tokio::sync::RwLock<()>>,
}

/// GCS's minimum size of a multipart upload's part, but for the last.
const MIN_PART: usize = 5 << 20;

impl Adapter {
    /// One request to the emulator; its status, headers and whole body.
    pub(super) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.emulator));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = match self
            .upstream
            .request(request.body(Full::new(body)).unwrap())
            .await
        {
            Ok(response) => response,
            Err(e) => return unreachable_emulator(&e),
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(body) => (parts.status, parts.headers, body.to_bytes()),
            Err(e) => unreachable_emulator(&e),
        }
    }

    /// Stores `body` as `object` (percent-encoded, as in the XML API's path) by a media
    /// upload; the emulator's answer, as JSON when it succeeded.
    async fn media_upload(
        &self,
        bucket: &str,
        object: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<serde_json::Value, Response<Body>> {
        let path = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={object}");
        json_or_error(self.send(Method::POST, &path, content_type, body).await)
    }

    async fn delete(&self, bucket: &str, object: &str) -> StatusCode {
        let path = format!("/storage/v1/b/{bucket}/o/{object}");
        self.send(Method::DELETE, &path, None, Bytes::new()).await.0
    }

    async fn delete_parts(&self, upload_id: &str, upload: &Upload) {
        for number in upload.parts.keys() {
            let part = part_name(upload_id, *number);
            self.delete(&upload.bucket, &part).await;
        }
    }
}

/// A request the emulator did not answer: a 502 for object_store (which retries it), said
/// on stderr.
fn unreachable_emulator(e: &dyn std::fmt::Display) -> (StatusCode, HeaderMap, Bytes) {
    eprintln!("fake-gcs-server adapter: the emulator did not answer: {e}");
    (
        StatusCode::BAD_GATEWAY,
        HeaderMap::new(),
        Bytes::from(e.to_string()),
    )
}

/// The object a part is kept in until its upload completes (percent-encoded).
fn part_name(upload_id: &str, number: u32) -> String {
    format!("__multipart%2F{upload_id}%2F{number}")
}

/// The emulator's JSON answer, or its error as the adapter's answer.
fn json_or_error(
    (status, _, body): (StatusCode, HeaderMap, Bytes),
) -> Result<serde_json::Value, Response<Body>> {
    if status.is_success() {
        Ok(serde_json::from_slice(&body).unwrap())
    } else {
        Err(answer(status, &[], body))
    }
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, HeaderValue::from_str(value).unwrap());
    }
    response.body(body.into()).unwrap()
}

/// The XML API's answer to a write: its ETag and generation, from the emulator's object.
fn written(object: &serde_json::Value, body: impl Into<Body>) -> Response<Body> {
    let etag = object["etag"]
        .as_str()
        .or(object["md5Hash"].as_str())
        .unwrap_or_default();
    let generation = object["generation"].as_str().unwrap_or_default();
    answer(
        StatusCode::OK,
        &[
            ("etag", format!("\"{etag}\"")),
            ("x-goog-generation", generation.to_owned()),
        ],
        body,
    )
}

/// Every request object_store sends: XML uploads translated, the rest passed through.
pub(super) async fn handle(
    State(adapter): State<Arc<Adapter>>,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return answer(StatusCode::BAD_REQUEST, &[], e.to_string()),
    };
    let query: HashMap<&str, &str> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    // `/bucket/object`: object_store percent-encodes the object name whole, `/` included.
    let target = parts
        .uri
        .path()
        .strip_prefix('/')
        .and_then(|path| path.split_once('/'))
        .filter(|(bucket, object)| {
            !bucket.is_empty() && !object.is_empty() && !object.contains('/')
        });
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let upload_id = query.get("uploadId").map(|id| (*id).to_owned());
    let method = parts.method.clone();
    match (method, target, upload_id) {
        (Method::POST, Some((bucket, object)), None) if query.contains_key("uploads") => {
            let id = format!(
                "kiln{}",
                adapter.next_upload.fetch_add(1, Ordering::Relaxed)
            );
            adapter.uploads.lock().unwrap().insert(
                id.clone(),
                Upload {
                    bucket: bucket.to_owned(),
                    object: object.to_owned(),
                    content_type,
                    parts: BTreeMap::new(),
                    in_flight: Arc::default(),
                },
            );
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
                 <Bucket>{bucket}</Bucket><Key>{object}</Key><UploadId>{id}</UploadId>\
                 </InitiateMultipartUploadResult>"
            );
            answer(StatusCode::OK, &[], xml)
        }
        (Method::PUT, Some((bucket, _)), Some(id)) => {
            let Some(number) = query.get("partNumber").and_then(|n| n.parse::<u32>().ok()) else {
                return answer(StatusCode::BAD_REQUEST, &[], "InvalidPartNumber");
            };
            // In a task of its own: the handler is dropped when object_store hangs up (an
            // aborted upload drops its parts in flight), and the part stored meanwhile must
            // still be deleted.
            let bucket = bucket.to_owned();
            tokio::spawn(async move { put_part(&adapter, &bucket, &id, number, body).await })
                .await
                .unwrap()
        }
        (Method::POST, Some((bucket, object)), Some(id)) => {
            let Some(upload) = adapter.uploads.lock().unwrap().remove(&id) else {
                return answer(StatusCode::NOT_FOUND, &[], "NoSuchUpload");
            };
            let _all = upload.in_flight.write().await;
            let result = complete(&adapter, &id, &upload, &body).await;
            adapter.delete_parts(&id, &upload).await;
            match result {
                Ok(object_json) => {
                    let xml = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult>\
                         <Bucket>{bucket}</Bucket><Key>{object}</Key><ETag>\"{}\"</ETag>\
                         </CompleteMultipartUploadResult>",
                        object_json["etag"].as_str().unwrap_or_default()
                    );
                    written(&object_json, xml)
                }
                Err(e) => e,
            }
        }
        (Method::DELETE, Some(_), Some(id)) => {
            let Some(upload) = adapter.uploads.lock().unwrap().remove(&id) else {
                return answer(StatusCode::NOT_FOUND, &[], "NoSuchUpload");
            };
            let _all = upload.in_flight.write().await;
            adapter.delete_parts(&id, &upload).await;
            answer(StatusCode::NO_CONTENT, &[], Body::empty())
        }
        (Method::PUT, Some((bucket, object)), None) => {
            if parts.headers.contains_key("x-goog-copy-source") {
                return answer(StatusCode::NOT_IMPLEMENTED, &[], "copy is not adapted");
            }
            match adapter
                .media_upload(bucket, object, content_type.as_deref(), body)
                .await
            {
                Ok(stored) => written(&stored, Body::empty()),
                Err(e) => e,
            }
        }
        _ => {
            // A read (an object, its head or a range of it; the bucket's listing), a delete.
            let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut forwarded = Request::builder()
                .method(parts.method.clone())
                .uri(format!("{}{path_and_query}", adapter.emulator));
            for (name, value) in &parts.headers {
                if name != "host" {
                    forwarded = forwarded.header(name, value);
                }
            }
            match adapter
                .upstream
                .request(forwarded.body(Full::new(body)).unwrap())
                .await
            {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, Body::new(body))
                }
                Err(e) => {
                    let (status, _, body) = unreachable_emulator(&e);
                    answer(status, &[], body)
                }
            }
        }
    }
}

/// Stores part `number` of upload `id`; the XML API's answer (the part's ETag).
async fn put_part(
    adapter: &Adapter,
    bucket: &str,
    id: &str,
    number: u32,
    body: Bytes,
) -> Response<Body> {
    let in_flight = match adapter.uploads.lock().unwrap().get(id) {
        Some(upload) => Arc::clone(&upload.in_flight),
        None => return answer(StatusCode::NOT_FOUND, &[], "NoSuchUpload"),
    };
    let _storing = in_flight.read_owned().await;
    let size = body.len();
    let part = part_name(id, number);
    let stored = match adapter.media_upload(bucket, &part, None, body).await {
        Ok(stored) => stored,
        Err(e) => return e,
    };
    let etag = stored["md5Hash"].as_str().unwrap_or_default().to_owned();
    let recorded = match adapter.uploads.lock().unwrap().get_mut(id) {
        Some(upload) => {
            upload.parts.insert(number, (etag.clone(), size));
            true
        }
        None => false,
    };
    if !recorded {
        // Completed or aborted meanwhile: this part is no one's.
        adapter.delete(bucket, &part).await;
        return answer(StatusCode::NOT_FOUND, &[], "NoSuchUpload");
    }
    answer(
        StatusCode::OK,
        &[("etag", format!("\"{etag}\""))],
        Body::empty(),
    )
}

/// Completes `upload` as the XML API's completion `request` asks: the parts it names,
/// in its order, each with the ETag it was given, each but the last at least [`MIN_PART`],
/// composed into the object. The object's JSON, or the error to answer.
async fn complete(
    adapter: &Adapter,
    id: &str,
    upload: &Upload,
    request: &[u8],
) -> Result<serde_json::Value, Response<Body>> {
    let request = String::from_utf8_lossy(request);
    let mut named = Vec::new();
    for part in request.split("<Part>").skip(1) {
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = part.find(&open)? + open.len();
            let end = part[start..].find(&format!("</{tag}>"))? + start;
            Some(part[start..end].trim_matches('"').to_owned())
        };
        match (
            field("PartNumber").and_then(|n| n.parse::<u32>().ok()),
            field("ETag"),
        ) {
            (Some(number), Some(etag)) => named.push((number, etag)),
            _ => return Err(answer(StatusCode::BAD_REQUEST, &[], "MalformedXML")),
        }
    }
    if named.is_empty() || named.len() > 32 {
        // Compose takes 1 to 32 objects; past that the adapter would need rounds.
        return Err(answer(
            StatusCode::BAD_REQUEST,
            &[],
            "MalformedXML or over 32 parts",
        ));
    }
    let mut sources = Vec::new();
    for (i, (number, etag)) in named.iter().enumerate() {
        if i > 0 && named[i - 1].0 >= *number {
            return Err(answer(StatusCode::BAD_REQUEST, &[], "InvalidPartOrder"));
        }
        let Some((stored, size)) = upload.parts.get(number) else {
            return Err(answer(StatusCode::BAD_REQUEST, &[], "InvalidPart"));
        };
        if stored != etag {
            return Err(answer(StatusCode::BAD_REQUEST, &[], "InvalidPart"));
        }
        if i + 1 < named.len() && *size < MIN_PART {
            return Err(answer(StatusCode::BAD_REQUEST, &[], "EntityTooSmall"));
        }
        sources.push(serde_json::json!({ "name": format!("__multipart/{id}/{number}") }));
    }
    let mut destination = serde_json::json!({ "bucket": upload.bucket });
    if let Some(content_type) = &upload.content_type {
        destination["contentType"] = content_type.clone().into();
    }
    let compose = serde_json::json!({ "sourceObjects": sources, "destination": destination });
    let path = format!(
        "/storage/v1/b/{}/o/{}/compose",
        upload.bucket, upload.object
    );
    json_or_error(
        adapter
            .send(
                Method::POST,
                &path,
                Some("application/json"),
                compose.to_string().into(),
            )
            .await,
    )
}
