//! `/api/v1/jobs…`: submit, list, read, cancel, retry, report, delete. Every route is
//! owner-scoped: another user's job answers 404 exactly like an unknown id.

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::{EventView, JobView, Page, PatchJob, StatusView, SubmitJob};
use kiln_domain::job::{MAX_INLINE_RESULT, RESULT_ARTIFACT, spilled_result};
use kiln_domain::{Failure, JobId, JobState, NewJob, RawJson};
use kiln_store::{InsertOptions, Inserted, Report};
use serde_json::Value;

use crate::auth::CurrentUser;
use crate::cancel::Actor;
use crate::extract::{Json, Path, Query};
use crate::limits::Effective;
use crate::list::ListParams;
use crate::problem::ApiError;
use crate::state::AppState;
use crate::{cancel, conditional, status, submit, view};

/// Response header set on an idempotent replay of `POST /jobs`.
pub const REPLAYED: &str = "idempotent-replayed";

/// `POST /jobs` → 202 with the job and its `Location`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    operation_id = "submit_job",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Submitting the same body with the same key again returns the first job (`idempotent-replayed: true`)")),
    request_body = SubmitJob,
    responses(
        (status = 202, description = "Accepted", body = JobView, headers(
            ("Location" = String, description = "The job's URL"),
            ("idempotent-replayed" = Option<String>, description = "`true` when an earlier submission with the same key is returned"),
        )),
        (status = 400, description = "Invalid submission (unknown type, a payload against its schema, …; `field` names it)"),
        (status = 403, description = "The caller's role may not submit this type"),
        (status = 409, description = "The idempotency key was used with a different body"),
        (status = 429, description = "The queue is full (`queue_full`), the caller submits faster than their rate (`rate_limited`), or has as many jobs waiting or running as their quota (`active_quota`); with `Retry-After`"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    me: CurrentUser,
    headers: HeaderMap,
    Json(body): Json<SubmitJob>,
) -> Result<Response, ApiError> {
    let limits = admit(&state, &me).await?;
    let (job, mut opts) = submit::prepare(&state, &me.user, &headers, body)?;
    opts.owner_max_active = limits.max_active;
    submit::check_inputs(&state, &job).await?;
    accept(&state, job, opts).await
}

/// The caller's limits, once their submission rate lets this submission in (429 with
/// `Retry-After` otherwise).
pub(crate) async fn admit(state: &AppState, me: &CurrentUser) -> Result<Effective, ApiError> {
    let limits = state.limits_of(&me.user).await?;
    if let Err(wait) = state.take_submission(&me.user, limits.submit) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "you are submitting faster than this server allows each client; wait before submitting again",
        );
        e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(e);
    }
    Ok(limits)
}

/// Stores a validated job: 202 with the job and its `Location` (and
/// `idempotent-replayed: true` when an earlier submission with the same key answers).
pub(crate) async fn accept(
    state: &AppState,
    job: NewJob,
    opts: InsertOptions,
) -> Result<Response, ApiError> {
    let inserted = state.store().job_insert(job, opts).await?;
    let replayed = matches!(inserted, Inserted::Existing(_));
    let job = match inserted {
        Inserted::Created(job) => {
            state.metrics().job_submitted(job.job_type.as_str());
            job
        }
        Inserted::Existing(job) => job,
    };
    let location = format!("/api/v1/jobs/{}", job.id);
    let mut resp = (StatusCode::ACCEPTED, Json(JobView::from(job))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, value);
    }
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `GET /jobs`: the caller's jobs.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    operation_id = "list_jobs",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of the caller's jobs", body = Page<JobView>),
        (status = 400, description = "A bad or unknown query parameter (`field` names it)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    if params.owner.is_some() {
        return Err(ApiError::invalid(
            "owner",
            "lists only your own jobs here; operators filter by owner on /api/v1/admin/jobs",
        ));
    }
    page(&state, params.into_query(Some(me.user.id))?).await
}

