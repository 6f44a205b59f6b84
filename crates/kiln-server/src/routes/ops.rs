//! Health, readiness, metrics and the job-type catalogue.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::MetricsSummary;
use kiln_api::schema::JobTypeSpec as JobTypeSpecSchema;
use kiln_domain::{JobTypeSpec, Role};

use crate::auth::CurrentUser;
use crate::extract::Json;
use crate::problem::ApiError;
use crate::state::AppState;
use crate::{metrics, view};

/// How long `/readyz` waits for the store before calling it unreachable.
const READY_PROBE: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process is alive (even while shutting down).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    responses((status = 200, description = "The process is alive", body = String, example = "ok"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the store answers and every background task runs; 503 while
/// shutting down, unreachable, or restarting a task.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    responses(
        (status = 200, description = "The database answers", body = String, example = "ready"),
        (status = 503, description = "Shutting down, the database is unreachable, or a background task (dispatcher, heartbeat, maintenance) died and is being started again (`not_ready`)"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let down = state.metrics().tasks_down();
    if !down.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "a background task died and is being started again: {}",
                down.join(", ")
            ),
        ));
    }
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

/// `GET /metrics` (operator or admin): Prometheus text, or the JSON summary for a client
/// that asks for `application/json` (see [`crate::metrics`]).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text; the JSON summary with `Accept: application/json`", content(
            (String = "text/plain"),
            (MetricsSummary = "application/json"),
        )),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    me.require(Role::Operator)?;
    if metrics::wants_json(&headers) {
        let summary = view::metrics(state.store().job_stats().await?);
        return Ok(Json(summary).into_response());
    }
    prometheus(&state).await
}

/// `GET /metrics` on the metrics listener (`KILN_METRICS_ADDR`): Prometheus text, no token.
pub async fn metrics_open(State(state): State<AppState>) -> Result<Response, ApiError> {
    prometheus(&state).await
}

async fn prometheus(state: &AppState) -> Result<Response, ApiError> {
    let text = metrics::render(state).await?;
    Ok(([(CONTENT_TYPE, kiln_metrics::CONTENT_TYPE)], text).into_response())
}

/// `GET /api/v1/job-types`: names, descriptions, schemas and policies.
#[utoipa::path(
    get,
    path = "/api/v1/job-types",
    tag = "ops",
    operation_id = "job_types",
    security(("bearer" = [])),
    responses((status = 200, description = "Every job type, with its payload's JSON Schema", body = Vec<JobTypeSpecSchema>))
)]
pub async fn job_types(State(state): State<AppState>, _me: CurrentUser) -> Json<Vec<JobTypeSpec>> {
    Json(state.catalogue().iter().cloned().collect())
}
