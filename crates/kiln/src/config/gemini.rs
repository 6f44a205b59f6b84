//! The settings of `pdf_analyze`'s model calls (Gemini): off until an API key is given.

use std::time::Duration;

use clap::Args;

use super::Secret;

/// `KILN_GEMINI_*`: the model `pdf_analyze` asks, and the limits around it.
#[derive(Debug, Clone, Args)]
pub struct GeminiArgs {
    /// The Gemini API key. Without it `pdf_analyze` jobs return the local extraction only.
    #[arg(
        long = "gemini-api-key",
        env = "KILN_GEMINI_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,
    /// The model asked.
    #[arg(long = "gemini-model", env = "KILN_GEMINI_MODEL", default_value = kiln_kernels::pdf::gemini::GeminiConfig::DEFAULT_MODEL)]
    pub model: String,
    /// The API's base URL (a proxy, a regional endpoint, or a local fake in tests).
    #[arg(long = "gemini-base-url", env = "KILN_GEMINI_BASE_URL", default_value = kiln_kernels::pdf::gemini::GeminiConfig::DEFAULT_BASE_URL)]
    pub base_url: String,
    /// The longest one call may take.
    #[arg(long = "gemini-timeout", env = "KILN_GEMINI_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Requests per minute, shared by every slot of the node (and by every node on
    /// PostgreSQL).
    #[arg(long = "gemini-rpm", env = "KILN_GEMINI_RPM", default_value_t = 100)]
    pub requests_per_minute: u32,
    /// Tokens per minute (estimated before each call: 258 a page plus the prompt and the
    /// answer), shared like the requests.
    #[arg(
        long = "gemini-tpm",
        env = "KILN_GEMINI_TPM",
        default_value_t = 1_000_000
    )]
    pub tokens_per_minute: u64,
    /// The longest a job waits in its slot for the rate limiter before it is deferred.
    #[arg(long = "gemini-max-wait", env = "KILN_GEMINI_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// PDFs larger than this are sent through the File API instead of inline.
    #[arg(long = "gemini-inline-limit", env = "KILN_GEMINI_INLINE_LIMIT", default_value = "14MiB", value_parser = super::parse_size)]
    pub inline_limit: u64,
    /// Consecutive failed calls that open the model's circuit breaker.
    #[arg(
        long = "gemini-breaker-failures",
        env = "KILN_GEMINI_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub breaker_failures: u32,
    /// The share of failed calls over the last minute (of at least 10) that opens it.
    #[arg(
        long = "gemini-breaker-rate",
        env = "KILN_GEMINI_BREAKER_RATE",
        default_value_t = 0.5
    )]
    pub breaker_rate: f64,
    /// How long an open circuit refuses calls before one probe goes through.
    #[arg(long = "gemini-breaker-cool-down", env = "KILN_GEMINI_BREAKER_COOL_DOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_cool_down: Duration,
}

impl GeminiArgs {
    /// Every problem with the settings.
    pub fn check(&self, problems: &mut Vec<String>) {
        if self.api_key.as_ref().is_some_and(|k| k.0.trim().is_empty()) {
            problems.push("KILN_GEMINI_API_KEY is empty".to_owned());
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            problems.push(format!(
                "KILN_GEMINI_BASE_URL `{}` must start with http:// or https://",
                self.base_url
            ));
        }
        if self.model.is_empty()
            || !self
                .model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            problems.push(format!(
                "KILN_GEMINI_MODEL `{}` is not a model name",
                self.model
            ));
        }
        if self.requests_per_minute == 0 || self.tokens_per_minute == 0 {
            problems.push("KILN_GEMINI_RPM and KILN_GEMINI_TPM must be at least 1".to_owned());
        }
        if self.breaker_failures == 0 || !(self.breaker_rate > 0.0 && self.breaker_rate <= 1.0) {
            problems.push(
                "KILN_GEMINI_BREAKER_FAILURES must be at least 1 and KILN_GEMINI_BREAKER_RATE above 0 and at most 1"
                    .to_owned(),
            );
        }
        let day = Duration::from_secs(86_400);
        for (name, value) in [
            ("KILN_GEMINI_TIMEOUT", self.timeout),
            ("KILN_GEMINI_BREAKER_COOL_DOWN", self.breaker_cool_down),
        ] {
            if value.is_zero() || value > day {
                problems.push(format!("{name} must be above 0 and at most a day"));
            }
        }
        if self.max_wait > day {
            problems.push("KILN_GEMINI_MAX_WAIT must be at most a day".to_owned());
        }
    }
}
