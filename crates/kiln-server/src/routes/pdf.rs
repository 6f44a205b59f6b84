//! `POST /api/v1/pdf-processing`: a PDF upload and its `pdf_analyze` job in one request.
//!
//! The multipart body carries the PDF in `file` and, in any order around it, the optional
//! text fields `prompt`, `priority`, `queue`, `run_at`, `delay_ms` and `name`. The file is
//! streamed to object storage as it arrives (never held whole); its first bytes decide
//! whether it is a PDF, and a file that is not stops the upload at once. The job is
//! validated like a `POST /jobs` body; when anything is refused after the file was stored,
//! the file is deleted again, so a refused request leaves nothing behind.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::multipart::{Field, Multipart};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use kiln_api::{JobView, SubmitJob};
use kiln_domain::job_type::PdfPayload;
use kiln_domain::{JobType, UserId};
use kiln_objects::FileMeta;
use serde_json::{Map, Value, json};

use crate::auth::CurrentUser;
use crate::openapi::PdfForm;
use crate::problem::ApiError;
use crate::routes::files::{self, Upload};
use crate::routes::jobs;
use crate::state::AppState;
use crate::submit;

/// The longest text field accepted (a prompt is at most 8 KiB; the rest are short).
const MAX_TEXT_FIELD: usize = 16 * 1024;

/// `POST /pdf-processing` (multipart/form-data) → 202 with the `pdf_analyze` job.
#[utoipa::path(
    post,
    path = "/api/v1/pdf-processing",
    tag = "files",
    operation_id = "pdf_processing",
    security(("bearer" = [])),
    request_body(content = PdfForm, content_type = "multipart/form-data", description = "The PDF in `file`; optional `prompt`, `priority`, `queue`, `run_at`, `delay_ms`, `name`"),
    responses(
        (status = 202, description = "The file is stored and its `pdf_analyze` job accepted", body = JobView, headers(("Location" = String, description = "The job's URL"))),
        (status = 400, description = "A broken multipart body, no `file`, an unknown or invalid field (`field` names it)"),
        (status = 413, description = "Larger than the upload limit"),
        (status = 415, description = "Not `multipart/form-data`, or the file is not a PDF (`not_pdf`)"),
        (status = 429, description = "The caller submits faster than their rate, or has as many jobs waiting or running as their quota; with `Retry-After`"),
        (status = 503, description = "This server has no object storage (`uploads_disabled`), or is taking as many uploads as it may at once (`uploads_busy`)"),
        (status = 507, description = "Over the caller's storage quota (`storage_quota`)"),
    )
)]
pub async fn process(
    State(state): State<AppState>,
    me: CurrentUser,
    req: Request,
) -> Result<Response, ApiError> {
    let limits = jobs::admit(&state, &me).await?;
    // The submission without an `Idempotency-Key`: each upload is a new file, so a
    // replayed request could never match the first one's body.
    let mut headers = req.headers().clone();
    headers.remove(submit::IDEMPOTENCY_KEY);
    let (upload, mut multipart) = Upload::begin(&state, &me, req).await?;
    let mut fields = Map::new();
    let mut stored: Option<FileMeta> = None;
    let read = read_fields(
        &state,
        &me,
        &upload,
        &mut multipart,
        &mut fields,
        &mut stored,
    )
    .await;
    let accepted = match (read, &stored) {
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(ApiError::invalid(
            "file",
            "the multipart body has no `file` field",
        )),
        (Ok(()), Some(meta)) => match submission(fields, meta)
            .and_then(|body| submit::prepare(&state, &me.user, &headers, body))
        {
            Ok((job, mut opts)) => {
                opts.owner_max_active = limits.max_active;
                jobs::accept(&state, job, opts).await
            }
            Err(e) => Err(e),
        },
    };
    if accepted.is_err() {
        files::drain(&mut multipart).await;
        if let Some(meta) = stored {
            forget(&upload, me.user.id, meta).await;
        }
    }
    accepted
}

/// Reads every field: the text ones into `fields`, the file into storage (`stored`).
async fn read_fields(
    state: &AppState,
    me: &CurrentUser,
    upload: &Upload,
    multipart: &mut Multipart,
    fields: &mut Map<String, Value>,
    stored: &mut Option<FileMeta>,
) -> Result<(), ApiError> {
    while let Some(field) = multipart.next_field().await.map_err(ApiError::multipart)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" if stored.is_some() => {
                return Err(ApiError::invalid("file", "only one file may be sent"));
            }
            "file" => *stored = Some(store_pdf(state, me, upload, field).await?),
            "prompt" | "priority" | "queue" | "run_at" | "delay_ms" | "name" => {
                if fields.contains_key(&name) {
                    return Err(ApiError::invalid(name, "is given twice"));
                }
                let text = text(field, &name).await?;
                let value = match name.as_str() {
                    "priority" => Value::from(text.trim().parse::<i64>().map_err(|_| {
                        ApiError::invalid("priority", "must be an integer from -100 to 100")
                    })?),
                    "delay_ms" => Value::from(text.trim().parse::<u64>().map_err(|_| {
                        ApiError::invalid("delay_ms", "must be a whole number of milliseconds")
                    })?),
                    _ => Value::String(text),
                };
                fields.insert(name, value);
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "is not a field of this form (file, prompt, priority, queue, run_at, delay_ms, name)",
                ));
            }
        }
    }
    Ok(())
}

