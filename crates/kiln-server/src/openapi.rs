//! [`ApiDoc`]: the OpenAPI 3.1 description of the HTTP API, generated from the handlers'
//! `#[utoipa::path]` annotations and the `kiln-api` wire types, served at `GET /openapi.json`;
//! and Swagger UI at `GET /docs`, its files embedded in the binary.
//!
//! The annotations name each operation's own outcomes; [`Contract`] then adds what every
//! operation shares, as the middleware does: every 4xx/5xx body is a [`Problem`]
//! (`application/problem+json`, written by `observe` whatever failed), a secured operation may
//! answer 401, and any may answer 500.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::{JobView, Problem};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response as DocResponse};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_swagger_ui::Config;

use crate::extract::Path;
use crate::problem::ApiError;
use crate::routes::{admin, artifacts, auth, counts, events, files, jobs, logs, ops, pdf, series};

/// Where the document is served (`app::router`); Swagger UI loads it from here.
const OPENAPI_PATH: &str = "/openapi.json";
/// The name of the security scheme operations list (`security(("bearer" = []))`).
const BEARER: &str = "bearer";
/// The media type of every error body.
const PROBLEM_JSON: &str = "application/problem+json";

/// The OpenAPI document of the whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln",
        description = "Kiln's job orchestration API. Send `Authorization: Bearer <token>` \
            (from `POST /api/v1/auth/login`, or an API token from `POST /api/v1/tokens`). \
            Every error is an RFC 9457 problem (`application/problem+json`) with a stable \
            `code` and the `request_id` of the server's log line. Besides the statuses listed, \
            any route may answer 408 (time limit), 413 (body limit) or 503 (shutting down)."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi_json,
        docs,
        docs_file,
        auth::login,
        auth::logout,
        auth::me,
        auth::list_tokens,
        auth::create_token,
        auth::delete_token,
        jobs::create,
        jobs::list,
        counts::counts,
        jobs::get,
        jobs::report,
        jobs::delete,
        jobs::status,
        jobs::result,
        jobs::events,
        logs::logs,
        events::events,
        artifacts::list,
        artifacts::download,
        jobs::cancel,
        jobs::retry,
        retry_put,
        files::upload,
        files::list,
        files::get,
        files::delete,
        files::content,
        pdf::process,
        ops::job_types,
        admin::list_users,
        admin::create_user,
        admin::update_user,
        admin::unlock_user,
        admin::get_limits,
        admin::put_limits,
        admin::list_jobs,
        admin::get_job,
        admin::delete_job,
        admin::cancel_job,
        admin::retry_job,
        admin_retry_put,
        admin::list_queues,
        admin::pause_queue,
        admin::resume_queue,
        admin::list_nodes,
        series::series,
    ),
    components(schemas(Problem)),
    modifiers(&Contract),
    tags(
        (name = "auth", description = "Sessions, the caller and their API tokens"),
        (name = "jobs", description = "The caller's jobs: submit, read, follow, cancel, retry"),
        (name = "files", description = "Uploaded input files"),
        (name = "admin", description = "Users (admin); everyone's jobs, the queues, the nodes and this node's last hour (operator)"),
        (name = "ops", description = "Health, readiness, metrics, job types and this description"),
    )
)]
pub struct ApiDoc;

