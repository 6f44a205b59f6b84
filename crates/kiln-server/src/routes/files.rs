//! `/api/v1/files[/{id}[/content]]`: uploads (multipart, streamed to object storage with a
//! size limit and a SHA-256), their metadata, their bytes, and their deletion. Every route
//! is owner-only: another user's file answers 404 exactly like an unknown id.
//!
//! The 1 MiB JSON body limit does not apply here: the route's own limit is the upload
//! limit plus [`MULTIPART_OVERHEAD`] for the multipart framing and other small fields.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_api::FileView;
use kiln_objects::{FileId, FileMeta, NewFile, Objects, ObjectsError};

use crate::auth::CurrentUser;
use crate::extract::{Json, Path};
use crate::openapi::UploadForm;
use crate::problem::ApiError;
use crate::state::AppState;

/// Bytes a multipart body may carry beyond the file itself (boundaries, part headers,
/// other small fields).
pub const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// The multipart field holding the file.
const FIELD: &str = "file";

/// `POST /files` (multipart/form-data, field `file`) → 201 with the file's metadata.
#[utoipa::path(
    post,
    path = "/api/v1/files",
    tag = "files",
    operation_id = "upload_file",
    security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data", description = "The file in the field `file`"),
    responses(
        (status = 201, description = "Stored", body = FileView, headers(("Location" = String, description = "The file's URL"))),
        (status = 400, description = "A broken multipart body, or no `file` field"),
        (status = 413, description = "Larger than the upload limit"),
        (status = 507, description = "Over the caller's storage quota (`storage_quota`)"),
        (status = 415, description = "Not `multipart/form-data`"),
        (status = 503, description = "This server has no object storage (`uploads_disabled`), or is taking as many uploads as it may at once (`uploads_busy`, with `Retry-After`)"),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    me: CurrentUser,
    req: Request,
) -> Result<Response, ApiError> {
    let (upload, mut multipart) = Upload::begin(&state, &me, req).await?;
    // The `file` field, skipping any other fields before it.
    let field = loop {
        match multipart.next_field().await.map_err(ApiError::multipart)? {
            Some(field) if field.name() == Some(FIELD) => break field,
            Some(_) => {}
            None => {
                let reason = "the multipart body has no `file` field";
                return Err(ApiError::invalid(FIELD, reason));
            }
        }
    };
    let file = new_file(&state, &field);
    let meta = match upload.put(me.user.id, file, field).await {
        Ok(meta) => meta,
        Err(e) => {
            drain(&mut multipart).await;
            return Err(upload.refused(e));
        }
    };
    let location = format!("/api/v1/files/{}", meta.id);
    let mut resp = (StatusCode::CREATED, Json(view(meta))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, value);
    }
    Ok(resp)
}

/// An upload a route has agreed to take: the store, a permit among the uploads this server
/// takes at once (held until the upload is stored or refused, so slow uploads cannot pile
/// up without end), and the bytes the caller may still store. Shared by `POST /files` and
/// `POST /pdf-processing`.
pub(crate) struct Upload {
    objects: Objects,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The most bytes this upload may have: the upload limit, or less of the quota.
    limit: u64,
    /// The caller's storage quota and what they use, when the quota (not the upload
    /// limit) bounds this upload.
    quota_bound: Option<(u64, u64)>,
}

impl Upload {
    /// Checks the request's headers, takes a permit and reads the caller's storage room;
    /// returns the upload and the request's multipart fields.
    pub(crate) async fn begin(
        state: &AppState,
        me: &CurrentUser,
        req: Request,
    ) -> Result<(Self, Multipart), ApiError> {
        let objects = objects(state)?.clone();
        let limit = state.config().upload_limit;
        check_headers(req.headers(), limit)?;
        let Some(permit) = state.upload_permit() else {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "uploads_busy",
                format!(
                    "{} uploads are in progress, the most this server takes at once; try again shortly",
                    state.config().max_uploads
                ),
            );
            e.retry_after = Some(1);
            return Err(e);
        };
        let multipart = Multipart::from_request(req, state).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
        })?;
        // The user's storage quota: what is left of it bounds this upload too.
        let room = match state.limits_of(&me.user).await?.storage {
            Some(quota) => {
                let used = state.storage_used(&objects, me.user.id).await?;
                Some((quota, used, quota.saturating_sub(used)))
            }
            None => None,
        };
        let quota_bound = room
            .filter(|&(_, _, left)| left < limit)
            .map(|(quota, used, _)| (quota, used));
        let upload = Self {
            objects,
            _permit: permit,
            limit: room.map_or(limit, |(_, _, left)| left.min(limit)),
            quota_bound,
        };
        Ok((upload, multipart))
    }

    /// Streams `body` into a new file of `owner`; nothing is kept when it fails.
    pub(crate) async fn put<S, E>(
        &self,
        owner: kiln_domain::UserId,
        file: NewFile,
        body: S,
    ) -> Result<FileMeta, ObjectsError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send,
        E: Into<kiln_objects::BoxError>,
    {
        self.objects.file_put(owner, file, body, self.limit).await
    }

    /// The store, to delete the file again when what follows the upload is refused.
    pub(crate) fn objects(&self) -> &Objects {
        &self.objects
    }

    /// The problem a failed [`Upload::put`] answers: over the quota when it was the
    /// quota, not the upload limit, that bounded it.
    pub(crate) fn refused(&self, e: ObjectsError) -> ApiError {
        match (e, self.quota_bound) {
            (ObjectsError::TooLarge { .. }, Some((quota, used))) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_quota",
                format!(
                    "your files and your jobs' artifacts take {used} of the {quota} bytes you may keep; delete some to upload this one"
                ),
            ),
            (e, _) => e.into(),
        }
    }
}

