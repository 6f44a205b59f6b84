//! `/api/v1/jobs/{id}/artifacts[/{name}]`: the files a job's kernel wrote (a `.npy` array,
//! the generated CSV, a large `result.json`), listed and streamed from the object store to
//! the job's owner only.
//!
//! Artifacts live in the object store under the job's current attempt (ADR 0008), so any
//! node sharing that store serves any job's artifacts. They are read once the job is no
//! longer running: a succeeded attempt stores them before its outcome, so a job that reads
//! `succeeded` has them all.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::{ArtifactLink, artifact_content_type};
use kiln_domain::{Job, JobId, JobState};
use kiln_objects::ObjectsError;

use crate::auth::CurrentUser;
use crate::extract::{Json, Path};
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /jobs/{id}/artifacts`: the job's artifacts, by name.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/artifacts",
    tag = "jobs",
    operation_id = "list_artifacts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 200, description = "The files the job's last attempt wrote, by name", body = Vec<ArtifactLink>),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
        (status = 409, description = "The job is running (`job_running`)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Json<Vec<ArtifactLink>>, ApiError> {
    let job = state.store().job_get(Some(me.user.id), id).await?;
    ensure_finished(&job)?;
    let Some(objects) = &state.config().objects else {
        return Ok(Json(Vec::new()));
    };
    let listed = objects.artifact_list(id, job.attempts).await?;
    Ok(Json(
        listed
            .iter()
            .map(|a| ArtifactLink::new(id, &a.name, a.size))
            .collect(),
    ))
}

/// `GET /jobs/{id}/artifacts/{name}`: the bytes, streamed, with their length and type.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/artifacts/{name}",
    tag = "jobs",
    operation_id = "download_artifact",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), ("name" = String, Path, description = "The artifact's name, as listed")),
    responses(
        (status = 200, description = "The bytes (`.csv` as text/csv, `.json` as JSON, anything else as octet-stream)", content(
            ("application/octet-stream"),
            ("text/csv"),
            ("application/json"),
        )),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job or artifact"),
        (status = 409, description = "The job is running (`job_running`)"),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    me: CurrentUser,
    Path((id, name)): Path<(JobId, String)>,
) -> Result<Response, ApiError> {
    let job = state.store().job_get(Some(me.user.id), id).await?;
    let missing = || ApiError::not_found(format!("job {id} has no artifact `{name}`"));
    ensure_finished(&job)?;
    let objects = state.config().objects.as_ref().ok_or_else(missing)?;
    let (size, stream) = match objects.artifact_get(id, job.attempts, &name).await {
        Ok(found) => found,
        Err(ObjectsError::NotFound) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let mut resp = Body::from_stream(stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(artifact_content_type(&name)),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    // Names are plain ASCII (`artifact::valid_name`), safe inside the quotes.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(resp)
}

/// Removes a job's artifacts (after the job itself was deleted). A failure is logged; the
/// worker's sweep removes the rest after its next prune.
pub async fn remove(state: &AppState, id: JobId) {
    if let Some(objects) = &state.config().objects
        && let Err(e) = objects.artifact_delete(id).await
    {
        tracing::warn!(job_id = %id, error = %e, "cannot remove the job's artifacts");
    }
}

fn ensure_finished(job: &Job) -> Result<(), ApiError> {
    if job.state == JobState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_running",
            "the job is running; its artifacts are available once it has finished",
        ));
    }
    Ok(())
}