/// What every operation shares (module docs): the bearer scheme, 401 on secured operations,
/// 413 and 415 on those with a body, 500 on all, and the problem body on every 4xx/5xx
/// response.
struct Contract;

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token from `POST /api/v1/auth/login`, an API token from \
                         `POST /api/v1/tokens`, or (when the server accepts them) an OpenID \
                         Connect access token, as `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                shared_responses(operation);
            }
        }
    }
}

fn shared_responses(operation: &mut Operation) {
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let responses = &mut operation.responses.responses;
    if secured {
        responses.entry("401".to_owned()).or_insert_with(|| {
            DocResponse::new(
                "No valid bearer token (missing, unknown, expired, or its user disabled)",
            )
            .into()
        });
    }
    if operation.request_body.is_some() {
        // The body extractors answer these before any handler code runs.
        responses.entry("413".to_owned()).or_insert_with(|| {
            DocResponse::new("The body is over its limit (1 MiB for JSON; uploads have their own)")
                .into()
        });
        responses.entry("415".to_owned()).or_insert_with(|| {
            DocResponse::new("The body is not of the content type the operation takes").into()
        });
    }
    responses.entry("500".to_owned()).or_insert_with(|| {
        DocResponse::new("The server failed; the cause is in its log under the `request_id`").into()
    });
    for (status, response) in responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with(['4', '5']), response) {
            response.content.clear();
            response.content.insert(
                PROBLEM_JSON.to_owned(),
                Content::new(Some(Ref::from_schema_name(Problem::name()))),
            );
        }
    }
}

/// `PUT /api/v1/jobs/{id}/retry`: the router sends it to the same handler as `POST`; it is
/// an operation of its own here because operation ids are unique. Documentation only.
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{id}/retry",
    tag = "jobs",
    operation_id = "retry_job_put",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job, queued again with a fresh attempt budget", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 404, description = "No such job (or not the caller's)"),
        (status = 409, description = "The job is neither failed nor dead"),
    )
)]
#[allow(
    dead_code,
    reason = "documentation only: the router sends PUT to `jobs::retry`"
)]
fn retry_put() {}

/// `PUT /api/v1/admin/jobs/{id}/retry`: as [`retry_put`], for `admin::retry_job`.
#[utoipa::path(
    put,
    path = "/api/v1/admin/jobs/{id}/retry",
    tag = "admin",
    operation_id = "admin_retry_job_put",
    params(("id" = String, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job, queued again with a fresh attempt budget", body = JobView),
        (status = 400, description = "The id is not a job id"),
        (status = 403, description = "The caller is not an operator"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is neither failed nor dead"),
    )
)]
#[allow(
    dead_code,
    reason = "documentation only: the router sends PUT to `admin::retry_job`"
)]
fn admin_retry_put() {}

/// The multipart body of `POST /api/v1/files` (a schema only: axum reads the stream).
pub struct UploadForm;

impl PartialSchema for UploadForm {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "file",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/octet-stream")
                    .description(Some(
                        "The file; its name and media type are the part's `filename` and \
                         `Content-Type`",
                    )),
            )
            .required("file")
            .into()
    }
}

impl ToSchema for UploadForm {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UploadForm")
    }
}

/// The multipart body of `POST /api/v1/pdf-processing` (a schema only: axum reads the
/// stream).
pub struct PdfForm;

impl PartialSchema for PdfForm {
    fn schema() -> RefOr<Schema> {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "file",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/pdf")
                    .description(Some("The PDF (judged by its content, not its name)")),
            )
            .required("file")
            .property("prompt", text("What to ask the model about the document"))
            .property("priority", text("-100..=100, higher first"))
            .property("queue", text("Queue name (default `default`)"))
            .property("run_at", text("Run at this instant (RFC 3339)"))
            .property("delay_ms", text("Run after this many milliseconds"))
            .property("name", text("Optional name to filter by"))
            .into()
    }
}

impl ToSchema for PdfForm {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PdfForm")
    }
}

/// The document as served, rendered once.
static DOCUMENT: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

/// `GET /openapi.json`: this description (OpenAPI 3.1). No token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi_json() -> Result<Response, ApiError> {
    let body = DOCUMENT.as_ref().map_err(ApiError::internal)?.clone();
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// Swagger UI's settings: the document at [`OPENAPI_PATH`].
static SWAGGER: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::from(OPENAPI_PATH)));

/// `GET /docs`: Swagger UI, served from the binary (no token; calls need one).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "ops",
    operation_id = "docs",
    responses((status = 200, description = "Swagger UI's page", content_type = "text/html", body = String))
)]
pub async fn docs() -> Result<Response, ApiError> {
    let page = swagger_file("index.html")?.ok_or_else(|| ApiError::internal("no index.html"))?;
    // The page names its files relative to itself: at `/docs` (no slash) they would resolve
    // against `/`, so the page gets a base.
    let html = String::from_utf8_lossy(&page.bytes)
        .replacen("<head>", "<head>\n    <base href=\"/docs/\">", 1)
        .replacen("<title>Swagger UI</title>", "<title>Kiln API</title>", 1);
    Ok(([(CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

/// `GET /docs/{file}`: Swagger UI's scripts, styles and icons.
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "ops",
    operation_id = "docs_file",
    params(("file" = String, Path, description = "A file of Swagger UI, e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", content(
            ("text/javascript"), ("text/css"), ("image/png"), ("text/html")
        )),
        (status = 404, description = "Swagger UI has no such file"),
    )
)]
pub async fn docs_file(Path(file): Path<String>) -> Result<Response, ApiError> {
    let found = swagger_file(&file)?
        .ok_or_else(|| ApiError::not_found(format!("Swagger UI has no file `{file}`")))?;
    let content_type = HeaderValue::from_str(&found.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, content_type)],
        found.bytes.into_owned(),
    )
        .into_response())
}

/// A file of the embedded Swagger UI; `swagger-initializer.js` carries [`SWAGGER`].
fn swagger_file(name: &str) -> Result<Option<utoipa_swagger_ui::SwaggerFile<'static>>, ApiError> {
    utoipa_swagger_ui::serve(name, Arc::clone(&SWAGGER))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_renders() {
        let doc: serde_json::Value =
            serde_json::from_slice(DOCUMENT.as_ref().expect("rendered")).expect("JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
    }
}