/// One page of a list query, as the wire shows it (payloads and results as stored).
pub async fn page(state: &AppState, query: kiln_store::ListQuery) -> Result<Response, ApiError> {
    let page = state.store().job_list(&query).await?;
    let size = page.items.iter().map(conditional::job_size).sum();
    let page: Page<JobView<RawJson>> = Page {
        items: page
            .items
            .into_iter()
            .map(|job| JobView::from(job).for_list())
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.encode()),
    };
    let body = conditional::body(&page, size)?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /jobs/{id}`, with an `ETag` (304 on `If-None-Match`).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "get_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 if unchanged")),
    responses(
        (status = 200, description = "The job", body = JobView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = state.store().job_read(Some(me.user.id), id).await?;
    job_response(&headers, job)
}

/// A job as `GET /jobs/{id}` (and the operators' `GET /admin/jobs/{id}`) answer it: with an
/// `ETag`, or 304 when the client has it already.
pub(crate) fn job_response(
    headers: &HeaderMap,
    job: kiln_domain::Job<RawJson>,
) -> Result<Response, ApiError> {
    let size = conditional::job_size(&job);
    conditional::json(headers, &JobView::from(job), size)
}

/// `GET /jobs/{id}/status[?wait=…&state_not=…]`, with an `ETag` (304 on `If-None-Match`).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/status",
    tag = "jobs",
    operation_id = "job_status",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), status::StatusParams, ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 if unchanged")),
    responses(
        (status = 200, description = "The job's state, progress, and its result once small enough", body = StatusView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "A bad id or query parameter"),
        (status = 404, description = "No such job (or not the caller's)"),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    Query(params): Query<status::StatusParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = status::read(&state, Some(me.user.id), id, params).await?;
    let size = conditional::JOB_OVERHEAD + view.result.as_ref().map_or(0, |r| r.get().len());
    conditional::json(&headers, &view, size)
}

/// `GET /jobs/{id}/result`: the result alone (what `status` links to when the result is
/// too large to inline); 404 while the job has none.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/result",
    tag = "jobs",
    operation_id = "job_result",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 if unchanged")),
    responses(
        (status = 200, description = "The result: any JSON value", body = Value, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job, or it has no result yet (`no_result`)"),
    )
)]
pub async fn result(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = state.store().job_read(Some(me.user.id), id).await?;
    let Some(result) = job.result else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_result",
            format!("job {id} has no result (it is {})", job.state),
        ));
    };
    let size = result.get().len();
    conditional::json(&headers, &result, size)
}

/// The query of `GET /jobs/{id}/events`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events after this `seq` (the last one of the page before).
    pub after: Option<i64>,
    /// Events per page, 1–1000 (default 1000).
    pub limit: Option<usize>,
}

/// The most events one answer holds.
pub const EVENTS_PAGE_MAX: usize = 1000;

/// `GET /jobs/{id}/events`: the state history, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/events",
    tag = "jobs",
    operation_id = "job_events",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), EventParams),
    responses(
        (status = 200, description = "The job's state changes, oldest first: at most `limit`; when more follow, a `Link: <…?after=SEQ&limit=N>; rel=\"next\"` header points at them", body = Vec<EventView>),
        (status = 400, description = "The id is not a job id, or a bad `after`/`limit`"),
        (status = 404, description = "No such job (or not the caller's)"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    Query(params): Query<EventParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(EVENTS_PAGE_MAX);
    if !(1..=EVENTS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {EVENTS_PAGE_MAX}"),
        ));
    }
    let after = params.after.unwrap_or(0);
    let events = state.store().event_list(Some(me.user.id), id).await?;
    let mut page: Vec<EventView> = events
        .into_iter()
        .filter(|e| e.seq > after)
        .take(limit + 1)
        .map(view::event)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let mut resp = Json(&page).into_response();
    if more && let Some(last) = page.last() {
        let next = format!(
            "</api/v1/jobs/{id}/events?after={}&limit={limit}>; rel=\"next\"",
            last.seq
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&next) {
            resp.headers_mut().insert(axum::http::header::LINK, value);
        }
    }
    Ok(resp)
}

/// `POST /jobs/{id}/cancel`: 200 with the job, or 202 if a running job is still stopping.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    operation_id = "cancel_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 200, description = "Cancelled, or already finished (then unchanged)", body = JobView),
        (status = 202, description = "A running job was asked to stop; it is still stopping", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Response, ApiError> {
    cancel_as(&state, Actor::Owner(me.user.id), id).await
}

/// A cancel by `actor`: 200 with the job, or 202 if a running job is still stopping.
pub(crate) async fn cancel_as(
    state: &AppState,
    actor: Actor<'_>,
    id: JobId,
) -> Result<Response, ApiError> {
    let (job, stopping) = cancel::cancel(state, actor, id).await?;
    let status = if stopping {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(JobView::from(job))).into_response())
}

/// `POST|PUT /jobs/{id}/retry`: a failed or dead job is queued with a fresh attempt budget.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/retry",
    tag = "jobs",
    operation_id = "retry_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 200, description = "The job, queued again with a fresh attempt budget", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
        (status = 409, description = "The job is neither failed nor dead"),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiError> {
    retry_as(&state, Actor::Owner(me.user.id), id).await
}

/// A retry by `actor`, with the type's attempt budget.
pub(crate) async fn retry_as(
    state: &AppState,
    actor: Actor<'_>,
    id: JobId,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store().job_get(actor.scope(), id).await?;
    let budget = state.catalogue().get(job.job_type).policy.max_attempts;
    let now = state.now();
    let job = match actor {
        Actor::Owner(owner) => {
            state
                .store()
                .job_retry(Some(owner), id, budget, now)
                .await?
        }
        Actor::Operator(name) => state.store().job_retry_by(name, id, budget, now).await?,
    };
    Ok(Json(job.into()))
}

