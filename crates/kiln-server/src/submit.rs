//! Turning a `POST /jobs` body into a validated job and its insert options.
//!
//! Idempotency: an `Idempotency-Key` is stored with the SHA-256 of the canonical request
//! (the parsed body re-serialised: fixed field order, object keys sorted), so whitespace or
//! key order does not make the same request look different. The same key with the same
//! request returns the first job, with the same 202 status as the first response plus
//! `Idempotent-Replayed: true`; with another request it is a 409.

use axum::http::HeaderMap;
use kiln_api::SubmitJob;
use kiln_domain::job::Submission;
use kiln_domain::{NewJob, User};
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
    let sub = Submission {
        job_type: body.job_type,
        payload: body.payload,
        priority: body.priority,
        queue: body.queue,
        run_at: body.run_at,
        delay_ms: body.delay_ms,
        name: body.name,
    };
    let job = NewJob::parse(sub, user.id, user.role, state.catalogue(), state.now())?;
    let opts = InsertOptions {
        idempotency,
        max_queued: state.config().max_queued,
    };
    Ok((job, opts))
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
