//! Kiln's HTTP wire types, shared by the server and the clients (CLI, bench, tests).
//!
//! Field names are snake_case, states lowercase, timestamps RFC 3339 UTC with milliseconds.
//! Conversions from domain types live here so every surface renders a job the same way.
#![warn(missing_docs)]

pub mod limits;
pub mod nodes;
pub mod schema;
pub mod series;
pub mod ts;

pub use series::{MinuteView, Percentiles, SeriesView};

use kiln_domain::{Failure, Job, JobId, JobState, Role, Timestamp, User};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::schema::{JobStateSchema, RoleSchema};

/// `POST /api/v1/jobs` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "sleep", "payload": {"ms": 1000}, "priority": 10, "queue": "default"}))]
pub struct SubmitJob {
    /// Job type name.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Payload for the type's schema (default `null`): any JSON value the type's schema
    /// (`GET /api/v1/job-types`) accepts.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub payload: Value,
    /// -100..=100, higher first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -100, maximum = 100)]
    pub priority: Option<i64>,
    /// Queue name (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Run at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub run_at: Option<Timestamp>,
    /// Run after this many ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Optional name to filter by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A job as the API shows it. `J` holds the payload and result: a [`Value`], or the stored
/// text ([`kiln_domain::RawJson`]) on reads, which then never parse it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(bound = "", as = JobView, description = "A job as the API shows it.")]
pub struct JobView<J = Value> {
    /// The job's id, a UUIDv7 (ids sort by creation time).
    pub id: String,
    /// Type name.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The queue it was submitted to (`default` unless the submission named one).
    pub queue: String,
    /// The free-text name given at submission, if any (a filter of `GET /jobs`).
    pub name: Option<String>,
    /// Where the job is in its lifecycle.
    #[schema(value_type = JobStateSchema)]
    pub state: JobState,
    /// -100..=100; higher-priority jobs are claimed first. Default 0.
    pub priority: i16,
    /// The payload as submitted (valid for the type's schema).
    #[schema(value_type = Value)]
    pub payload: J,
    /// The result once `succeeded` (or as an `external` job's owner reported it); a result
    /// over 64 KiB is a summary pointing at the artifact `result.json`.
    #[schema(value_type = Option<Value>)]
    pub result: Option<J>,
    /// The last attempt's failure (`code`, `message`, `retryable`), kept after a retry.
    #[schema(value_type = Option<schema::Failure>)]
    pub error: Option<Failure>,
    /// Attempts started so far: the current attempt's number (it never goes back).
    pub attempts: u32,
    /// Attempts allowed before a retryable failure makes the job `dead`; a manual retry
    /// raises it.
    pub max_attempts: u32,
    /// 0.0–1.0, reported by the running attempt; 1.0 once succeeded.
    pub progress: f32,
    /// A cancel was requested while the job was running. It stays set after the attempt
    /// stopped; the next claim or a manual retry clears it.
    pub cancel_requested: bool,
    /// Submission time.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub created_at: Timestamp,
    /// (Next) run time.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub run_at: Timestamp,
    /// Latest attempt's start.
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub started_at: Option<Timestamp>,
    /// When the job reached a terminal state (`null` before).
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub finished_at: Option<Timestamp>,
    /// The last change of state, progress or cancel request.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub updated_at: Timestamp,
    /// In lists only: what was left out of this entry because it is over
    /// [`LIST_INLINE_MAX`] bytes (the payload then reads `null`, the result is absent);
    /// the job's own route has it whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elided: Option<Elided>,
}

/// The most bytes of payload, and of result, a job list shows inline per job: one page's
/// size never grows with what a client chose to store.
pub const LIST_INLINE_MAX: usize = 4096;

/// What a list entry left out ([`JobView::elided`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Elided {
    /// The payload's size in bytes, when it was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    /// The result's size in bytes, when it was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<usize>,
    /// Where the whole job is (`/api/v1/jobs/{id}`).
    pub url: String,
}

