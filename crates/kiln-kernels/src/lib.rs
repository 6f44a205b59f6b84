//! Kiln's kernels: the code that executes one attempt of a job, behind the [`Kernel`] trait.
//!
//! # Layout
//! - this file: [`Kernel`], [`JobContext`] (cancel token, progress and log sinks),
//!   [`KernelError`] and the [`Registry`] that maps each executed [`JobType`] to its kernel.
//! - [`echo`], [`sleep`], [`primes`], [`matrix`], [`csv_aggregate`], [`pdf`]: the built-in
//!   kernels (`pdf_analyze` without a model; the node registers it with one when configured).
//! - [`command`]: real Linux processes from an allow-list (not in [`Registry::default`]; the
//!   node registers it always, and with an empty allow-list it refuses every job).
//! - [`cpu`]: the CPU pool compute kernels run on, and their cancel/progress [`cpu::Check`].
//! - [`input`]: [`Inputs`], the uploaded files of the job's owner.
//!
//! A kernel knows nothing of leases, retries or storage: it gets a validated payload and
//! returns a result or a classified error. The worker adds timeouts, fencing and retries.
#![warn(missing_docs)]

pub mod command;
pub mod cpu;
pub mod csv_aggregate;
pub mod echo;
pub mod input;
pub mod matrix;
pub mod npy;
pub mod pdf;
pub mod primes;
pub mod sleep;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use kiln_domain::{Failure, JobId, JobType};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use input::Inputs;

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an attempt did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Another attempt may succeed (transient I/O, upstream 429/5xx).
    #[error("{code}: {source}")]
    Retryable {
        /// Stable snake_case code.
        code: &'static str,
        /// The cause.
        source: BoxError,
    },
    /// No retry can succeed (invalid input found at run time, upstream 4xx).
    #[error("{code}: {source}")]
    Permanent {
        /// Stable snake_case code.
        code: &'static str,
        /// The cause.
        source: BoxError,
    },
    /// Another attempt may succeed, but not before `after` (an upstream's `Retry-After`):
    /// the retry waits the longer of this and the type's backoff.
    #[error("{code}: {source}")]
    RetryAfter {
        /// Stable snake_case code.
        code: &'static str,
        /// The cause.
        source: BoxError,
        /// The least delay before the next attempt.
        after: std::time::Duration,
    },
    /// Not the job's failure: something outside it stops the work for now (an upstream's
    /// circuit breaker is open). The job is scheduled again `after` from now and the
    /// attempt is not counted.
    #[error("{code}: {source}")]
    Deferred {
        /// Stable snake_case code.
        code: &'static str,
        /// The cause.
        source: BoxError,
        /// When to run the job again, from now.
        after: std::time::Duration,
    },
    /// The cancel token fired and the kernel stopped.
    #[error("cancelled")]
    Cancelled,
}

impl KernelError {
    /// The failure users see. `Cancelled` has none (the job becomes `cancelled`).
    pub fn to_failure(&self) -> Option<Failure> {
        match self {
            KernelError::Retryable { code, source }
            | KernelError::RetryAfter { code, source, .. }
            | KernelError::Deferred { code, source, .. } => {
                Some(Failure::retryable(*code, source.to_string()))
            }
            KernelError::Permanent { code, source } => {
                Some(Failure::permanent(*code, source.to_string()))
            }
            KernelError::Cancelled => None,
        }
    }
}

/// Tags a foreign error as retryable or permanent at the call site, keeping it as source.
pub trait Classify<T> {
    /// Another attempt may succeed.
    fn retryable(self, code: &'static str) -> Result<T, KernelError>;
    /// No retry can succeed.
    fn permanent(self, code: &'static str) -> Result<T, KernelError>;
}

impl<T, E: Into<BoxError>> Classify<T> for Result<T, E> {
    fn retryable(self, code: &'static str) -> Result<T, KernelError> {
        self.map_err(|e| KernelError::Retryable {
            code,
            source: e.into(),
        })
    }

    fn permanent(self, code: &'static str) -> Result<T, KernelError> {
        self.map_err(|e| KernelError::Permanent {
            code,
            source: e.into(),
        })
    }
}

/// Progress of the running attempt, 0.0–1.0, shared with the worker (which throttles the
/// writes to the store: a kernel may call [`Progress::set`] as often as it likes).
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU32>);

impl Progress {
    /// Records progress, clamped to 0.0–1.0.
    pub fn set(&self, fraction: f32) {
        let clamped = kiln_domain::change::clamp_progress(fraction);
        self.0.store(clamped.to_bits(), Ordering::Relaxed);
    }

    /// Records progress unless a larger value is already recorded: for kernels whose
    /// threads finish pieces of work in any order.
    pub fn raise(&self, fraction: f32) {
        // Non-negative floats order like their bit patterns.
        let clamped = kiln_domain::change::clamp_progress(fraction).max(0.0);
        self.0.fetch_max(clamped.to_bits(), Ordering::Relaxed);
    }