/// Streams the `file` field into storage, stopping at once when its first bytes are not a
/// PDF (415 `not_pdf`; nothing is kept).
async fn store_pdf(
    state: &AppState,
    me: &CurrentUser,
    upload: &Upload,
    field: Field<'_>,
) -> Result<FileMeta, ApiError> {
    let mut file = files::new_file(state, &field);
    file.content_type = "application/pdf".to_owned();
    let refused = Arc::new(AtomicBool::new(false));
    let body = Sniffed {
        inner: field,
        head: Vec::new(),
        checked: false,
        refused: Arc::clone(&refused),
    };
    match upload.put(me.user.id, file, body).await {
        Ok(meta) => Ok(meta),
        Err(_) if refused.load(Ordering::Relaxed) => Err(not_pdf()),
        Err(e) => Err(upload.refused(e)),
    }
}

fn not_pdf() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not_pdf",
        "the file is not a PDF: its content does not start with `%PDF-`",
    );
    e.field = Some("file".to_owned());
    e
}

/// A text field, at most [`MAX_TEXT_FIELD`] bytes of UTF-8.
async fn text(mut field: Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(ApiError::multipart)? {
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(ApiError::invalid(name, "is longer than 16 KiB"));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(name, "is not UTF-8 text"))
}

/// The `POST /jobs` body the form stands for.
fn submission(mut fields: Map<String, Value>, meta: &FileMeta) -> Result<SubmitJob, ApiError> {
    let mut payload = json!({"file_id": meta.id.to_string()});
    if let Some(prompt) = fields.remove("prompt") {
        payload["prompt"] = prompt;
    }
    fields.insert("type".to_owned(), JobType::PdfAnalyze.as_str().into());
    fields.insert("payload".to_owned(), payload);
    serde_path_to_error::deserialize(Value::Object(fields))
        .map_err(|e| ApiError::invalid(e.path().to_string(), e.into_inner()))
}

/// Deletes a stored file whose job was refused (a failure is only logged: the file is the
/// caller's, listed by `GET /files`, and goes with the retention of old files).
async fn forget(upload: &Upload, owner: UserId, meta: FileMeta) {
    if let Err(e) = upload.objects().file_delete(owner, meta.id).await {
        tracing::warn!(file_id = %meta.id, error = %e, "a refused upload's file was not deleted");
    }
}

/// The multipart field's bytes, checked for a PDF header once the first
/// [`PdfPayload::HEADER_WITHIN`] bytes (or the whole, shorter, file) have arrived; the
/// bytes before that are held back, so nothing of a file that is not a PDF is written.
struct Sniffed<'a> {
    inner: Field<'a>,
    head: Vec<u8>,
    checked: bool,
    refused: Arc<AtomicBool>,
}

/// The error that ends the upload of a file that is not a PDF.
#[derive(Debug, thiserror::Error)]
#[error("the file is not a PDF")]
struct NotPdf;

impl Sniffed<'_> {
    /// Releases the held-back head once it is known to be a PDF, or refuses it.
    fn check(&mut self) -> Poll<Option<Result<Bytes, kiln_objects::BoxError>>> {
        self.checked = true;
        if PdfPayload::is_pdf(&self.head) {
            Poll::Ready(Some(Ok(Bytes::from(std::mem::take(&mut self.head)))))
        } else {
            self.refused.store(true, Ordering::Relaxed);
            Poll::Ready(Some(Err(NotPdf.into())))
        }
    }
}

impl Stream for Sniffed<'_> {
    type Item = Result<Bytes, kiln_objects::BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.checked {
            return Pin::new(&mut this.inner)
                .poll_next(cx)
                .map(|c| c.map(|r| r.map_err(Into::into)));
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(chunk))) => {
                    this.head.extend_from_slice(&chunk);
                    if this.head.len() >= PdfPayload::HEADER_WITHIN {
                        return this.check();
                    }
                }
                Poll::Ready(None) => {
                    // An empty file is not a PDF either.
                    return this.check();
                }
            }
        }
    }
}
