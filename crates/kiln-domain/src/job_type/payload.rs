//! The typed payload of each job type, with the bounds its JSON Schema states, and the
//! parsing that names the offending field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Invalid;

/// Payload of `sleep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    /// Milliseconds to sleep, 0..=3,600,000.
    pub ms: u64,
}

impl SleepPayload {
    /// The longest sleep, in ms (one hour).
    pub const MAX_MS: u64 = 3_600_000;
}

/// Payload of `external`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalPayload {
    /// What the external work is called.
    pub name: String,
}

/// Payload of `primes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimesPayload {
    /// How many primes, 1..=50,000,000 (the last one is below 2^32).
    pub n: u64,
}

impl PrimesPayload {
    /// The most primes a job may ask for (fifty million).
    pub const MAX_N: u64 = 50_000_000;
}

impl Bounded for PrimesPayload {
    fn check(&self) -> Result<(), Invalid> {
        if self.n == 0 || self.n > Self::MAX_N {
            return Err(Invalid::new("payload.n", "must be 1-50000000"));
        }
        Ok(())
    }
}

/// Payload of `matrix_multiply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixPayload {
    /// Matrix size, 1..=4096.
    pub n: u32,
    /// Seed of the random matrices (default 0).
    #[serde(default)]
    pub seed: u64,
}

impl MatrixPayload {
    /// The largest `n` (one 4096×4096 f64 matrix takes 128 MiB).
    pub const MAX_N: u32 = 4096;
}

impl Bounded for MatrixPayload {
    fn check(&self) -> Result<(), Invalid> {
        if self.n == 0 || self.n > Self::MAX_N {
            return Err(Invalid::new("payload.n", "must be 1-4096"));
        }
        Ok(())
    }
}

/// What `csv_aggregate` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CsvOperation {
    /// The mean of the column.
    Mean,
    /// The sum of the column.
    Sum,
    /// Count, sum, mean, min and max of the column per group.
    GroupBy,
}

/// The numeric columns of the generated data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CsvColumn {
    /// The row number.
    Id,
    /// A value in [0, 1000) with three decimals.
    #[default]
    Value,
    /// Unix seconds.
    Timestamp,
}

impl CsvColumn {
    /// The column's header name.
    pub fn as_str(self) -> &'static str {
        match self {
            CsvColumn::Id => "id",
            CsvColumn::Value => "value",
            CsvColumn::Timestamp => "timestamp",
        }
    }
}

/// Payload of `csv_aggregate`: a generated data set, or a file the submitter uploaded.
/// A payload with a `file_id` is the second kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvPayload {
    /// Generate a seeded data set, then aggregate it.
    Generated(CsvGeneratedPayload),
    /// Aggregate an uploaded CSV file.
    File(CsvFilePayload),
}

impl CsvPayload {
    /// The most rows a generated data set may have (ten million).
    pub const MAX_ROWS: u64 = 10_000_000;
    /// The most groups a generated data set may have (ten thousand).
    pub const MAX_GROUPS: u32 = 10_000;

    /// Parses and checks either kind; the error names the offending field. The kind is
    /// chosen by the presence of `file_id`, so errors speak of the kind meant (an untagged
    /// enum would only say that no variant matched).
    pub fn parse(payload: &Value) -> Result<Self, Invalid> {
        if payload.get("file_id").is_some() {
            parse_payload(payload).map(CsvPayload::File)
        } else {
            parse_payload(payload).map(CsvPayload::Generated)
        }
    }

    /// The uploaded file this payload reads, if any.
    pub fn file_id(&self) -> Option<&str> {
        match self {
            CsvPayload::File(p) => Some(&p.file_id),
            CsvPayload::Generated(_) => None,
        }
    }
}

/// Payload of `csv_aggregate` over a generated data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvGeneratedPayload {
    /// Rows to generate, 1..=10,000,000.
    pub rows: u64,
    /// Distinct groups, 1..=10,000.
    pub groups: u32,
    /// What to compute.
    pub operation: CsvOperation,
    /// The column aggregated (default `value`).
    #[serde(default)]
    pub column: CsvColumn,
    /// Seed of the data (default 0).
    #[serde(default)]
    pub seed: u64,
}

impl Bounded for CsvGeneratedPayload {
    fn check(&self) -> Result<(), Invalid> {
        if self.rows == 0 || self.rows > CsvPayload::MAX_ROWS {
            return Err(Invalid::new("payload.rows", "must be 1-10000000"));
        }
        if self.groups == 0 || self.groups > CsvPayload::MAX_GROUPS {
            return Err(Invalid::new("payload.groups", "must be 1-10000"));
        }
        Ok(())
    }
}