    /// The last value set.
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Where a kernel writes its log lines; the worker appends them to the job's log.
#[derive(Debug, Clone)]
pub struct LogSink(mpsc::UnboundedSender<String>);

impl LogSink {
    /// A sink and the receiver the worker drains.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Appends one line (a newline is added). Lost silently if the attempt is over.
    pub fn line(&self, line: impl Into<String>) {
        let mut line = line.into();
        line.push('\n');
        let _ = self.0.send(line);
    }
}

/// Everything one attempt gets.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job this attempt runs.
    pub job_id: JobId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The payload, already validated against the type's schema.
    pub payload: Value,
    /// Fires on cancel, timeout or shutdown; check it at least every ~10 ms of work.
    pub cancel: CancellationToken,
    /// Progress sink.
    pub progress: Progress,
    /// Log sink.
    pub log: LogSink,
    /// The scratch directory the attempt writes its artifacts to.
    pub artifacts: Artifacts,
    /// The owner's uploaded files; `None` when the node has no object storage.
    pub inputs: Option<Inputs>,
}

/// The local scratch directory an attempt writes its artifacts to (`<root>/<job id>.<attempt>/`
/// for the worker, `<root>/<job id>/` from [`Artifacts::new`]), created on first use. Kernels stream large files here and may read them back; once the
/// attempt has succeeded the worker moves every file into the object store (ADR 0008) and
/// removes the directory. A new attempt starts from an empty directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: std::path::PathBuf,
    /// Whether [`Artifacts::create`] was called, so an attempt that wrote nothing (most
    /// jobs) costs the worker no file-system call afterwards.
    written: Arc<AtomicBool>,
}

impl Artifacts {
    /// The artifacts of `job_id` under `root`.
    pub fn new(root: &std::path::Path, job_id: JobId) -> Self {
        Self {
            dir: root.join(job_id.0.simple().to_string()),
            written: Arc::default(),
        }
    }

    /// The artifacts of attempt `attempt` of `job_id` under `root`: a directory of its own
    /// per attempt, so a stale attempt still running on this node never writes into the
    /// directory of the attempt that replaced it.
    pub fn for_attempt(root: &std::path::Path, job_id: JobId, attempt: u32) -> Self {
        Self {
            dir: root.join(format!("{}.{attempt}", job_id.0.simple())),
            written: Arc::default(),
        }
    }

    /// The job's directory (it may not exist yet).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether any artifact was created through this value or a clone of it.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::Relaxed)
    }

    /// Empties the directory before an attempt writes to it.
    pub fn reset(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates (or truncates) the artifact `name` and returns its path and file.
    pub fn create(&self, name: &str) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
        self.written.store(true, Ordering::Relaxed);
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(name);
        let file = std::fs::File::create(&path)?;
        Ok((path, file))
    }
}

/// Executes one attempt of one job type.
#[async_trait]
pub trait Kernel: Send + Sync + 'static {
    /// The type this kernel runs.
    fn job_type(&self) -> JobType;
    /// Runs the attempt to a result, an error, or `Cancelled` when `ctx.cancel` fires.
    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError>;
    /// How long the kernel may take to wind down once `ctx.cancel` fires, beyond the
    /// worker's own allowance, before its task is aborted: a process's SIGTERM grace.
    fn stop_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The kernels a node can run, by type.
#[derive(Clone)]
pub struct Registry {
    kernels: HashMap<JobType, Arc<dyn Kernel>>,
}

impl Default for Registry {
    /// Every built-in kernel.
    fn default() -> Self {
        let mut registry = Self::empty();
        registry.register(Arc::new(echo::Echo));
        registry.register(Arc::new(sleep::Sleep));
        registry.register(Arc::new(primes::Primes));
        registry.register(Arc::new(matrix::MatrixMultiply));
        registry.register(Arc::new(csv_aggregate::CsvAggregate));
        registry.register(Arc::new(pdf::PdfAnalyze::default()));
        registry
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kernels.keys()).finish()
    }
}

impl Registry {
    /// No kernels.
    pub fn empty() -> Self {
        Self {
            kernels: HashMap::new(),
        }
    }

    /// Adds or replaces the kernel of its type.
    pub fn register(&mut self, kernel: Arc<dyn Kernel>) {
        self.kernels.insert(kernel.job_type(), kernel);
    }

    /// The kernel of `job_type`.
    pub fn get(&self, job_type: JobType) -> Option<Arc<dyn Kernel>> {
        self.kernels.get(&job_type).cloned()
    }

    /// The kernel registered under a type name.
    pub fn get_by_name(&self, name: &str) -> Option<Arc<dyn Kernel>> {
        self.kernels
            .iter()
            .find(|(t, _)| t.as_str() == name)
            .map(|(_, k)| Arc::clone(k))
    }

    /// Names of the types this registry runs (what a node claims).
    pub fn type_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.kernels.keys().map(|t| t.as_str().to_owned()).collect();
        names.sort();
        names
    }
}

/// A context for tests: a fresh job id, attempt 1, artifacts under the system temp dir
/// (removed by [`Artifacts::reset`]), no uploaded files, and the log receiver. Only in the
/// crate's own tests and with the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub fn test_context(payload: Value) -> (JobContext, mpsc::UnboundedReceiver<String>) {
    let (log, rx) = LogSink::channel();
    let job_id = JobId::new();
    let ctx = JobContext {
        artifacts: Artifacts::new(&std::env::temp_dir().join("kiln-test-artifacts"), job_id),
        job_id,
        attempt: 1,
        payload,
        cancel: CancellationToken::new(),
        progress: Progress::default(),
        log,
        inputs: None,
    };
    (ctx, rx)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::Progress;

    /// Waits until a running kernel has reported some progress (at most 30 s).
    pub(crate) async fn wait_for_progress(progress: &Progress) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.get() == 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
