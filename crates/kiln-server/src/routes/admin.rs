//! `/api/v1/admin/*`: user management (admin) and everyone's jobs (operator).

use axum::extract::State;
use axum::http::StatusCode;
use kiln_api::{CreateUser, PatchUser, UserView};
use kiln_domain::user::{check_password, parse_username};
use kiln_domain::{Role, UserId};
use kiln_store::{NewUser, UserPatch};

use crate::auth::{CurrentUser, password};
use crate::extract::{Json, Path, Query};
use crate::list::ListParams;
use crate::problem::ApiError;
use crate::routes::jobs;
use crate::state::AppState;

/// `GET /admin/users`.
pub async fn list_users(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<UserView>>, ApiError> {
    me.require(Role::Admin)?;
    let users = state.store().user_list().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// `POST /admin/users` → 201; 409 if the name is taken.
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
pub async fn update_user(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<i64>,
    Json(body): Json<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    me.require(Role::Admin)?;
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
    let user = state.store().user_update(UserId(id), patch).await?;
    state.tokens().forget_user(user.id);
    Ok(Json(user.into()))
}

/// `GET /admin/jobs`: every user's jobs, same filters as `GET /jobs`.
pub async fn list_jobs(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(params): Query<ListParams>,
) -> Result<axum::response::Response, ApiError> {
    me.require(Role::Operator)?;
    jobs::page(&state, params.into_query(None)?).await
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