/// `PATCH /jobs/{id}`: an `external` job's state report.
#[utoipa::path(
    patch,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "report_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    request_body = PatchJob,
    responses(
        (status = 200, description = "The job after the report", body = JobView),
        (status = 400, description = "A bad report (`field` names what)"),
        (status = 404, description = "No such job (or not the caller's)"),
        (status = 409, description = "Not an `external` job, or the state change is not allowed"),
        (status = 507, description = "A result over 64 KiB that does not fit the caller's storage quota (`storage_quota`), or no room on the server (`storage_full`)"),
    )
)]
pub async fn report(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    Json(body): Json<PatchJob>,
) -> Result<Json<JobView>, ApiError> {
    let error = body.error.map(|e| failure(body.state, e)).transpose()?;
    let (result, spilled) = match body.result {
        Some(value) if body.state == JobState::Succeeded => {
            spill_reported(&state, &me.user, id, value).await?
        }
        other => (other, None),
    };
    let report = Report {
        state: body.state,
        error,
        result,
    };
    let reported = state
        .store()
        .job_report(Some(me.user.id), id, report, state.now())
        .await;
    if let (Some(bytes), Some(objects)) = (spilled, &state.config().objects) {
        match &reported {
            // The report was refused: its result's artifact goes too.
            Err(_) => {
                let _ = objects.artifact_delete(id).await;
            }
            // Counted against the owner's storage quota from now on.
            Ok(_) => {
                state
                    .store()
                    .job_artifacts_set(Some(me.user.id), id, bytes)
                    .await?;
            }
        }
    }
    Ok(Json(reported?.into()))
}

/// A reported result over [`MAX_INLINE_RESULT`] is stored as the artifact `result.json` of
/// the job's current attempt, and the job keeps a summary, as for a worker's result; the
/// artifact's size when it was (507 `storage_quota` if it would pass the owner's quota).
async fn spill_reported(
    state: &AppState,
    owner: &kiln_domain::User,
    id: JobId,
    value: Value,
) -> Result<(Option<Value>, Option<u64>), ApiError> {
    let text = serde_json::to_vec(&value).map_err(ApiError::internal)?;
    if text.len() <= MAX_INLINE_RESULT {
        return Ok((Some(value), None));
    }
    let job = state.store().job_get(Some(owner.id), id).await?;
    if job.job_type != kiln_domain::JobType::External {
        // The store refuses the report itself (409); nothing to store.
        return Ok((Some(value), None));
    }
    let objects = state.config().objects.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "result",
            format!(
                "is over {MAX_INLINE_RESULT} bytes, and this server keeps no artifacts to hold it"
            ),
        )
    })?;
    let bytes = text.len();
    if let Some(quota) = state.limits_of(owner).await?.storage {
        let used = state.storage_used(objects, owner.id).await?;
        if used.saturating_add(bytes as u64) > quota {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_quota",
                format!(
                    "the result ({bytes} bytes) does not fit: your files and your jobs' artifacts take {used} of the {quota} bytes you may keep"
                ),
            ));
        }
    }
    objects
        .artifact_put_bytes(id, job.attempts, RESULT_ARTIFACT, text)
        .await?;
    Ok((Some(spilled_result(&value, bytes)), Some(bytes as u64)))
}

/// A reported error: a message string, or `{code?, message, retryable?}`.
fn failure(state: JobState, error: Value) -> Result<Failure, ApiError> {
    let retryable = state == JobState::Failed;
    match error {
        Value::String(message) => Ok(Failure {
            code: "external_error".to_owned(),
            message,
            retryable,
        }),
        Value::Object(map) => {
            let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
            let message =
                text("message").ok_or_else(|| ApiError::invalid("error.message", "is required"))?;
            Ok(Failure {
                code: text("code").unwrap_or_else(|| "external_error".to_owned()),
                message,
                retryable: map
                    .get("retryable")
                    .and_then(Value::as_bool)
                    .unwrap_or(retryable),
            })
        }
        _ => Err(ApiError::invalid(
            "error",
            "must be a message or {code, message}",
        )),
    }
}

/// `DELETE /jobs/{id}`: 204; 409 unless terminal.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "delete_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 204, description = "Deleted, with its history and artifacts"),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
        (status = 409, description = "The job has not finished"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<StatusCode, ApiError> {
    delete_as(&state, Actor::Owner(me.user.id), id).await
}

/// A delete by `actor`: the job and its history are gone, so an operator's delete is
/// recorded in the log instead.
pub(crate) async fn delete_as(
    state: &AppState,
    actor: Actor<'_>,
    id: JobId,
) -> Result<StatusCode, ApiError> {
    state.store().job_delete(actor.scope(), id).await?;
    if let Actor::Operator(operator) = actor {
        tracing::info!(job_id = %id, operator, "job deleted by an operator");
    }
    super::artifacts::remove(state, id).await;
    Ok(StatusCode::NO_CONTENT)
}
