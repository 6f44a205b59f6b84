//! `/api/v1/admin/*`: user management (admin); everyone's jobs and the queues (operator).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kiln_api::limits::{LimitOverrides, UserLimitsView};
use kiln_api::nodes::NodeView;
use kiln_api::{CreateUser, JobView, Page, PatchUser, QueueJobs, QueueView, UserView};
use kiln_domain::job::QueueName;
use kiln_domain::user::{check_password, parse_username};
use kiln_domain::{JobId, JobState, Role, UserId};
use kiln_store::{NewUser, UserPatch};

use crate::cancel::Actor;

use crate::auth::{CurrentUser, password};
use crate::extract::{Json, Path, Query};
use crate::list::ListParams;
use crate::problem::ApiError;
use crate::routes::jobs;
use crate::state::AppState;

/// `GET /admin/users`: every user.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    operation_id = "list_users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every user", body = Vec<UserView>),
        (status = 403, description = "The caller is not an admin"),
    )
)]
pub async fn list_users(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<UserView>>, ApiError> {
    me.require(Role::Admin)?;
    let users = state.store().user_list().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// `POST /admin/users` → 201; 409 if the name is taken.
#[utoipa::path(
    post,
    path = "/api/v1/admin/users",
    tag = "admin",
    operation_id = "create_user",
    security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "A bad username or password (`field` names it)"),
        (status = 403, description = "The caller is not an admin"),
        (status = 409, description = "The username is taken"),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    me: CurrentUser,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    me.require(Role::Admin)?;
    let username = parse_username(&body.username)?.to_owned();
    check_password(&body.password)?;
    let new = NewUser {
        username,
        password_hash: hash(body.password).await?,
        role: body.role.unwrap_or(Role::Client),
    };
    let user = state.store().user_insert(new, state.now()).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// `PATCH /admin/users/{id}`: role, password, disabled.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    operation_id = "update_user",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    request_body = PatchUser,
    responses(
        (status = 200, description = "The user after the change", body = UserView),
        (status = 400, description = "A bad id or password"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such user"),
        (status = 409, description = "The change would leave no active admin"),
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
    Json(body): Json<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    me.require(Role::Admin)?;
    let demotes = body.role.is_some_and(|r| r != Role::Admin) || body.disabled == Some(true);
    if demotes {
        keeps_an_admin(&state, UserId(id)).await?;
    }
    let password_hash = match body.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash(p).await?)
        }
        None => None,
    };
    let patch = UserPatch {
        role: body.role,
        password_hash,
        disabled: body.disabled,
    };
    let new_password = patch.password_hash.is_some();
    let user = state.store().user_update(UserId(id), patch).await?;
    state.tokens().forget_user(user.id);
    if new_password
        && user.username == "admin"
        && let Some(path) = &state.config().admin_password_file
    {
        crate::remove_password_file(path);
    }
    Ok(Json(user.into()))
}

/// `POST /admin/users/{id}/unlock`: lifts the user's login lockout on this node.
#[utoipa::path(
    post,
    path = "/api/v1/admin/users/{id}/unlock",
    tag = "admin",
    operation_id = "unlock_user",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Password logins for the user are accepted again (the lockout is per node: send it to each)"),
        (status = 400, description = "A bad id"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such user"),
    )
)]
pub async fn unlock_user(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    me.require(Role::Admin)?;
    let user = state.store().user_get(UserId(id)).await?;
    state.logins().unlock(&user.username);
    tracing::info!(user = %user.username, by = %me.user.username, "login lockout lifted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/users/{id}/limits`: the limits an admin set for the user, and what holds.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users/{id}/limits",
    tag = "admin",
    operation_id = "get_user_limits",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user's limits", body = UserLimitsView),
        (status = 400, description = "A bad id"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such user"),
    )
)]
pub async fn get_limits(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<UserLimitsView>, ApiError> {
    me.require(Role::Admin)?;
    let user = state.store().user_get(UserId(id)).await?;
    let own = state.store().user_limits(user.id).await?;
    Ok(Json(limits_view(&state, &user, &own)))
}

/// `PUT /admin/users/{id}/limits`: replaces the limits set for the user (an empty object
/// gives them every default).
#[utoipa::path(
    put,
    path = "/api/v1/admin/users/{id}/limits",
    tag = "admin",
    operation_id = "put_user_limits",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    request_body = LimitOverrides,
    responses(
        (status = 200, description = "Set: the user's limits now, applied by every node at once", body = UserLimitsView),
        (status = 400, description = "A bad id or limit (`field` names it)"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such user"),
    )
)]
pub async fn put_limits(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
    Json(body): Json<LimitOverrides>,
) -> Result<Json<UserLimitsView>, ApiError> {
    me.require(Role::Admin)?;
    let own = crate::limits::check(body)?;
    let user = state.store().user_get(UserId(id)).await?;
    let own = state.store().user_limits_set(user.id, own).await?;
    state.limits_cache().put(user.id, own.clone());
    tracing::info!(user = %user.username, by = %me.user.username, limits = ?own, "user limits set");
    Ok(Json(limits_view(&state, &user, &own)))
}