impl JobView<kiln_domain::RawJson> {
    /// This entry as a list shows it: a payload or result over [`LIST_INLINE_MAX`] bytes
    /// left out and named in [`JobView::elided`].
    pub fn for_list(mut self) -> Self {
        let payload_bytes = self.payload.get().len();
        let result_bytes = self.result.as_ref().map_or(0, |r| r.get().len());
        if payload_bytes <= LIST_INLINE_MAX && result_bytes <= LIST_INLINE_MAX {
            return self;
        }
        let mut elided = Elided {
            payload_bytes: None,
            result_bytes: None,
            url: format!("/api/v1/jobs/{}", self.id),
        };
        if payload_bytes > LIST_INLINE_MAX
            && let Ok(null) = serde_json::value::RawValue::from_string("null".to_owned())
        {
            self.payload = null;
            elided.payload_bytes = Some(payload_bytes);
        }
        if result_bytes > LIST_INLINE_MAX {
            self.result = None;
            elided.result_bytes = Some(result_bytes);
        }
        self.elided = Some(elided);
        self
    }
}

impl<J> From<Job<J>> for JobView<J> {
    fn from(job: Job<J>) -> Self {
        Self {
            id: job.id.to_string(),
            job_type: job.job_type.as_str().to_owned(),
            queue: job.queue.into(),
            name: job.name,
            state: job.state,
            priority: job.priority,
            payload: job.payload,
            result: job.result,
            error: job.error,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            progress: job.progress,
            cancel_requested: job.cancel_requested,
            created_at: job.created_at,
            run_at: job.run_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            updated_at: job.updated_at,
            elided: None,
        }
    }
}

/// `GET /api/v1/jobs/{id}/status`: what a poller needs (`J` as in [`JobView`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(bound = "", as = StatusView, description = "What a poller of `GET /api/v1/jobs/{id}/status` needs.")]
pub struct StatusView<J = Value> {
    /// The job's id.
    pub id: String,
    /// Its current state.
    #[schema(value_type = JobStateSchema)]
    pub state: JobState,
    /// 0.0–1.0.
    pub progress: f32,
    /// Last change.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub updated_at: Timestamp,
    /// Result, once there is one, when it is small (at most 4096 bytes of JSON:
    /// `STATUS_RESULT_INLINE_MAX`); a larger one is at `result_url`, so a poll stays light.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<J>,
    /// Where a result too large to inline is read (`GET /api/v1/jobs/{id}/result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    /// Error, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::Failure>)]
    pub error: Option<Failure>,
}

/// The largest result, in bytes of JSON, that `GET /jobs/{id}/status` carries inline.
pub const STATUS_RESULT_INLINE_MAX: u32 = 4096;

/// One entry of `GET /api/v1/jobs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Order, from 1.
    pub seq: i64,
    /// State entered.
    #[schema(value_type = JobStateSchema)]
    pub state: JobState,
    /// When the state was entered (or the cancel requested).
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub at: Timestamp,
    /// Attempt number then.
    pub attempt: u32,
    /// Node involved.
    pub node: Option<String>,
    /// What happened.
    pub message: Option<String>,
}

/// How many of the caller's jobs are in each state (`GET /jobs/counts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    /// All of their jobs.
    pub total: u64,
    /// Per state, every state named (0 when none).
    pub by_state: std::collections::BTreeMap<String, u64>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// At most the `limit` asked for (default 20, at most 100), in the requested order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// `PATCH /api/v1/jobs/{id}` body: an `external` job's state report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchJob {
    /// New state.
    #[schema(value_type = JobStateSchema)]
    pub state: JobState,
    /// Result (with `succeeded`).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Value>,
    /// Error message or object (with `failed`/`dead`).
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub error: Option<Value>,
}

