//! The job record and the validated parts of a submission.
//!
//! A submission is parsed once, here, into a [`NewJob`]; nothing downstream re-validates it.

use std::fmt;
use std::str::FromStr;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::job_type::{Catalogue, JobType};
use crate::state::initial_state;
use crate::{Failure, Invalid, JobState, Role, Timestamp, UserId};

/// A job's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh UUIDv7.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| Invalid::new("id", "is not a UUID"))
    }
}

/// Scheduling priority, -100..=100; higher runs first. Default 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(i16);

impl Priority {
    /// The lowest priority a submission may give.
    pub const MIN: i16 = -100;
    /// The highest priority a submission may give.
    pub const MAX: i16 = 100;

    /// Checks the range.
    pub fn parse(value: i64) -> Result<Self, Invalid> {
        if !(i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&value) {
            return Err(Invalid::new("priority", "must be between -100 and 100"));
        }
        Ok(Self(value as i16))
    }

    /// The priority as a number in `MIN..=MAX`.
    pub fn get(self) -> i16 {
        self.0
    }
}

/// A queue name: 1–64 characters of `[a-z0-9_-]`. Default `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueName(String);

impl QueueName {
    /// The queue jobs go to when the submission names none.
    pub const DEFAULT: &'static str = "default";

    /// Checks the name.
    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
            return Err(Invalid::new(
                "queue",
                "must be 1-64 characters of lowercase letters, digits, '_' or '-'",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name, already checked by [`QueueName::parse`].
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueName {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<QueueName> for String {
    fn from(queue: QueueName) -> Self {
        queue.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for QueueName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// The longest delay a submission may ask for (`run_at` at most a year ahead).
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;
/// The longest job name.
pub const MAX_NAME_LEN: usize = 200;

/// A submission as the API received it, before validation.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The type's snake_case name (e.g. `sleep`), looked up in the catalogue.
    pub job_type: String,
    /// The payload, validated against the type's schema.
    pub payload: Value,
    /// -100..=100; `None` means 0.
    pub priority: Option<i64>,
    /// Queue name; `None` means `default`.
    pub queue: Option<String>,
    /// Run at this instant (exclusive with `delay_ms`).
    pub run_at: Option<Timestamp>,
    /// Run after this many milliseconds (exclusive with `run_at`).
    pub delay_ms: Option<u64>,
    /// Optional free-text name for filtering.
    pub name: Option<String>,
}

/// A validated job, ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Fresh id (UUIDv7).
    pub id: JobId,
    /// Who submitted it; only they see the job.
    pub owner: UserId,
    /// Its type, known to the catalogue and allowed for the submitter's role.
    pub job_type: JobType,
    /// Its queue (`default` unless the submission named one).
    pub queue: QueueName,
    /// Optional free-text name (at most [`MAX_NAME_LEN`] bytes).
    pub name: Option<String>,
    /// Priority (default 0).
    pub priority: Priority,
    /// Payload (schema-valid).
    pub payload: Value,
    /// `scheduled` or `queued`.
    pub state: JobState,
    /// When it may first run.
    pub run_at: Timestamp,
    /// The type's attempt budget (its policy's `max_attempts` at submission).
    pub max_attempts: u32,
    /// Submission time.
    pub created_at: Timestamp,
    /// The W3C trace id of the submitting request, if it sent a `traceparent` (or the
    /// OTLP exporter put the request in a trace).
    pub trace_id: Option<String>,
    /// The span the attempts continue within `trace_id` (16 hex digits): the submitting
    /// request's span, or the client's parent span.
    pub parent_span_id: Option<String>,
}

impl NewJob {
    /// Validates a submission by `owner` (whose role gates some types) at `now`.
    pub fn parse(
        sub: Submission,
        owner: UserId,
        role: Role,
        catalogue: &Catalogue,
        now: Timestamp,
    ) -> Result<Self, Invalid> {
        let spec = catalogue.get_by_name(&sub.job_type)?;
        if role < spec.min_role {
            return Err(Invalid::new(
                "type",
                format!("`{}` jobs need the {} role", spec.name, spec.min_role),
            ));
        }
        spec.job_type.validate(&sub.payload)?;
        let run_at = match (sub.run_at, sub.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new("run_at", "give run_at or delay_ms, not both"));
            }
            (Some(at), None) => crate::clock::truncate_ms(at),
            (None, Some(ms)) => i64::try_from(ms)
                .ok()
                .and_then(TimeDelta::try_milliseconds)
                .and_then(|delay| now.checked_add_signed(delay))
                .ok_or_else(too_far)?,
            (None, None) => now,
        };
        if run_at > now + TimeDelta::days(MAX_SCHEDULE_AHEAD_DAYS) {
            return Err(too_far());
        }
        let name = match sub.name {
            Some(n) if n.len() > MAX_NAME_LEN => {
                return Err(Invalid::new("name", "must be at most 200 bytes"));
            }
            other => other,
        };
        Ok(Self {
            id: JobId::new(),
            owner,
            job_type: spec.job_type,
            queue: sub
                .queue
                .as_deref()
                .map(QueueName::parse)
                .transpose()?
                .unwrap_or_default(),
            name,
            priority: sub
                .priority
                .map(Priority::parse)
                .transpose()?
                .unwrap_or_default(),
            payload: sub.payload,
            state: initial_state(run_at, now),
            run_at,
            max_attempts: spec.policy.max_attempts,
            created_at: now,
            trace_id: None,
            parent_span_id: None,
        })
    }
}

fn too_far() -> Invalid {
    Invalid::new("run_at", "must be at most a year ahead")
}

impl NewJob {
    /// The record this submission becomes when stored: nothing run yet, times at the
    /// stored millisecond precision.
    pub fn into_job(self) -> Job {
        let created_at = crate::clock::truncate_ms(self.created_at);
        Job {
            id: self.id,
            owner: self.owner,
            job_type: self.job_type,
            queue: self.queue,
            name: self.name,
            state: self.state,
            priority: self.priority.get(),
            payload: self.payload,
            result: None,
            error: None,
            attempts: 0,
            max_attempts: self.max_attempts,
            progress: 0.0,
            cancel_requested: false,
            created_at,
            run_at: crate::clock::truncate_ms(self.run_at),
            started_at: None,
            finished_at: None,
            updated_at: created_at,
            node: None,
            lease_expires_at: None,
            trace_id: self.trace_id,
            parent_span_id: self.parent_span_id,
        }
    }
}

/// JSON kept as the text it was stored as: what reads carry, so a payload or result goes
/// from the database to the response without being parsed into a tree and written again.
pub type RawJson = Box<serde_json::value::RawValue>;

/// Results larger than this (as JSON) are kept as the artifact [`RESULT_ARTIFACT`]; the job's
/// `result` keeps [`spilled_result`]'s summary.
pub const MAX_INLINE_RESULT: usize = 64 * 1024;
/// The artifact holding a result over [`MAX_INLINE_RESULT`].
pub const RESULT_ARTIFACT: &str = "result.json";

/// What a job's `result` keeps of a result of `bytes` bytes stored as [`RESULT_ARTIFACT`]:
/// its top-level scalar fields, `result_artifact` and `result_bytes`.
pub fn spilled_result(value: &Value, bytes: usize) -> Value {
    let mut summary = serde_json::Map::new();
    if let Value::Object(fields) = value {
        for (k, v) in fields {
            if !v.is_array() && !v.is_object() {
                summary.insert(k.clone(), v.clone());
            }
        }
    }
    summary.insert("result_artifact".into(), Value::from(RESULT_ARTIFACT));
    summary.insert("result_bytes".into(), Value::from(bytes));
    Value::Object(summary)
}

/// A job as stored: its submission plus its current, denormalised state.
///
/// `J` is how the payload and the result are held: a [`Value`] where code looks inside them
/// (validation, kernels, completions), [`RawJson`] on the read paths that only pass them on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job<J = Value> {
    /// The job's id (UUIDv7).
    pub id: JobId,
    /// The user who submitted it; owner-scoped reads hide it from everyone else.
    pub owner: UserId,
    /// Type (its snake_case name in JSON and in the database).
    pub job_type: JobType,
    /// The queue it waits in (`default` unless the submission named one); a worker may cap
    /// how many jobs of one queue it runs at once.
    pub queue: QueueName,
    /// Free-text name for filtering (at most [`MAX_NAME_LEN`] bytes); not unique.
    pub name: Option<String>,
    /// Current state; `finished_at` is set exactly when it is terminal, `node` and
    /// `lease_expires_at` only while it is `running`.
    pub state: JobState,
    /// -100..=100; higher is claimed first.
    pub priority: i16,
    /// The payload as submitted.
    pub payload: J,
    /// Result once succeeded (or as reported for external jobs).
    pub result: Option<J>,
    /// The last attempt's failure.
    pub error: Option<Failure>,
    /// Attempts started so far; the current attempt's fencing token.
    pub attempts: u32,
    /// Attempts allowed before a retryable failure makes the job `dead`; a manual retry sets
    /// it to `attempts` plus the type's budget.
    pub max_attempts: u32,
    /// 0.0–1.0, reported by the running attempt.
    pub progress: f32,
    /// A cancel was requested while running (cleared by the next claim or a manual retry).
    pub cancel_requested: bool,
    /// Submission time.
    pub created_at: Timestamp,
    /// When it may (next) run.
    pub run_at: Timestamp,
    /// Start of the latest attempt.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// The last change of state, progress or cancel request.
    pub updated_at: Timestamp,
    /// Node holding the lease while running.
    pub node: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<Timestamp>,
    /// The W3C trace id of the request that submitted it, if that request had one: the
    /// attempts' log lines carry it.
    pub trace_id: Option<String>,
    /// The span within `trace_id` that the attempts' spans are children of.
    pub parent_span_id: Option<String>,
}

impl<J> Job<J> {
    /// The same job with its payload and result converted by `f`.
    pub fn map_json<K>(self, mut f: impl FnMut(J) -> K) -> Job<K> {
        Job {
            id: self.id,
            owner: self.owner,
            job_type: self.job_type,
            queue: self.queue,
            name: self.name,
            state: self.state,
            priority: self.priority,
            payload: f(self.payload),
            result: self.result.map(&mut f),
            error: self.error,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            progress: self.progress,
            cancel_requested: self.cancel_requested,
            created_at: self.created_at,
            run_at: self.run_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
            node: self.node,
            lease_expires_at: self.lease_expires_at,
            trace_id: self.trace_id,
            parent_span_id: self.parent_span_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::clock::from_millis;

    fn submit(job_type: &str, payload: Value) -> Submission {
        Submission {
            job_type: job_type.to_owned(),
            payload,
            ..Submission::default()
        }
    }

    fn parse(sub: Submission) -> Result<NewJob, Invalid> {
        NewJob::parse(
            sub,
            UserId(1),
            Role::Client,
            &Catalogue::default(),
            from_millis(1_000_000),
        )
    }

    #[test]
    fn a_plain_submission_is_queued_now_with_defaults() {
        let job = parse(submit("echo", json!({"a": 1}))).unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.queue.as_str(), "default");
        assert_eq!(job.priority.get(), 0);
        assert_eq!(job.run_at, from_millis(1_000_000));
    }

    #[test]
    fn delay_schedules_the_job() {
        let mut sub = submit("echo", json!(null));
        sub.delay_ms = Some(5_000);
        let job = parse(sub).unwrap();
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.run_at, from_millis(1_005_000));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut sub = submit("echo", json!(null));
        sub.priority = Some(101);
        assert_eq!(parse(sub).unwrap_err().field, "priority");
        let mut sub = submit("echo", json!(null));
        sub.queue = Some("Bad Queue".into());
        assert_eq!(parse(sub).unwrap_err().field, "queue");
        let mut sub = submit("echo", json!(null));
        sub.run_at = Some(from_millis(0));
        sub.delay_ms = Some(1);
        assert_eq!(parse(sub).unwrap_err().field, "run_at");
        assert_eq!(
            parse(submit("nope", json!(null))).unwrap_err().field,
            "type"
        );
        assert_eq!(
            parse(submit("sleep", json!({"ms": -1}))).unwrap_err().field,
            "payload.ms"
        );
    }

    #[test]
    fn huge_delays_do_not_overflow() {
        let mut sub = submit("echo", json!(null));
        sub.delay_ms = Some(u64::MAX);
        assert_eq!(parse(sub).unwrap_err().field, "run_at");
    }
}
