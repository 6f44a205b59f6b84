//! `GET /admin/series`: this node's last hour, minute by minute (attempts started and ended
//! by outcome, start-latency percentiles), for the operator dashboard's charts.

use std::time::Duration;

use axum::extract::State;
use kiln_api::{MinuteView, Percentiles, SeriesView};
use kiln_domain::{Role, Timestamp};
use kiln_metrics::series::Minute;

use crate::auth::CurrentUser;
use crate::extract::Json;
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /admin/series`: the 60 minutes ending with the current one (by this node's wall
/// clock), oldest first. Per node: the attempts this node's worker started and ended, kept
/// in memory (a restart starts an empty hour); ask each node for its own.
#[utoipa::path(
    get,
    path = "/api/v1/admin/series",
    tag = "admin",
    operation_id = "series",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This node's attempts per minute over the last hour, oldest first", body = SeriesView),
        (status = 401, description = "No valid bearer token (missing, unknown, expired, or its user disabled)"),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn series(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<SeriesView>, ApiError> {
    me.require(Role::Operator)?;
    Ok(Json(SeriesView {
        node: state.config().node_id.clone(),
        minutes: state.metrics().series().iter().map(view).collect(),
    }))
}

fn view(m: &Minute) -> MinuteView {
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    MinuteView {
        at: start_of(m.minute),
        started: m.started,
        succeeded: m.succeeded,
        failed: m.failed,
        dead: m.dead,
        cancelled: m.cancelled,
        start_latency_ms: m.start_latency.map(|p| Percentiles {
            p50: ms(p.p50),
            p95: ms(p.p95),
            p99: ms(p.p99),
        }),
    }
}

/// When `minute` (since the Unix epoch) began.
fn start_of(minute: i64) -> Timestamp {
    minute
        .checked_mul(60)
        .and_then(|secs| Timestamp::from_timestamp(secs, 0))
        .unwrap_or_default()
}
