//! The catalogue of predefined job types: names, payload schemas, limits and policies.
//!
//! Users cannot add types. The API validates a payload here before a job is stored; the
//! worker executes it through the kernel registered under the same [`JobType`]. The JSON
//! Schema served at `GET /api/v1/job-types` is written next to the typed payload that
//! enforces it, and a test checks the two agree on their bounds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Backoff, Invalid, Role};

pub mod command;
mod payload;

pub use command::CommandPayload;
use payload::parse_payload;
pub use payload::*;

/// A predefined job type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// Returns its payload.
    Echo,
    /// Sleeps `{ms}` milliseconds (at most an hour), then returns `"ok"`.
    Sleep,
    /// Tracks work done outside Kiln; its owner reports its state.
    External,
    /// The first `n` primes (at most 50,000,000), by a segmented sieve.
    Primes,
    /// The product of two seeded random `n`×`n` matrices (n at most 4096).
    MatrixMultiply,
    /// Generates a seeded CSV data set and aggregates it (sum, mean or per group).
    CsvAggregate,
    /// Runs an allowed Linux program in a process group of its own (operators only).
    Command,
    /// Extracts an uploaded PDF's text and, when configured, has a Gemini model analyse it.
    PdfAnalyze,
}

impl JobType {
    /// Every type, in catalogue order.
    pub const ALL: [JobType; 8] = [
        JobType::Echo,
        JobType::Sleep,
        JobType::External,
        JobType::Primes,
        JobType::MatrixMultiply,
        JobType::CsvAggregate,
        JobType::Command,
        JobType::PdfAnalyze,
    ];

