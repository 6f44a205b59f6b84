//! `GET /jobs/{id}/status`: the light read pollers use, and its long-poll form
//! (`?wait=20s`, optionally `&state_not=queued,running`), which answers as soon as the job
//! leaves the listed states or the wait ends. The wait is woken by the store's commit
//! signal for that job (on PostgreSQL, other nodes' commits arrive through NOTIFY), not by
//! a loop that re-reads.

use std::time::Duration;

use kiln_api::{STATUS_RESULT_INLINE_MAX, StatusView};
use kiln_domain::{JobId, JobState, RawJson, UserId};
use kiln_store::{JobStatus, Signal};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::list::parse_states;
use crate::problem::ApiError;
use crate::state::AppState;

/// The longest `wait` accepted: well inside the default 30 s request time limit, and
/// short enough for proxies that cut idle requests.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// The query of `GET /jobs/{id}/status`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusParams {
    /// How long to wait for a change: `500ms`, `20s`, or a number of seconds.
    pub wait: Option<String>,
    /// Comma-separated states to wait out; default: every state that is not terminal.
    pub state_not: Option<String>,
}

/// What to wait for, once the query is parsed.
struct Wait {
    until: Instant,
    states: Vec<JobState>,
}

impl StatusParams {
    fn parse(self) -> Result<Option<Wait>, ApiError> {
        let Some(wait) = self.wait else {
            if self.state_not.is_some() {
                return Err(ApiError::invalid("state_not", "only allowed with `wait`"));
            }
            return Ok(None);
        };
        let wait = match wait.trim().parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                humantime::parse_duration(wait.trim()).map_err(|e| ApiError::invalid("wait", e))?
            }
        };
        if wait > MAX_WAIT {
            return Err(ApiError::invalid(
                "wait",
                format!("at most {}", humantime::format_duration(MAX_WAIT)),
            ));
        }
        let states = match self.state_not.as_deref() {
            None => JobState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
            Some(list) => parse_states("state_not", list)?,
        };
        Ok(Some(Wait {
            until: Instant::now() + wait,
            states,
        }))
    }
}

/// The job's status, after the wait the query asks for, if any.
pub async fn read(
    state: &AppState,
    owner: Option<UserId>,
    id: JobId,
    params: StatusParams,
) -> Result<StatusView<RawJson>, ApiError> {
    let Some(wait) = params.parse()? else {
        return Ok(view(status(state, owner, id).await?));
    };
    // Subscribed before the first read, so a change committed in between is not missed.
    let mut signals = state.store().subscribe();
    loop {
        let now = status(state, owner, id).await?;
        if !wait.states.contains(&now.state) || Instant::now() >= wait.until {
            return Ok(view(now));
        }
        let changed = async {
            loop {
                match signals.recv().await {
                    Ok(Signal::Changed(e)) if e.job_id == id => return,
                    Ok(_) => {}
                    // Missed signals may have held this job's: read it again.
                    Err(RecvError::Lagged(_)) => return,
                    // No signal will come: the deadline ends the wait.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(wait.until) => {}
            () = state.shutdown().cancelled() => {}
        }
        if state.is_shutting_down() {
            return Ok(view(status(state, owner, id).await?));
        }
    }
}

async fn status(state: &AppState, owner: Option<UserId>, id: JobId) -> Result<JobStatus, ApiError> {
    Ok(state
        .store()
        .job_status(owner, id, STATUS_RESULT_INLINE_MAX)
        .await?)
}

fn view(s: JobStatus) -> StatusView<RawJson> {
    let result_url =
        (s.has_result && s.result.is_none()).then(|| format!("/api/v1/jobs/{}/result", s.id));
    StatusView {
        id: s.id.to_string(),
        state: s.state,
        progress: s.progress,
        updated_at: s.updated_at,
        result: s.result,
        result_url,
        error: s.error,
    }
}