fn limits_view(
    state: &AppState,
    user: &kiln_domain::User,
    own: &kiln_store::UserLimits,
) -> UserLimitsView {
    UserLimitsView {
        user_id: user.id.0,
        overrides: crate::limits::overrides_view(own),
        effective: crate::limits::Effective::of(state.config(), user.role, own).view(),
    }
}

/// `Conflict` if `id` is the only active admin: demoting or disabling them would leave
/// nobody able to administer Kiln (`kiln user` on the server can still do it).
async fn keeps_an_admin(state: &AppState, id: UserId) -> Result<(), ApiError> {
    let admins: Vec<UserId> = state
        .store()
        .user_list()
        .await?
        .into_iter()
        .filter(|u| u.role == Role::Admin && !u.disabled)
        .map(|u| u.id)
        .collect();
    if admins == [id] {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin",
            "this is the only active admin: make another admin first",
        ));
    }
    Ok(())
}

/// `GET /admin/jobs`: every user's jobs (or one's, with `owner`), same filters as
/// `GET /jobs`.
#[utoipa::path(
    get,
    path = "/api/v1/admin/jobs",
    tag = "admin",
    operation_id = "admin_list_jobs",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of everyone's jobs (or `owner`'s)", body = Page<JobView>),
        (status = 400, description = "A bad or unknown query parameter (`field` names it)"),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(mut params): Query<ListParams>,
) -> Result<Response, ApiError> {
    me.require(Role::Operator)?;
    let owner = match params.owner.take().as_deref().map(str::trim) {
        None => None,
        Some("") => {
            return Err(ApiError::invalid(
                "owner",
                "must be a user id or a username",
            ));
        }
        Some(text) => match text.parse::<i64>() {
            Ok(id) => Some(UserId(id)),
            Err(_) => match state.store().user_by_name(text).await? {
                Some(record) => Some(record.user.id),
                // Nobody by that name owns anything: an empty page, as for an unused id.
                None => Some(UserId(-1)),
            },
        },
    };
    let mut query = params.into_query(None)?;
    query.owner = owner;
    jobs::page(&state, query).await
}

/// `GET /admin/jobs/{id}`: anyone's job.
#[utoipa::path(
    get,
    path = "/api/v1/admin/jobs/{id}",
    tag = "admin",
    operation_id = "admin_get_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)"), ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 if unchanged")),
    responses(
        (status = 200, description = "The job", body = JobView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `If-None-Match` tag"),
        (status = 400, description = "The id is not a job id"),
        (status = 403, description = "The caller is not an operator"),
        (status = 404, description = "No such job"),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    me.require(Role::Operator)?;
    let job = state.store().job_read(None, id).await?;
    jobs::job_response(&headers, job)
}

/// `POST /admin/jobs/{id}/cancel`: cancels anyone's job; the event names the operator.
#[utoipa::path(
    post,
    path = "/api/v1/admin/jobs/{id}/cancel",
    tag = "admin",
    operation_id = "admin_cancel_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 200, description = "Cancelled, or already finished (then unchanged)", body = JobView),
        (status = 202, description = "A running job was asked to stop; it is still stopping", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 403, description = "The caller is not an operator"),
        (status = 404, description = "No such job"),
    )
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Response, ApiError> {
    me.require(Role::Operator)?;
    jobs::cancel_as(&state, Actor::Operator(&me.user.username), id).await
}

/// `POST|PUT /admin/jobs/{id}/retry`: retries anyone's failed or dead job; the event names
/// the operator.
#[utoipa::path(
    post,
    path = "/api/v1/admin/jobs/{id}/retry",
    tag = "admin",
    operation_id = "admin_retry_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 200, description = "The job, queued again with a fresh attempt budget", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 403, description = "The caller is not an operator"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is neither failed nor dead"),
    )
)]
pub async fn retry_job(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiError> {
    me.require(Role::Operator)?;
    jobs::retry_as(&state, Actor::Operator(&me.user.username), id).await
}

/// `DELETE /admin/jobs/{id}`: deletes anyone's finished job (logged with the operator).
#[utoipa::path(
    delete,
    path = "/api/v1/admin/jobs/{id}",
    tag = "admin",
    operation_id = "admin_delete_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUIDv7)")),
    responses(
        (status = 204, description = "Deleted, with its history and artifacts"),
        (status = 400, description = "The id is not a job id"),
        (status = 403, description = "The caller is not an operator"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job has not finished"),
    )
)]
pub async fn delete_job(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<JobId>,
) -> Result<StatusCode, ApiError> {
    me.require(Role::Operator)?;
    jobs::delete_as(&state, Actor::Operator(&me.user.username), id).await
}

