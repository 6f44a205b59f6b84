//! The CPU pool: compute kernels run here, off the async runtime, so the HTTP API and the
//! dispatcher stay responsive while every core computes.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::{JobContext, KernelError, Progress};

/// One thread per core, created on first use.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("kiln-cpu-{i}"))
            .build()
            .unwrap_or_else(|e| panic!("cannot start the CPU pool: {e}"))
    })
}

/// Runs `work` on the CPU pool and waits for it without blocking the runtime. A panic in
/// `work` becomes a permanent `kernel_panic` error instead of taking the node down.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, KernelError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool().spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    });
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_panic)) => Err(KernelError::Permanent {
            code: "kernel_panic",
            source: "the kernel panicked; this is a bug in Kiln".into(),
        }),
        Err(_dropped) => Err(KernelError::Cancelled),
    }
}

/// What a compute kernel consults between units of work: its cancel token and progress.
#[derive(Debug, Clone, Default)]
pub struct Check {
    cancel: CancellationToken,
    progress: Progress,
}

impl Check {
    /// The attempt's cancel token and progress sink.
    pub fn new(ctx: &JobContext) -> Self {
        Self {
            cancel: ctx.cancel.clone(),
            progress: ctx.progress.clone(),
        }
    }

    /// A check attached to nothing (tests, benchmarks).
    pub fn detached() -> Self {
        Self::default()
    }

    /// The cancel token (to fire it in tests).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// `Err(Cancelled)` once the attempt should stop.
    pub fn stopped(&self) -> Result<(), KernelError> {
        if self.cancel.is_cancelled() {
            Err(KernelError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Records progress (cheap: an atomic store; the worker throttles the writes).
    pub fn progress(&self, fraction: f32) {
        self.progress.set(fraction);
    }
}
