//! `GET /jobs/counts`: how many of the caller's jobs are in each state (the dashboard's
//! summary above the list).

use axum::extract::State;
use kiln_api::JobCounts;
use kiln_domain::JobState;

use crate::auth::CurrentUser;
use crate::extract::Json;
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /jobs/counts`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/counts",
    tag = "jobs",
    operation_id = "count_jobs",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's jobs per state", body = JobCounts))
)]
pub async fn counts(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<JobCounts>, ApiError> {
    let counts = state.store().owner_counts(me.user.id).await?;
    let mut by_state: std::collections::BTreeMap<String, u64> = JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (s, n) in &counts {
        by_state.insert(s.as_str().to_owned(), *n);
    }
    Ok(Json(JobCounts {
        total: counts.iter().map(|(_, n)| n).sum(),
        by_state,
    }))
}
