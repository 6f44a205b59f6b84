//! Turning a `POST /jobs` body into a validated job and its insert options.
//!
//! Idempotency: an `Idempotency-Key` is stored with the SHA-256 of the canonical request
//! (the parsed body re-serialised: fixed field order, object keys sorted), so whitespace or
//! key order does not make the same request look different. The same key with the same
//! request returns the first job, with the same 202 status as the first response plus
//! `Idempotent-Replayed: true`; with another request it is a 409.

use axum::http::HeaderMap;
use futures_util::StreamExt;
use kiln_api::SubmitJob;
use kiln_domain::job::Submission;
use kiln_domain::job_type::{CommandPayload, PdfPayload};
use kiln_domain::{JobType, NewJob, User};
use kiln_objects::{FileId, Objects, ObjectsError};
use kiln_store::{Idempotency, InsertOptions};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::state::AppState;

/// The request header naming an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest accepted key.
const MAX_KEY_LEN: usize = 255;

/// Validates `body` for `user` into a job and its insert options.
pub fn prepare(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    body: SubmitJob,
) -> Result<(NewJob, InsertOptions), ApiError> {
    let idempotency = idempotency(headers, &body)?;
    // A role too low for the type is a 403, whatever the payload (the domain's own check
    // would make it a 400).
    if let Ok(spec) = state.catalogue().get_by_name(&body.job_type)
        && user.role < spec.min_role
    {
        return Err(ApiError::forbidden(format!(
            "`{}` jobs need the {} role",
            spec.name, spec.min_role
        )));
    }
    let sub = Submission {
        job_type: body.job_type,
        payload: body.payload,
        priority: body.priority,
        queue: body.queue,
        run_at: body.run_at,
        delay_ms: body.delay_ms,
        name: body.name,
    };
    let mut job = NewJob::parse(sub, user.id, user.role, state.catalogue(), state.now())?;
    // The request's W3C trace follows the job into its attempts (their log lines, and
    // their spans as children of this request's when an exporter runs).
    (job.trace_id, job.parent_span_id) = match kiln_metrics::trace::tracer() {
        Some(tracer) => tracer.ids(&tracing::Span::current()).unzip(),
        None => headers
            .get(crate::middleware::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(kiln_metrics::trace::traceparent)
            .map(|(trace, parent)| (trace.to_owned(), parent.to_owned()))
            .unzip(),
    };
    if job.job_type == JobType::Command {
        let payload = CommandPayload::parse(&job.payload)?;
        let program = state.config().command_allow.check(&payload.argv[0])?;
        job.max_attempts = program.max_attempts;
    }
    let opts = InsertOptions {
        idempotency,
        max_queued: state.config().max_queued,
        // The caller's quota, which depends on their own limits (`limits_of`).
        owner_max_active: None,
    };
    Ok((job, opts))
}

/// Checks that every uploaded file a payload names (its type says which:
/// [`JobType::input_files`]) exists and belongs to the submitter (400 naming
/// `payload.file_id` otherwise), so a job never starts on a missing input.
pub async fn check_inputs(state: &AppState, job: &NewJob) -> Result<(), ApiError> {
    let files = job.job_type.input_files(&job.payload)?;
    if files.is_empty() {
        return Ok(());
    }
    const FIELD: &str = "payload.file_id";
    let objects = state.config().objects.as_ref().ok_or_else(|| {
        ApiError::invalid(
            FIELD,
            "this server has no object storage for uploaded files",
        )
    })?;
    for file_id in files {
        let missing = || ApiError::invalid(FIELD, format!("you have no file {file_id}"));
        let id = FileId::parse(&file_id).map_err(|_| missing())?;
        if job.job_type == JobType::PdfAnalyze {
            // A PDF by its content: the first bytes, not the name or the declared type.
            let head = match file_head(objects, job, id).await {
                Err(ObjectsError::NotFound) => return Err(missing()),
                other => other?,
            };
            if !PdfPayload::is_pdf(&head) {
                return Err(ApiError::invalid(
                    FIELD,
                    format!("file {file_id} is not a PDF (it does not start with `%PDF-`)"),
                ));
            }
            continue;
        }
        match objects.file_meta(job.owner, id).await {
            Ok(_) => {}
            Err(ObjectsError::NotFound) => return Err(missing()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The first [`PdfPayload::HEADER_WITHIN`] bytes of the job owner's file `id` (fewer if it
/// is shorter); the rest of the stream is dropped unread.
async fn file_head(objects: &Objects, job: &NewJob, id: FileId) -> Result<Vec<u8>, ObjectsError> {
    let (_, mut stream) = objects.file_get(job.owner, id).await?;
    let mut head = Vec::with_capacity(PdfPayload::HEADER_WITHIN);
    while head.len() < PdfPayload::HEADER_WITHIN {
        match stream.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => break,
        }
    }
    Ok(head)
}

fn idempotency(headers: &HeaderMap, body: &SubmitJob) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1-255 characters of visible ASCII",
            )
        })?;
    let canonical = serde_json::to_vec(body).map_err(ApiError::internal)?;
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_hash: Sha256::digest(&canonical).to_vec(),
    }))
}