/// The new file a multipart field declares: its name and type (the type as declared; it
/// is only ever served back with `nosniff`).
pub(crate) fn new_file(state: &AppState, field: &axum::extract::multipart::Field<'_>) -> NewFile {
    NewFile {
        name: field.file_name().unwrap_or(FIELD).to_owned(),
        content_type: field
            .content_type()
            .unwrap_or("application/octet-stream")
            .chars()
            .take(255)
            .collect(),
        created_at: state.now(),
    }
}

/// Reads (and drops) the rest of a refused multipart body, bounded by the route's limit,
/// so the client sees the error rather than a reset connection.
pub(crate) async fn drain(multipart: &mut Multipart) {
    while let Ok(Some(_)) = multipart.next_field().await {}
}

/// `GET /files`: the caller's files, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/files",
    tag = "files",
    operation_id = "list_files",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's files, newest first", body = Vec<FileView>),
        (status = 503, description = "This server has no object storage (`uploads_disabled`)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    me: CurrentUser,
) -> Result<Json<Vec<FileView>>, ApiError> {
    let objects = objects(&state)?;
    let files = objects.file_list(me.user.id).await?;
    Ok(Json(files.into_iter().map(view).collect()))
}

/// `GET /files/{id}`: the file's metadata.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}",
    tag = "files",
    operation_id = "get_file",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file's metadata", body = FileView),
        (status = 404, description = "No such file (or not the caller's)"),
        (status = 503, description = "This server has no object storage (`uploads_disabled`)"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<FileView>, ApiError> {
    let objects = objects(&state)?;
    let meta = objects
        .file_meta(
            me.user.id,
            FileId::parse(&id).map_err(|e| ApiError::objects(e, format!("file {id}")))?,
        )
        .await
        .map_err(|e| ApiError::objects(e, format!("file {id}")))?;
    Ok(Json(view(meta)))
}

/// `GET /files/{id}/content`: the bytes, streamed, with their type and length.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}/content",
    tag = "files",
    operation_id = "file_content",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The bytes, as the media type declared at upload", content(("application/octet-stream"))),
        (status = 404, description = "No such file (or not the caller's)"),
        (status = 503, description = "This server has no object storage (`uploads_disabled`)"),
    )
)]
pub async fn content(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let objects = objects(&state)?;
    let file_id = FileId::parse(&id).map_err(|e| ApiError::objects(e, format!("file {id}")))?;
    let (meta, stream) = objects
        .file_get(me.user.id, file_id)
        .await
        .map_err(|e| ApiError::objects(e, format!("file {id}")))?;
    let mut resp = Body::from_stream(stream).into_response();
    let headers = resp.headers_mut();
    let content_type = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Ok(value) = HeaderValue::from_str(&disposition(&meta.name)) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    // The type is what the uploader declared: a browser must not guess a riskier one.
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// `DELETE /files/{id}` → 204.
#[utoipa::path(
    delete,
    path = "/api/v1/files/{id}",
    tag = "files",
    operation_id = "delete_file",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such file (or not the caller's)"),
        (status = 503, description = "This server has no object storage (`uploads_disabled`)"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let objects = objects(&state)?;
    let file_id = FileId::parse(&id).map_err(|e| ApiError::objects(e, format!("file {id}")))?;
    objects
        .file_delete(me.user.id, file_id)
        .await
        .map_err(|e| ApiError::objects(e, format!("file {id}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The object store, or 503 when this server was started without one.
fn objects(state: &AppState) -> Result<&Objects, ApiError> {
    state.config().objects.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "uploads_disabled",
            "this server has no object storage for uploads",
        )
    })
}

/// 415 unless multipart/form-data; 413 at once when the declared length is over the limit.
fn check_headers(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let is_multipart = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !is_multipart {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "uploads must be `multipart/form-data` with the file in the field `file`",
        ));
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD)) {
        return Err(ApiError::too_large(limit));
    }
    Ok(())
}

fn view(meta: FileMeta) -> FileView {
    FileView {
        id: meta.id.to_string(),
        name: meta.name,
        size: meta.size,
        sha256: meta.sha256,
        content_type: meta.content_type,
        created_at: meta.created_at,
    }
}

/// `attachment; filename="…"` with the name reduced to safe ASCII.
fn disposition(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("attachment; filename=\"{safe}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_plain_ascii() {
        assert_eq!(
            disposition("a\"b;é.csv"),
            "attachment; filename=\"a_b__.csv\""
        );
    }
}