/// `GET /admin/queues`: every queue that has jobs waiting or running, a limit in
/// `kiln.toml`, or a pause/resume on record, plus `default`; by name.
#[utoipa::path(
    get,
    path = "/api/v1/admin/queues",
    tag = "admin",
    operation_id = "list_queues",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The queues, by name", body = Vec<QueueView>),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn list_queues(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<QueueView>>, ApiError> {
    me.require(Role::Operator)?;
    let depths = state.store().queue_depths().await?;
    let controls = state.store().queue_controls().await?;
    let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
    let limits = &state.config().queue_limits;
    let names = std::iter::once(QueueName::DEFAULT.to_owned())
        .chain(limits.keys().cloned())
        .chain(controls.iter().map(|c| c.name.clone()))
        .chain(depths.iter().map(|d| d.queue.clone()));
    for name in names {
        queues.entry(name.clone()).or_insert_with(|| QueueView {
            concurrency_limit: limits.get(&name).copied(),
            name,
            paused: false,
            changed_by: None,
            changed_at: None,
            jobs: QueueJobs::default(),
        });
    }
    for c in controls {
        if let Some(q) = queues.get_mut(&c.name) {
            q.paused = c.paused;
            q.changed_by = Some(c.changed_by);
            q.changed_at = Some(c.changed_at);
        }
    }
    for d in depths {
        if let Some(q) = queues.get_mut(&d.queue) {
            let slot = match d.state {
                JobState::Scheduled => &mut q.jobs.scheduled,
                JobState::Queued => &mut q.jobs.queued,
                JobState::Failed => &mut q.jobs.failed,
                _ => &mut q.jobs.running,
            };
            *slot += d.n;
        }
    }
    Ok(Json(queues.into_values().collect()))
}

/// `GET /admin/nodes`: every registered node, by id: live ones, and those that died in
/// the last day.
#[utoipa::path(
    get,
    path = "/api/v1/admin/nodes",
    tag = "admin",
    operation_id = "list_nodes",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The nodes, by id", body = Vec<NodeView>),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn list_nodes(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    me.require(Role::Operator)?;
    let nodes = state.store().node_list(state.now()).await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| NodeView {
                id: n.id,
                host: n.host,
                pid: n.pid,
                version: n.version,
                role: n.role,
                slots: n.slots,
                running: n.running,
                objects: n.objects,
                started_at: n.started_at,
                heartbeat_at: n.heartbeat_at,
                live: n.live,
            })
            .collect(),
    ))
}

/// `POST /admin/queues/{queue}/pause`: nothing of the queue is claimed until it is resumed
/// (jobs are still accepted); on every node, and kept across restarts.
#[utoipa::path(
    post,
    path = "/api/v1/admin/queues/{queue}/pause",
    tag = "admin",
    operation_id = "pause_queue",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "The queue's name")),
    responses(
        (status = 200, description = "The queue, paused", body = QueueView),
        (status = 400, description = "Not a valid queue name"),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn pause_queue(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(queue): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &me, &queue, true).await
}

/// `POST /admin/queues/{queue}/resume`: its jobs are claimed again.
#[utoipa::path(
    post,
    path = "/api/v1/admin/queues/{queue}/resume",
    tag = "admin",
    operation_id = "resume_queue",
    security(("bearer" = [])),
    params(("queue" = String, Path, description = "The queue's name")),
    responses(
        (status = 200, description = "The queue, resumed", body = QueueView),
        (status = 400, description = "Not a valid queue name"),
        (status = 403, description = "The caller is not an operator"),
    )
)]
pub async fn resume_queue(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(queue): Path<String>,
) -> Result<Json<QueueView>, ApiError> {
    set_paused(&state, &me, &queue, false).await
}

async fn set_paused(
    state: &AppState,
    me: &CurrentUser,
    queue: &str,
    paused: bool,
) -> Result<Json<QueueView>, ApiError> {
    me.require(Role::Operator)?;
    let name = QueueName::parse(queue).map_err(|e| ApiError::invalid("queue", e.to_string()))?;
    let control = state
        .store()
        .queue_set_paused(name.as_str(), paused, &me.user.username, state.now())
        .await?;
    tracing::info!(queue = %control.name, paused, operator = %me.user.username, "queue control");
    let queues = list_queues(State(state.clone()), me.clone()).await?.0;
    queues
        .into_iter()
        .find(|q| q.name == control.name)
        .map(Json)
        .ok_or_else(|| ApiError::internal("a queue just changed is missing from the list"))
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