    /// The snake_case name, as in a submission's `type`, in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Echo => "echo",
            JobType::Sleep => "sleep",
            JobType::External => "external",
            JobType::Primes => "primes",
            JobType::MatrixMultiply => "matrix_multiply",
            JobType::CsvAggregate => "csv_aggregate",
            JobType::Command => "command",
            JobType::PdfAnalyze => "pdf_analyze",
        }
    }

    /// Whether Kiln's workers execute it (`external` jobs are driven by their owner).
    pub fn is_executed(self) -> bool {
        !matches!(self, JobType::External)
    }

    /// Checks a payload against the type's schema; the error names the offending field.
    pub fn validate(self, payload: &Value) -> Result<(), Invalid> {
        match self {
            JobType::Echo => Ok(()),
            JobType::Sleep => parse_payload::<SleepPayload>(payload).map(drop),
            JobType::External => parse_payload::<ExternalPayload>(payload).map(drop),
            JobType::Primes => parse_payload::<PrimesPayload>(payload).map(drop),
            JobType::MatrixMultiply => parse_payload::<MatrixPayload>(payload).map(drop),
            JobType::CsvAggregate => CsvPayload::parse(payload).map(drop),
            JobType::Command => CommandPayload::parse(payload).map(drop),
            JobType::PdfAnalyze => PdfPayload::parse(payload).map(drop),
        }
    }

    fn describe(self) -> (&'static str, Value) {
        match self {
            JobType::Echo => ("Returns its payload unchanged.", json!({})),
            JobType::Sleep => (
                "Sleeps for `ms` milliseconds (at most one hour), then returns \"ok\".",
                json!({
                    "type": "object",
                    "required": ["ms"],
                    "additionalProperties": false,
                    "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": SleepPayload::MAX_MS}},
                }),
            ),
            JobType::External => (
                "Tracks work done outside Kiln; its owner reports state changes with PATCH.",
                json!({
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": false,
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}},
                }),
            ),
            JobType::Primes => (
                "The first `n` primes: their count, the n-th prime, their sum, the first and last ten.",
                json!({
                    "type": "object",
                    "required": ["n"],
                    "additionalProperties": false,
                    "properties": {"n": {"type": "integer", "minimum": 1, "maximum": PrimesPayload::MAX_N}},
                }),
            ),
            JobType::MatrixMultiply => (
                "Multiplies two seeded random n×n f64 matrices: GFLOP/s, checksum, trace and Frobenius norm of the product.",
                json!({
                    "type": "object",
                    "required": ["n"],
                    "additionalProperties": false,
                    "properties": {
                        "n": {"type": "integer", "minimum": 1, "maximum": MatrixPayload::MAX_N},
                        "seed": {"type": "integer", "minimum": 0, "description": "same seed, same matrices (default 0)"},
                    },
                }),
            ),
            JobType::CsvAggregate => (
                "Aggregates a CSV: either a seeded generated one (id, group, value, timestamp), kept as the artifact `data.csv`, or a file uploaded with POST /api/v1/files (`file_id`).",
                json!({
                    "oneOf": [
                        {
                            "title": "generated",
                            "type": "object",
                            "required": ["rows", "groups", "operation"],
                            "additionalProperties": false,
                            "properties": {
                                "rows": {"type": "integer", "minimum": 1, "maximum": CsvPayload::MAX_ROWS},
                                "groups": {"type": "integer", "minimum": 1, "maximum": CsvPayload::MAX_GROUPS},
                                "operation": {"type": "string", "enum": ["mean", "sum", "group_by"]},
                                "column": {"type": "string", "enum": ["value", "id", "timestamp"], "description": "the column aggregated (default value)"},
                                "seed": {"type": "integer", "minimum": 0, "description": "same seed, same data (default 0)"},
                            },
                        },
                        {
                            "title": "uploaded file",
                            "type": "object",
                            "required": ["file_id", "operation", "column"],
                            "additionalProperties": false,
                            "properties": {
                                "file_id": {"type": "string", "format": "uuid", "description": "a file of the submitter, from POST /api/v1/files"},
                                "operation": {"type": "string", "enum": ["mean", "sum", "group_by"]},
                                "column": {"type": "string", "minLength": 1, "maxLength": CsvFilePayload::MAX_NAME, "description": "the header name of the numeric column"},
                                "group_by": {"type": "string", "minLength": 1, "maxLength": CsvFilePayload::MAX_NAME, "description": "the header name of the grouping column; required with operation group_by, only allowed with it"},
                            },
                        },
                    ],
                }),
            ),
            JobType::Command => (
                "Runs a program from the server's allow-list in a process group of its own, with resource limits and a clean environment; stdout and stderr are the job's log (operators only).",
                CommandPayload::schema(),
            ),
            JobType::PdfAnalyze => (
                "Extracts an uploaded PDF's text locally (pages, characters, words, frequent terms, language; the text per page as the artifact `text.json`) and, when the server has a Gemini API key, asks the model to analyse it.",
                json!({
                    "type": "object",
                    "required": ["file_id"],
                    "additionalProperties": false,
                    "properties": {
                        "file_id": {"type": "string", "format": "uuid", "description": "a PDF of the submitter, from POST /api/v1/files or /api/v1/pdf-processing"},
                        "prompt": {"type": "string", "minLength": 1, "maxLength": PdfPayload::MAX_PROMPT, "description": "what to ask the model about the document (default: a summary, its topics and language)"},
                    },
                }),
            ),
        }
    }

    /// The uploaded files a payload of this type reads (their ids, as the payload names
    /// them), so the API can check they exist and are the submitter's before the job is
    /// stored. The field they come from is `payload.file_id` for every type that has one.
    pub fn input_files(self, payload: &Value) -> Result<Vec<String>, Invalid> {
        match self {
            JobType::CsvAggregate => Ok(CsvPayload::parse(payload)?
                .file_id()
                .map(str::to_owned)
                .into_iter()
                .collect()),
            JobType::PdfAnalyze => Ok(vec![PdfPayload::parse(payload)?.file_id]),
            _ => Ok(Vec::new()),
        }
    }

    /// The least role that may submit it: `command` runs programs on the server's host.
    pub fn min_role(self) -> Role {
        match self {
            JobType::Command => Role::Operator,
            _ => Role::Client,
        }
    }

    fn default_policy(self) -> Policy {
        let backoff = Backoff {
            base_ms: 1_000,
            cap_ms: 300_000,
        };
        match self {
            JobType::Echo => Policy {
                max_attempts: 3,
                timeout_ms: 30_000,
                backoff,
            },
            JobType::Sleep => Policy {
                max_attempts: 3,
                // The longest sleep plus a minute of slack.
                timeout_ms: SleepPayload::MAX_MS + 60_000,
                backoff,
            },
            JobType::External => Policy {
                max_attempts: 1,
                timeout_ms: 0,
                backoff,
            },
            JobType::Primes | JobType::MatrixMultiply | JobType::CsvAggregate => Policy {
                max_attempts: 2,
                timeout_ms: 300_000,
                backoff,
            },
            // The model's API answers 429 and 5xx at busy times: more attempts, a longer
            // first backoff; the extraction itself is bounded well inside the timeout.
            JobType::PdfAnalyze => Policy {
                max_attempts: 5,
                timeout_ms: 600_000,
                backoff: Backoff {
                    base_ms: 5_000,
                    cap_ms: 300_000,
                },
            },
            // A program's side effects are its own: no retry unless an operator turns it
            // on per program. A payload's `timeout_ms` may shorten the day-long limit.
            JobType::Command => Policy {
                max_attempts: 1,
                timeout_ms: CommandPayload::MAX_TIMEOUT_MS,
                backoff,
            },
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type by its snake_case name; an unknown name is an error naming the field `type`.
impl FromStr for JobType {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Invalid::new("type", format!("unknown job type `{s}`")))
    }
}

