//! Health, readiness, metrics and the job-type catalogue.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_domain::{JobTypeSpec, Role};

use crate::auth::CurrentUser;
use crate::extract::Json;
use crate::problem::ApiError;
use crate::state::AppState;
use crate::{metrics, view};

/// How long `/readyz` waits for the store before calling it unreachable.
const READY_PROBE: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process is alive (even while shutting down).
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the store answers; 503 while shutting down or unreachable.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(READY_PROBE, state.store().user_count()).await {
        Ok(Ok(_)) => Ok("ready"),
        Ok(Err(e)) => {
            let mut err = ApiError::from(e);
            err.status = StatusCode::SERVICE_UNAVAILABLE;
            err.code = "not_ready";
            err.detail = "the database is unreachable".to_owned();
            Err(err)
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database did not answer in time",
        )),
    }
}

/// `GET /metrics` (operator or admin): the JSON summary, or Prometheus text (see
/// [`crate::metrics`]).
pub async fn metrics(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    me.require(Role::Operator)?;
    let summary = view::metrics(state.store().job_stats().await?);
    if metrics::wants_text(&headers) {
        let text = metrics::render_text(&summary);
        return Ok(([(CONTENT_TYPE, metrics::TEXT_FORMAT)], text).into_response());
    }
    Ok(Json(summary).into_response())
}

/// `GET /api/v1/job-types`: names, descriptions, schemas and policies.
pub async fn job_types(State(state): State<AppState>, _me: CurrentUser) -> Json<Vec<JobTypeSpec>> {
    Json(state.catalogue().iter().cloned().collect())
}