/// `POST /api/v1/auth/login` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's login name.
    pub username: String,
    /// The user's password (ten failures within five minutes: 429 for that username).
    pub password: String,
}

/// `POST /api/v1/auth/login` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The session token, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// When the token stops working (the server's session TTL, 24 h by default).
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub expires_at: Timestamp,
    /// Who logged in.
    pub user: UserView,
}

/// A queue as `GET /admin/queues` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// The queue's name.
    pub name: String,
    /// Paused: it accepts jobs, but no node claims them until it is resumed.
    pub paused: bool,
    /// Who last paused or resumed it (`null`: nobody ever did).
    pub changed_by: Option<String>,
    /// When (`null`: never).
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub changed_at: Option<Timestamp>,
    /// Jobs waiting or running in it, across the cluster.
    pub jobs: QueueJobs,
    /// Attempts of this queue one node runs at once (`kiln.toml`); `null`: only
    /// `MAX_CONCURRENCY` limits it.
    pub concurrency_limit: Option<usize>,
}

/// A queue's jobs by waiting or running state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueJobs {
    /// Due later.
    pub scheduled: u64,
    /// Waiting for a worker.
    pub queued: u64,
    /// Failed, waiting for a retry.
    pub failed: u64,
    /// Running now.
    pub running: u64,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// The user's id (`PATCH /admin/users/{id}`).
    pub id: i64,
    /// The unique login name.
    pub username: String,
    /// What the user may do: `client`, `operator` or `admin`.
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    /// A disabled user cannot log in, and their tokens stop working.
    pub disabled: bool,
    /// When the user was created.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub created_at: Timestamp,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id.0,
            username: user.username,
            role: user.role,
            disabled: user.disabled,
            created_at: user.created_at,
        }
    }
}

/// `POST /api/v1/admin/users` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The login name: 1–64 characters of letters, digits, `.`, `_`, `@` or `-`; unique.
    pub username: String,
    /// Password (at least 8 characters).
    pub password: String,
    /// Role (default client).
    #[serde(default)]
    #[schema(value_type = Option<RoleSchema>)]
    pub role: Option<Role>,
}

/// `PATCH /api/v1/admin/users/{id}` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    /// New role; absent keeps it.
    #[serde(default)]
    #[schema(value_type = Option<RoleSchema>)]
    pub role: Option<Role>,
    /// New password (at least 8 characters); absent keeps it.
    #[serde(default)]
    pub password: Option<String>,
    /// `true` disables the user (no login, tokens stop working), `false` enables them.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// The longest lifetime an operator may allow API tokens (`KILN_TOKEN_MAX_DAYS`), in days
/// (ten years): beyond it a date would leave what RFC 3339 timestamps can say.
pub const MAX_TOKEN_DAYS: u32 = 3650;

/// An API token's lifetime when the request names none, in days (or the server's maximum,
/// if that is shorter). Every API token expires.
pub const DEFAULT_TOKEN_DAYS: u32 = 90;

/// `POST /api/v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label to recognise the token by in `GET /tokens`.
    pub name: String,
    /// Lifetime in days, 1 to the server's maximum (`KILN_TOKEN_MAX_DAYS`, 365 by default;
    /// at most [`MAX_TOKEN_DAYS`]); default [`DEFAULT_TOKEN_DAYS`].
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// One Server-Sent Event, as `GET /events` and a followed log stream carry it: the
/// schema a streaming client (or a fuzzer) checks each event against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SseEvent {
    /// Where the stream is: send it back as `Last-Event-ID` to resume after this event.
    pub id: Option<String>,
    /// The event's name (`message` when the stream gives none; a log stream ends with `end`).
    pub event: Option<String>,
    /// The payload: a JSON document on `GET /events` (`{id, type, state, attempt, at}`), a
    /// line of text on a log stream.
    pub data: String,
}