/// Server-side execution policy of a type. Clients cannot change it; operators can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Attempts before a retryable failure becomes `dead`.
    pub max_attempts: u32,
    /// Per-attempt timeout; 0 means none.
    pub timeout_ms: u64,
    /// Bounds of the random delay before each retry.
    pub backoff: Backoff,
}

impl Policy {
    /// The timeout as a duration, if any.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }
}

/// A type's full description, as `GET /api/v1/job-types` serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobTypeSpec {
    /// The type (not serialised: `name` carries it).
    #[serde(skip)]
    pub job_type: JobType,
    /// Its snake_case name, as submissions give it in `type`.
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// JSON Schema of the payload.
    pub schema: Value,
    /// Retry and timeout policy.
    pub policy: Policy,
    /// The least role that may submit it.
    pub min_role: Role,
}

/// Every job type with its policy; operators may override policies at start-up.
#[derive(Debug, Clone)]
pub struct Catalogue {
    specs: Vec<JobTypeSpec>,
}

impl Default for Catalogue {
    fn default() -> Self {
        let specs = JobType::ALL
            .into_iter()
            .map(|job_type| {
                let (description, schema) = job_type.describe();
                JobTypeSpec {
                    job_type,
                    name: job_type.as_str(),
                    description,
                    schema,
                    policy: job_type.default_policy(),
                    min_role: job_type.min_role(),
                }
            })
            .collect();
        Self { specs }
    }
}

impl Catalogue {
    /// All specs in catalogue order.
    pub fn iter(&self) -> impl Iterator<Item = &JobTypeSpec> {
        self.specs.iter()
    }

    /// The spec of `job_type`.
    pub fn get(&self, job_type: JobType) -> &JobTypeSpec {
        // Every variant is in `specs` by construction (see `Default`).
        self.specs
            .iter()
            .find(|s| s.job_type == job_type)
            .unwrap_or(&self.specs[0])
    }

