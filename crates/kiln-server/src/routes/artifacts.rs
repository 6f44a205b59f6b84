//! `/api/v1/jobs/{id}/artifacts[/{name}]`: the files a job's kernel wrote (a `.npy` array,
//! the generated CSV), listed and streamed to the job's owner only.
//!
//! Artifacts are read once the job is no longer running: a file still being written would
//! be served truncated.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_domain::{Job, JobId, JobState};
use serde::Serialize;
use tokio_util::io::ReaderStream;

use crate::auth::CurrentUser;
use crate::extract::{Json, Path};
use crate::problem::ApiError;
use crate::state::AppState;

/// One artifact in a listing.
#[derive(Debug, Serialize)]
pub struct ArtifactView {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Where to download it.
    pub url: String,
}

/// `GET /jobs/{id}/artifacts`: the job's artifacts, by name.
pub async fn list(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Json<Vec<ArtifactView>>, ApiError> {
    let job = state.store().job_get(Some(me.user.id), id).await?;
    ensure_finished(&job)?;
    let Some(dir) = job_dir(&state, id) else {
        return Ok(Json(Vec::new()));
    };
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Json(out)),
        Err(e) => return Err(ApiError::internal(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(ApiError::internal)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().await.map_err(ApiError::internal)?;
        if meta.is_file() && valid_name(&name) {
            out.push(ArtifactView {
                url: format!("/api/v1/jobs/{id}/artifacts/{name}"),
                size: meta.len(),
                name,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

/// `GET /jobs/{id}/artifacts/{name}`: the file, streamed, with its length and type.
pub async fn download(
    State(state): State<AppState>,
    me: CurrentUser,
    Path((id, name)): Path<(JobId, String)>,
) -> Result<Response, ApiError> {
    let job = state.store().job_get(Some(me.user.id), id).await?;
    let missing = || ApiError::not_found(format!("job {id} has no artifact `{name}`"));
    if !valid_name(&name) {
        return Err(missing());
    }
    ensure_finished(&job)?;
    let dir = job_dir(&state, id).ok_or_else(missing)?;
    let file = match tokio::fs::File::open(dir.join(&name)).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let meta = file.metadata().await.map_err(ApiError::internal)?;
    if !meta.is_file() {
        return Err(missing());
    }
    let mut resp = Body::from_stream(ReaderStream::with_capacity(file, 256 * 1024)).into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&name)));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.len()));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(resp)
}

/// Removes a job's artifacts (after the job itself was deleted).
pub async fn remove(state: &AppState, id: JobId) {
    if let Some(dir) = job_dir(state, id)
        && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(job_id = %id, error = %e, "cannot remove the job's artifacts");
    }
}

fn job_dir(state: &AppState, id: JobId) -> Option<std::path::PathBuf> {
    let root = state.config().artifact_dir.as_ref()?;
    Some(root.join(id.0.simple().to_string()))
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

/// Names kernels write: letters, digits, `.`, `-`, `_`, not starting with a dot (so no
/// `..` and no path separators can reach the file system).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("csv") => "text/csv; charset=utf-8",
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        // NumPy arrays (`.npy`) and anything else: raw bytes.
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_valid() {
        for good in ["primes.npy", "data.csv", "a_b-c.1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", ".hidden", "a\\b", "x y", "é.csv",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("data.csv"), "text/csv; charset=utf-8");
        assert_eq!(content_type("primes.npy"), "application/octet-stream");
    }
}