/// An API token's metadata; `token` (the secret) only in the creation response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The token's id (`DELETE /tokens/{id}`).
    pub id: i64,
    /// The label given at creation.
    pub name: String,
    /// When it was created.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub created_at: Timestamp,
    /// When it stops working; `null`: never.
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub expires_at: Option<Timestamp>,
    /// The secret, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// An uploaded file (`POST /api/v1/files`, `GET /api/v1/files/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileView {
    /// Id (a UUID), what `csv_aggregate {file_id}` takes.
    pub id: String,
    /// The name it was uploaded under.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The media type declared at upload.
    pub content_type: String,
    /// When the upload finished.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime, example = "2026-01-02T03:04:05.678Z")]
    pub created_at: Timestamp,
}

/// One file a job wrote: an entry of a succeeded job's `result.artifacts` and of
/// `GET /api/v1/jobs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactLink {
    /// File name (letters, digits, `.`, `-`, `_`).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The media type it is served with.
    pub content_type: String,
    /// Where to download it (the job owner's credentials apply).
    pub url: String,
}

impl ArtifactLink {
    /// The link to artifact `name` (`bytes` long) of job `job`.
    pub fn new(job: JobId, name: &str, bytes: u64) -> Self {
        Self {
            url: format!("/api/v1/jobs/{job}/artifacts/{name}"),
            content_type: artifact_content_type(name).to_owned(),
            bytes,
            name: name.to_owned(),
        }
    }
}

/// The media type an artifact is served with, from its extension: `.csv`, `.json`,
/// `.txt`/`.log` as text or JSON, NumPy arrays (`.npy`) and anything else as raw bytes.
pub fn artifact_content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("csv") => "text/csv; charset=utf-8",
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The JSON answer of `GET /metrics` (any `Accept` that names neither `text/plain` nor
/// OpenMetrics, or none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsSummary {
    /// Jobs ever submitted.
    pub total_submitted: u64,
    /// Now scheduled.
    pub scheduled: u64,
    /// Now queued.
    pub queued: u64,
    /// Now running.
    pub running: u64,
    /// Now failed (retry pending).
    pub failed: u64,
    /// Now succeeded (until pruned).
    pub succeeded: u64,
    /// Now dead (until retried or pruned).
    pub dead: u64,
    /// Now cancelled (until pruned).
    pub cancelled: u64,
    /// Mean run time of the 1,000 most recently finished succeeded jobs, ms.
    pub avg_duration_ms: f64,
    /// p95 of `started_at − created_at` over the 1,000 most recently finished jobs that
    /// started, ms.
    pub p95_start_latency_ms: f64,
}

/// An RFC 9457 problem document with Kiln's extensions: the body of every error response,
/// served as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:kiln:problem:invalid_request",
    "title": "Bad Request",
    "status": 400,
    "detail": "payload.ms: must be at most 3600000",
    "code": "invalid_request",
    "request_id": "0190f5a2-7c1e-7b3a-9d4e-2f6a8b1c3d5e",
    "field": "payload.ms"
}))]
pub struct Problem {
    /// A URI naming the problem type: `urn:kiln:problem:` and the `code`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// This occurrence, in words.
    pub detail: String,
    /// Stable snake_case code.
    pub code: String,
    /// The request's id, as in the server log.
    pub request_id: String,
    /// The offending field, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_links_name_their_type_and_download_route() {
        let job = JobId::new();
        let link = ArtifactLink::new(job, "data.csv", 12);
        assert_eq!(
            link.url,
            format!("/api/v1/jobs/{}/artifacts/data.csv", job.0.hyphenated())
        );
        assert_eq!(link.content_type, "text/csv; charset=utf-8");
        assert_eq!(link.bytes, 12);
        assert_eq!(
            artifact_content_type("primes.npy"),
            "application/octet-stream"
        );
        assert_eq!(artifact_content_type("result.json"), "application/json");
        assert_eq!(artifact_content_type("noext"), "application/octet-stream");
    }
}