    /// The spec named `name`, or an error naming the field `type`.
    pub fn get_by_name(&self, name: &str) -> Result<&JobTypeSpec, Invalid> {
        self.specs.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
            Invalid::new(
                "type",
                format!("unknown job type `{name}` (known: {})", known.join(", ")),
            )
        })
    }

    /// Replaces the policy of `job_type`.
    pub fn set_policy(&mut self, job_type: JobType, policy: Policy) {
        if let Some(spec) = self.specs.iter_mut().find(|s| s.job_type == job_type) {
            spec.policy = policy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_in_the_catalogue_under_its_name() {
        let catalogue = Catalogue::default();
        for job_type in JobType::ALL {
            assert_eq!(catalogue.get(job_type).job_type, job_type);
            assert_eq!(
                catalogue.get_by_name(job_type.as_str()).unwrap().job_type,
                job_type
            );
        }
        assert!(catalogue.get_by_name("fork_bomb").is_err());
        for job_type in JobType::ALL {
            assert_eq!(job_type.as_str().parse::<JobType>(), Ok(job_type));
        }
        assert_eq!("fork_bomb".parse::<JobType>().unwrap_err().field, "type");
    }

    #[test]
    fn only_payloads_naming_an_upload_have_input_files() {
        let file = "0190f5e2-7c4a-7b1e-9f00-1234567890ab";
        let upload = json!({"file_id": file, "operation": "sum", "column": "v"});
        assert_eq!(JobType::CsvAggregate.input_files(&upload).unwrap(), [file]);
        let generated = json!({"rows": 10, "groups": 2, "operation": "sum"});
        assert!(
            JobType::CsvAggregate
                .input_files(&generated)
                .unwrap()
                .is_empty()
        );
        assert!(
            JobType::Sleep
                .input_files(&json!({"ms": 1}))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn sleep_schema_bounds_match_the_validator() {
        let spec = Catalogue::default().get(JobType::Sleep).clone();
        let max = spec.schema["properties"]["ms"]["maximum"].as_u64().unwrap();
        assert!(JobType::Sleep.validate(&json!({"ms": max})).is_ok());
        let err = JobType::Sleep
            .validate(&json!({"ms": max + 1}))
            .unwrap_err();
        assert_eq!(err.field, "payload.ms");
    }

    #[test]
    fn primes_schema_bounds_match_the_validator() {
        let spec = Catalogue::default().get(JobType::Primes).clone();
        let props = &spec.schema["properties"]["n"];
        let (min, max) = (
            props["minimum"].as_u64().unwrap(),
            props["maximum"].as_u64().unwrap(),
        );
        assert!(JobType::Primes.validate(&json!({"n": min})).is_ok());
        assert!(JobType::Primes.validate(&json!({"n": max})).is_ok());
        for bad in [min - 1, max + 1] {
            let err = JobType::Primes.validate(&json!({"n": bad})).unwrap_err();
            assert_eq!(err.field, "payload.n");
        }
    }

    #[test]
    fn payload_errors_name_the_field() {
        let missing = JobType::Sleep.validate(&json!({})).unwrap_err();
        assert_eq!(missing.field, "payload");
        assert!(missing.reason.contains("ms"), "{missing}");
        let wrong = JobType::Sleep.validate(&json!({"ms": "soon"})).unwrap_err();
        assert_eq!(wrong.field, "payload.ms");
        let extra = JobType::Sleep
            .validate(&json!({"ms": 1, "x": 2}))
            .unwrap_err();
        assert!(extra.reason.contains('x'), "{extra}");
        assert!(JobType::External.validate(&json!({"name": ""})).is_err());
    }

    #[test]
    fn csv_payloads_of_both_kinds_validate_and_name_the_offending_field() {
        let file = "0190f5e2-7c4a-7b1e-9f00-1234567890ab";
        let ok = json!({"file_id": file, "operation": "group_by", "column": "v", "group_by": "g"});
        let parsed = CsvPayload::parse(&ok).unwrap();
        assert_eq!(parsed.file_id(), Some(file));
        assert!(
            JobType::CsvAggregate
                .validate(&json!({"file_id": file, "operation": "sum", "column": "v"}))
                .is_ok()
        );
        let generated = json!({"rows": 10, "groups": 2, "operation": "sum"});
        assert_eq!(CsvPayload::parse(&generated).unwrap().file_id(), None);
        let cases = [
            (
                json!({"file_id": file, "operation": "group_by", "column": "v"}),
                "payload.group_by",
            ),
            (
                json!({"file_id": file, "operation": "mean", "column": "v", "group_by": "g"}),
                "payload.group_by",
            ),
            (
                json!({"file_id": "nope", "operation": "sum", "column": "v"}),
                "payload.file_id",
            ),
            (
                json!({"file_id": file, "operation": "sum", "column": ""}),
                "payload.column",
            ),
            (
                json!({"file_id": file, "operation": "median", "column": "v"}),
                "payload.operation",
            ),
            (
                json!({"file_id": file, "operation": "sum", "column": "v", "rows": 3}),
                "payload.rows",
            ),
            (
                json!({"rows": 0, "groups": 2, "operation": "sum"}),
                "payload.rows",
            ),
        ];
        for (payload, field) in cases {
            let err = JobType::CsvAggregate.validate(&payload).unwrap_err();
            assert_eq!(err.field, field, "{payload}: {err}");
        }
    }

    #[test]
    fn csv_schema_has_one_variant_per_kind_with_the_validators_bounds() {
        let spec = Catalogue::default().get(JobType::CsvAggregate).clone();
        let variants = spec.schema["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), 2);
        let max_rows = variants[0]["properties"]["rows"]["maximum"]
            .as_u64()
            .unwrap();
        assert!(
            JobType::CsvAggregate
                .validate(&json!({"rows": max_rows, "groups": 1, "operation": "sum"}))
                .is_ok()
        );
        assert!(
            JobType::CsvAggregate
                .validate(&json!({"rows": max_rows + 1, "groups": 1, "operation": "sum"}))
                .is_err()
        );
        assert!(
            variants[1]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("file_id"))
        );
    }
}