/// Payload of `csv_aggregate` over an uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvFilePayload {
    /// The file's id (a UUID from `POST /api/v1/files`); it must belong to the submitter.
    pub file_id: String,
    /// What to compute.
    pub operation: CsvOperation,
    /// The header name of the numeric column.
    pub column: String,
    /// The header name of the grouping column: required with `group_by`, refused otherwise.
    #[serde(default)]
    pub group_by: Option<String>,
}

impl CsvFilePayload {
    /// The longest column name accepted.
    pub const MAX_NAME: usize = 200;
}

impl Bounded for CsvFilePayload {
    fn check(&self) -> Result<(), Invalid> {
        if uuid::Uuid::parse_str(&self.file_id).is_err() {
            return Err(Invalid::new(
                "payload.file_id",
                "must be a file id (a UUID) from POST /api/v1/files",
            ));
        }
        let name_ok = |n: &str| !n.is_empty() && n.len() <= Self::MAX_NAME;
        if !name_ok(&self.column) {
            return Err(Invalid::new("payload.column", "must be 1-200 bytes"));
        }
        match (&self.group_by, self.operation) {
            (None, CsvOperation::GroupBy) => Err(Invalid::new(
                "payload.group_by",
                "is required when operation is group_by",
            )),
            (Some(_), CsvOperation::Mean | CsvOperation::Sum) => Err(Invalid::new(
                "payload.group_by",
                "is only allowed when operation is group_by",
            )),
            (Some(g), _) if !name_ok(g) => {
                Err(Invalid::new("payload.group_by", "must be 1-200 bytes"))
            }
            _ => Ok(()),
        }
    }
}

/// Payload of `pdf_analyze`: an uploaded PDF of the submitter's and an optional question for
/// the model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdfPayload {
    /// The file's id (a UUID from `POST /api/v1/files` or `/api/v1/pdf-processing`); it must
    /// belong to the submitter and be a PDF.
    pub file_id: String,
    /// What to ask the model about the document (a default analysis when absent).
    #[serde(default)]
    pub prompt: Option<String>,
}

impl PdfPayload {
    /// The longest prompt accepted, in bytes.
    pub const MAX_PROMPT: usize = 8 * 1024;
    /// How far into a file its `%PDF-` header may start (readers accept leading junk).
    pub const HEADER_WITHIN: usize = 1024;

    /// Parses and checks a payload; the error names the offending field.
    pub fn parse(payload: &Value) -> Result<Self, Invalid> {
        parse_payload(payload)
    }

    /// Whether `head`, the first bytes of a file, is a PDF: `%PDF-` within the first
    /// [`Self::HEADER_WITHIN`] bytes, judged by content, never by name or declared type.
    pub fn is_pdf(head: &[u8]) -> bool {
        let head = &head[..head.len().min(Self::HEADER_WITHIN)];
        head.windows(5).any(|w| w == b"%PDF-")
    }
}

impl Bounded for PdfPayload {
    fn check(&self) -> Result<(), Invalid> {
        if uuid::Uuid::parse_str(&self.file_id).is_err() {
            return Err(Invalid::new(
                "payload.file_id",
                "must be a file id (a UUID) from POST /api/v1/files",
            ));
        }
        match &self.prompt {
            Some(p) if p.trim().is_empty() || p.len() > Self::MAX_PROMPT => Err(Invalid::new(
                "payload.prompt",
                "must be 1-8192 bytes and not only white space",
            )),
            _ => Ok(()),
        }
    }
}

pub(super) trait Bounded {
    fn check(&self) -> Result<(), Invalid>;
}

impl Bounded for SleepPayload {
    fn check(&self) -> Result<(), Invalid> {
        if self.ms > Self::MAX_MS {
            return Err(Invalid::new(
                "payload.ms",
                "must be at most 3600000 (one hour)",
            ));
        }
        Ok(())
    }
}

impl Bounded for ExternalPayload {
    fn check(&self) -> Result<(), Invalid> {
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(Invalid::new("payload.name", "must be 1-200 bytes"));
        }
        Ok(())
    }
}

/// Deserialises a typed payload, naming the offending field on error, then checks bounds.
pub(super) fn parse_payload<T: DeserializeOwned + Bounded>(payload: &Value) -> Result<T, Invalid> {
    let parsed: T = serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "payload".to_owned()
        } else {
            format!("payload.{path}")
        };
        Invalid::new(field, e.into_inner().to_string())
    })?;
    parsed.check()?;
    Ok(parsed)
}

/// Parses a payload the API already validated, for the kernel that runs it.
pub fn payload<T: DeserializeOwned>(payload: &Value) -> Result<T, Invalid> {
    T::deserialize(payload).map_err(|e| Invalid::new("payload", e.to_string()))
}
